#!/usr/bin/env bash
# End-to-end ingest cost of a real `tpsgap serve`, measured by `tpsgap bench`:
# pre-serialized 512-span OTLP requests (100 runs, every request new, two
# spans per request, about 380 bytes per span), 16 requests in flight, over
# gRPC and HTTP, plain, gzip and zstd, and gRPC with the write-ahead log. Prints
# the median (of ROUNDS fresh servers) of spans/s and server CPU-seconds per
# million spans, the peak RSS, and the limit: the CPU-seconds per million
# spans to only decode the same bodies in process with the fastest decoder
# (decompressed as the receivers do, then the in-place reader), and the
# ratio.
#
#   scripts/bench_ingest.sh                 # 1M spans, 3 rounds
#   SPANS=2000000 ROUNDS=5 scripts/bench_ingest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/tpsgap}
[ -x "$BIN" ] || cargo build --release --locked --bin tpsgap
SPANS=${SPANS:-1000000}; ROUNDS=${ROUNDS:-3}
wal=$(mktemp -d); trap 'rm -rf "$wal"' EXIT
echo "| load | spans/s | server CPU-s per 1M spans | peak RSS | decode only, CPU-s per 1M | ratio |"
echo "|---|---|---|---|---|---|"
while IFS='|' read -r label args; do
  # shellcheck disable=SC2086
  "$BIN" bench --spans "$SPANS" --repeat "$ROUNDS" --json $args 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)
row = (sys.argv[1], r["spans_per_s"], r["cpu_s_per_million_spans"], r["peak_rss_mib"],
       r["decode_only_cpu_s_per_million_spans"], r["limit_ratio"])
print("| {} | {:,.0f} | {:.2f} | {:.0f} MiB | {:.2f} | {:.2f} |".format(*row))
' "$label"
done <<ROWS
gRPC|--protocol grpc
gRPC, gzip|--protocol grpc --gzip
HTTP|--protocol http
HTTP, gzip|--protocol http --gzip
gRPC, zstd|--protocol grpc --zstd
HTTP, zstd|--protocol http --zstd
gRPC, --wal-dir|--protocol grpc -- --wal-dir $wal/w
ROWS
