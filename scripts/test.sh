#!/usr/bin/env bash
# The whole test suite. Installs what the tests need on a fresh machine
# (a Python venv with the OpenTelemetry SDK), then runs every check.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: a real Prometheus server (and promtool) for the scrape
# tests, headless Chromium for the web page tests.
need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v curl >/dev/null || need_apt+=(curl)
# Node.js and npm for the JavaScript SDK's exporters.
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
command -v openssl >/dev/null || need_apt+=(openssl)
# valgrind (callgrind) for the instruction-count benchmark.
command -v valgrind >/dev/null || need_apt+=(valgrind)
# A C compiler and make build the bundled jemalloc.
command -v cc >/dev/null || need_apt+=(gcc)
command -v make >/dev/null || need_apt+=(make)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# Python: the real OpenTelemetry SDK and its OTLP exporters, and rotel (a
# Rust OpenTelemetry collector, from its Python package) as the collector
# in front of tpsgap and as the benchmarks' peer.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc, opentelemetry.exporter.otlp.proto.http, yaml, rotel' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
fi
export TPSGAP_TEST_PYTHON="$PWD/.venv/bin/python"

# JavaScript: the real OpenTelemetry SDK and its OTLP/HTTP exporters, as
# locked in tests/node/package-lock.json (installed again when it changes).
if ! cmp -s tests/node/package-lock.json tests/node/node_modules/.installed-lock.json; then
  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
  cp tests/node/package-lock.json tests/node/node_modules/.installed-lock.json
fi

# The committed fixtures are exactly what the real SDK writes.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$TPSGAP_TEST_PYTHON" tests/fixtures/gen_fixtures.py "$tmp"
for f in tests/fixtures/*.pb tests/fixtures/*.jsonl; do
  cmp "$f" "$tmp/$(basename "$f")" || { echo "fixture $f differs from the SDK's output" >&2; exit 1; }
done

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked
# The soak script, short: sustained load with RSS staying flat.
cargo build --locked --bin tpsgap
BIN=target/debug/tpsgap scripts/soak.sh 20
# The API benchmark, small, to prove it still works (figures in BENCHMARKS.md).
BIN=target/debug/tpsgap SPANS=20480 scripts/bench_api.sh
# The idle-runs benchmark, small, likewise.
BIN=target/debug/tpsgap IDLE_S=1 RUNS_LIST=100 scripts/bench_idle.sh
# The instruction-count benchmark (callgrind), small, likewise.
BIN=target/debug/tpsgap SPANS=5120 scripts/bench_instructions.sh
# The peer benchmark (rotel, from its Python package), small, likewise.
BIN=target/debug/tpsgap PEER_VENV=.venv SPANS=20480 ROUNDS=1 PROTOCOLS=grpc SETTLE_MS=200 scripts/bench_peer.sh

# --all-targets also runs each benchmark once, small, to prove it still
# works (the figures are in BENCHMARKS.md).
cargo test --all-targets --locked
