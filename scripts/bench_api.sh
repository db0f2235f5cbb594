#!/usr/bin/env bash
# The server's CPU per API answer while runs are live: `tpsgap serve` is
# loaded by `tpsgap bench` (100 runs of 5,000 requests, 1M spans, all still
# live), then each path is asked for five times and the server's CPU
# (utime + stime from /proc) is read around them.
#
#   scripts/bench_api.sh
#   PORT=29464 scripts/bench_api.sh     # a fixed API port (default: one the server chooses)
#   SPANS=20480 scripts/bench_api.sh    # quick (the test script's check that it works)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/tpsgap}
[ -x "$BIN" ] || cargo build --release --locked --bin tpsgap
PORT=${PORT:-0}
SPANS=${SPANS:-1000000}
log=$(mktemp); out=$(mktemp)
"$BIN" serve --grpc-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --api-listen "127.0.0.1:$PORT" 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log" "$out"' EXIT
. scripts/serving.sh
serving "$log" || exit 1
api="http://$api"
"$BIN" bench --server-pid "$pid" --grpc-endpoint "http://$grpc" --spans "$SPANS" --repeat 1 >/dev/null
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
echo "| path | server CPU per answer | wall per answer | bytes |"
echo "|---|---|---|---|"
for path in /api/v1/runs / /api/v1/runs/run-000 /runs/run-000; do
  c0=$(cpu); t0=$(date +%s%N)
  for _ in 1 2 3 4 5; do curl -fs -o "$out" "$api$path"; done
  c1=$(cpu); t1=$(date +%s%N)
  python3 -c 'import sys; c0, c1, tick, t0, t1, n = map(float, sys.argv[2:]); print(f"| `{sys.argv[1]}` | {(c1 - c0) / tick / 5 * 1000:.0f} ms | {(t1 - t0) / 5e6:.0f} ms | {int(n):,} |")' \
    "$path" "$c0" "$c1" "$tick" "$t0" "$t1" "$(wc -c <"$out")"
done
