#!/usr/bin/env bash
# Ingest throughput of a real `tpsgap serve` fed by `tpsgap simulate` over
# OTLP/gRPC (512-span batches, one request in flight; 1,000 requests per second
# of event time with a cap of 2,000, so nothing queues), with and without the
# write-ahead log. Prints spans/s and the server's CPU seconds per million
# spans (utime + stime from /proc), median of ROUNDS runs.
#
#   scripts/bench_ingest.sh            # 200k spans, 3 rounds
#   SPANS=1000000 ROUNDS=5 scripts/bench_ingest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/tpsgap}
[ -x "$BIN" ] || cargo build --release --locked --bin tpsgap
SPANS=${SPANS:-200000}; ROUNDS=${ROUNDS:-3}
RATE=1000; DURATION=$((SPANS / RATE))
TICK=$(getconf CLK_TCK)
cpu() { awk -v t="$TICK" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
run() { # $1: label, $2...: extra serve flags
  local label=$1; shift
  local rates=() cpus=()
  for r in $(seq "$ROUNDS"); do
    local dir; dir=$(mktemp -d)
    local flags=("$@"); flags=("${flags[@]//@DIR@/$dir}")
    "$BIN" serve --grpc-listen 127.0.0.1:25317 --http-listen 127.0.0.1:25318 --api-listen 127.0.0.1:25464 \
      --lateness 1h --run-idle-timeout 1h "${flags[@]}" 2>/dev/null &
    local pid=$!
    for _ in $(seq 50); do curl -sf http://127.0.0.1:25464/healthz >/dev/null && break; sleep 0.1; done
    local c0; c0=$(cpu $pid)
    local t0; t0=$(date +%s.%N)
    "$BIN" simulate --endpoint http://127.0.0.1:25317 --run-id "bench-$r" --rate $RATE --cap 2000 --duration ${DURATION}s \
      --start 1800000000 --seed "$r" --batch 512 >/dev/null 2>&1
    local t1; t1=$(date +%s.%N)
    local c1; c1=$(cpu $pid)
    kill -9 $pid; wait $pid 2>/dev/null || true
    rm -rf "$dir"
    rates+=("$(echo "$SPANS $t0 $t1" | awk '{printf "%.0f", $1 / ($3 - $2)}')")
    cpus+=("$(echo "$c0 $c1 $SPANS" | awk '{printf "%.3f", ($2 - $1) / $3 * 1e6}')")
  done
  printf '%-22s %12s spans/s %8s CPU-s per million spans\n' "$label" \
    "$(printf '%s\n' "${rates[@]}" | median)" "$(printf '%s\n' "${cpus[@]}" | median)"
}
echo "$SPANS spans per round, median of $ROUNDS rounds"
run "no write-ahead log"
run "with --wal-dir" --wal-dir @DIR@
