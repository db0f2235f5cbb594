#!/usr/bin/env python3
"""Send the worked example (examples/small.jsonl: requests A-D, cap 1, one
stall) to tpsgap with the real OpenTelemetry Python SDK and its OTLP exporters.

    send_example.py --protocol grpc --endpoint http://127.0.0.1:4317 --run-id r1
    send_example.py --protocol http --endpoint http://127.0.0.1:4318/v1/traces --run-id r2
    send_example.py --protocol http --compression deflate ...

The exporters compress with gzip unless told otherwise, as the Collector's
do by default; deflate and none are the SDK's other choices. Spans
carry the same attributes, times and status as the example file, so the
report must equal examples/small.expected.json (hand-computed).
"""
import argparse
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

T0 = 1793491200 * 10**9  # 2026-11-01T00:00:00Z
S = 10**9

# request: (queued, admitted, first token, last token, released, extra attributes, error)
REQUESTS = {
    "A": (0, 0, 1, 3, 4, {"output_tokens": 30, "cap": 1}, False),
    "B": (1, 4, None, None, 6, {}, False),
    "C": (2, None, None, None, 3, {}, True),
    "D": (6, 8, None, None, 10, {"retry_count": 2}, False),
}
NAMES = ["queued_at", "admitted_at", "first_token_at", "last_token_at", "released_at"]


def compression(kind, args):
    """The exporter's `Compression` member named by --compression."""
    return {"gzip": kind.Gzip, "deflate": kind.Deflate, "none": kind.NoCompression}[args.compression]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocol", choices=["grpc", "http"], required=True)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--compression", choices=["gzip", "deflate", "none"], default="gzip")
    args = ap.parse_args()

    if args.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression

        # https endpoints use TLS, with certificates from OTEL_EXPORTER_OTLP_CERTIFICATE,
        # OTEL_EXPORTER_OTLP_CLIENT_KEY and OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE.
        insecure = {"insecure": True} if args.endpoint.startswith("http://") else {}
        exporter = OTLPSpanExporter(endpoint=args.endpoint, compression=compression(Compression, args), **insecure)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.exporter.otlp.proto.http import Compression

        exporter = OTLPSpanExporter(endpoint=args.endpoint, compression=compression(Compression, args))

    provider = TracerProvider(resource=Resource.create({"service.name": "tpsgap-e2e"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("tpsgap.e2e")
    for rid, (*times, extra, error) in REQUESTS.items():
        known = [t for t in times if t is not None]
        attrs = {"run_id": args.run_id, "request_id": rid}
        for name, t in zip(NAMES, times):
            if t is not None:
                attrs[name] = T0 + t * S
        attrs.update(extra)
        span = tracer.start_span("llm.request", start_time=T0 + min(known) * S, attributes=attrs)
        if error:
            span.set_status(Status(StatusCode.ERROR, "abandoned"))
        span.end(end_time=T0 + max(known) * S)
    ok = provider.force_flush(timeout_millis=10_000)
    provider.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
