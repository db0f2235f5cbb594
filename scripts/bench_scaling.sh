#!/usr/bin/env bash
# How the cost per span scales with the number of live runs and with the
# number of requests per run, measured by `tpsgap bench` (gRPC, 16 in flight,
# 512-span requests, two spans per request). Runs go idle 2 s after the load
# and the measurement waits for them, so it includes their finalization.
# Prints the median (of ROUNDS fresh servers) per row.
#
#   scripts/bench_scaling.sh            # 3 rounds
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/tpsgap}
[ -x "$BIN" ] || cargo build --release --locked --bin tpsgap
ROUNDS=${ROUNDS:-3}
echo "| live runs | requests per run | spans | spans/s | server CPU-s per 1M spans | peak RSS |"
echo "|---|---|---|---|---|---|"
for row in "1 500000" "10 100000" "100 10000" "1000 1000" "10000 100" "10000 10"; do
  read -r runs per <<<"$row"
  spans=$((runs * per * 2))
  "$BIN" bench --runs "$runs" --spans "$spans" --repeat "$ROUNDS" --settle-ms 4000 --json \
    -- --run-idle-timeout 2s 2>/tmp/scaling.err | python3 -c '
import json, sys
r = json.load(sys.stdin)
runs, per, spans = sys.argv[1:4]
row = (int(runs), int(per), int(spans), r["spans_per_s"], r["cpu_s_per_million_spans"], r["peak_rss_mib"])
print("| {:,} | {:,} | {:,} | {:,.0f} | {:.2f} | {:.0f} MiB |".format(*row))
' "$runs" "$per" "$spans"
done
