#!/usr/bin/env bash
# The server's CPU while live runs sit idle: `tpsgap serve` (runs go idle
# only after an hour) is fed runs of 10 requests by `tpsgap bench`, then
# its CPU is read over IDLE_S seconds without load. What it spends then is
# the tick (every 200 ms), which looks at every live run for work once a
# second (or when one may have become idle). CPU is read per
# thread from /proc/PID/task/*/schedstat (nanoseconds), over the threads
# present at both readings.
#
#   scripts/bench_idle.sh                         # 100 and 10,000 live runs, 10 s each
#   IDLE_S=1 RUNS_LIST=100 scripts/bench_idle.sh  # quick (the test script's check that it works)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/tpsgap}
[ -x "$BIN" ] || cargo build --release --locked --bin tpsgap
IDLE_S=${IDLE_S:-10}
RUNS_LIST=${RUNS_LIST:-"100 10000"}
. scripts/serving.sh
# Per-thread CPU nanoseconds: "tid ns" lines.
threads() { for t in /proc/"$1"/task/*; do echo "${t##*/} $(cut -d' ' -f1 "$t/schedstat")"; done 2>/dev/null; }
echo "| live runs | server CPU per second idle |"
echo "|---|---|"
for runs in $RUNS_LIST; do
  log=$(mktemp)
  "$BIN" serve --grpc-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 \
    --run-idle-timeout 1h 2>"$log" &
  pid=$!
  trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log" "$log.bench"' EXIT
  serving "$log" || exit 1
  "$BIN" bench --server-pid "$pid" --grpc-endpoint "http://$grpc" --runs "$runs" \
    --spans $((runs * 20)) --repeat 1 >/dev/null 2>"$log.bench" || { cat "$log.bench" >&2; exit 1; }
  sleep 1
  before=$(threads "$pid")
  sleep "$IDLE_S"
  after=$(threads "$pid")
  live=$(curl -fs "http://$api/api/v1/runs" | python3 -c 'import json, sys; print(sum(r["state"] == "live" for r in json.load(sys.stdin)["runs"]))')
  [ "$live" -eq "$runs" ] || { echo "expected $runs live runs, the API lists $live" >&2; exit 1; }
  python3 - "$runs" "$IDLE_S" "$before" "$after" <<'PY'
import sys
runs, secs, before, after = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
parse = lambda text: dict(map(int, l.split()) for l in text.splitlines() if l.strip())
b, a = parse(before), parse(after)
ns = sum(a[t] - b[t] for t in a if t in b)
print(f"| {int(runs):,} | {ns / secs / 1e6:.2f} ms |")
PY
  kill $pid; wait $pid 2>/dev/null || true
  rm -f "$log" "$log.bench"
  trap - EXIT
done
