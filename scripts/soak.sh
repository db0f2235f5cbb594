#!/usr/bin/env bash
# Soak: sustained load on a real `tpsgap serve` for SECONDS (default 300),
# one simulated run after another (each finalized 2 s after its last span
# and released), sampling the server's RSS. Fails when RSS keeps growing:
# the last sample over 1.3x the largest sample of the first half.
#
#   scripts/soak.sh 600                          # 10 minutes, release build
#   BIN=target/debug/tpsgap scripts/soak.sh 20   # the short version CI runs
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-300}
BIN=${BIN:-target/release/tpsgap}
[ -x "$BIN" ] || cargo build --release --locked --bin tpsgap
# Ports of the server's choosing, read from the line it logs once bound.
log=$(mktemp)
"$BIN" serve --grpc-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 \
  --run-idle-timeout 2s --lateness 1h --keep-final-runs 20 --default-cap 8 2>"$log" &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$log"' EXIT
. scripts/serving.sh
serving "$log" || exit 1
rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$PID/status"; }
start=$(date +%s); i=0; spans=0; samples=()
printf '%8s %6s %10s %8s\n' seconds runs spans rss_mib
while [ $(( $(date +%s) - start )) -lt "$SECS" ]; do
  out=$("$BIN" simulate --endpoint "http://$grpc" --run-id "soak-$i" --duration 60s --rate 50 \
        --start $((1800000000 + i * 100)) --seed "$i" 2>&1 | tail -1)
  spans=$((spans + $(echo "$out" | awk '{print $2}')))
  i=$((i + 1))
  r=$(rss); samples+=("$r")
  printf '%8s %6s %10s %8s\n' "$(( $(date +%s) - start ))" "$i" "$spans" "$r"
done
sleep 3
r=$(rss); samples+=("$r")
n=${#samples[@]}; half=$(( (n + 1) / 2 )); max_first=0
for ((k = 0; k < half; k++)); do [ "${samples[$k]}" -gt "$max_first" ] && max_first=${samples[$k]}; done
live=$(curl -sf "http://$api/metrics" | awk '/^tpsgap_live_runs / {print $2}')
echo "soak: ${SECS}s, $i runs, $spans spans, RSS first half max ${max_first} MiB, end ${r} MiB, live runs at the end ${live}"
if [ "$r" -gt $(( max_first * 13 / 10 + 1 )) ]; then
  echo "soak: RSS grew" >&2
  exit 1
fi
echo "soak: RSS flat"
