# tpsgap: build in the Rust image, run in a slim Debian image as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin tpsgap

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home tpsgap
COPY --from=build /src/target/release/tpsgap /usr/local/bin/tpsgap
USER 10001
# OTLP/gRPC, OTLP/HTTP, API (web page, JSON API, /metrics)
EXPOSE 4317 4318 9464
ENTRYPOINT ["tpsgap"]
CMD ["serve", "--grpc-listen=0.0.0.0:4317", "--http-listen=0.0.0.0:4318", "--api-listen=0.0.0.0:9464"]
