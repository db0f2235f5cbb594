#!/usr/bin/env bash
# tpsgap against the reference peer, rotel (a Rust OpenTelemetry collector),
# under the same load from `tpsgap bench`: pre-serialized 512-span OTLP
# requests, 16 in flight. rotel receives and drops the spans (its blackhole
# exporter); tpsgap receives, joins, sweeps its windows and exports. Each
# round starts a fresh server of each, one after the other, so both are
# measured in the same minutes. Prints the medians of server CPU-seconds per
# million spans (from /proc, the load and SETTLE_MS after it), spans/s and
# peak RSS, and rotel's CPU over tpsgap's.
#
# rotel comes from its Python package, whose wheel carries the agent binary;
# it is installed into PEER_VENV (pinned: ROTEL_VERSION).
#
#   scripts/bench_peer.sh                    # 1M spans, 3 rounds, gRPC
#   SPANS=2000000 ROUNDS=5 scripts/bench_peer.sh
#   PROTOCOLS="grpc grpc-gzip http" scripts/bench_peer.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/tpsgap}
[ -x "$BIN" ] || cargo build --release --locked --bin tpsgap
SPANS=${SPANS:-1000000}; ROUNDS=${ROUNDS:-3}; SETTLE_MS=${SETTLE_MS:-2000}
PROTOCOLS=${PROTOCOLS:-grpc grpc-gzip}
ROTEL_VERSION=${ROTEL_VERSION:-0.0.1a15}
PEER_VENV=${PEER_VENV:-target/peer-venv}

if ! "$PEER_VENV/bin/python" -c "import rotel" 2>/dev/null; then
  python3 -m venv "$PEER_VENV"
  "$PEER_VENV/bin/pip" install --quiet --disable-pip-version-check "rotel==$ROTEL_VERSION"
fi
ROTEL=$("$PEER_VENV/bin/python" -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')
[ -x "$ROTEL" ] || chmod +x "$ROTEL"

work=$(mktemp -d)
peer_pid=""
cleanup() {
  if [ -n "$peer_pid" ]; then kill "$peer_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# One measurement of the peer: start it, load it, stop it. Prints the
# bench's JSON.
peer_once() {
  local args=$1 grpc http
  grpc=$(free_port); http=$(free_port)
  "$ROTEL" start --exporter blackhole \
    --otlp-grpc-endpoint "127.0.0.1:$grpc" --otlp-http-endpoint "127.0.0.1:$http" \
    --pid-file "$work/rotel.pid" --log-file "$work/rotel.log" >"$work/rotel.out" 2>&1 &
  peer_pid=$!
  for _ in $(seq 100); do
    (echo >"/dev/tcp/127.0.0.1/$grpc") 2>/dev/null && (echo >"/dev/tcp/127.0.0.1/$http") 2>/dev/null && break
    sleep 0.1
  done
  # shellcheck disable=SC2086
  "$BIN" bench --spans "$SPANS" --settle-ms "$SETTLE_MS" --json $args \
    --server-pid "$peer_pid" --grpc-endpoint "http://127.0.0.1:$grpc" \
    --http-endpoint "http://127.0.0.1:$http" 2>"$work/bench.err" ||
    { cat "$work/bench.err" "$work/rotel.out" >&2; return 1; }
  kill "$peer_pid"; wait "$peer_pid" 2>/dev/null || true
  peer_pid=""
}

# One bench result as a row; every span must have been taken.
cat >"$work/row.py" <<'PY'
import json, sys
r = json.load(sys.stdin)
if r["rejected_spans"] != 0:
    sys.exit(f"{sys.argv[1]} rejected {r['rejected_spans']} spans")
print(sys.argv[1], r["cpu_s_per_million_spans"], r["spans_per_s"], r["peak_rss_mib"])
PY

echo "| load | tpsgap CPU-s per 1M spans | rotel CPU-s per 1M spans | rotel ÷ tpsgap | tpsgap spans/s | rotel spans/s | tpsgap peak RSS | rotel peak RSS |"
echo "|---|---|---|---|---|---|---|---|"
for p in $PROTOCOLS; do
  case $p in
    grpc) args="--protocol grpc" ;;
    grpc-gzip) args="--protocol grpc --gzip" ;;
    http) args="--protocol http" ;;
    http-gzip) args="--protocol http --gzip" ;;
    *) echo "unknown protocol $p" >&2; exit 2 ;;
  esac
  : >"$work/rows"
  for _ in $(seq "$ROUNDS"); do
    # shellcheck disable=SC2086
    "$BIN" bench --spans "$SPANS" --settle-ms "$SETTLE_MS" --json $args 2>"$work/bench.err" |
      python3 "$work/row.py" tpsgap >>"$work/rows" ||
      { cat "$work/bench.err" >&2; exit 1; }
    peer_once "$args" >"$work/peer.json"
    python3 "$work/row.py" rotel <"$work/peer.json" >>"$work/rows"
  done
  python3 - "$p" "$work/rows" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[2])]
def med(who, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == who)
t, r = med("tpsgap", 1), med("rotel", 1)
# A small load can take less than one clock tick of CPU.
ratio = f"{r / t:.1f}×" if t > 0 else "n/a"
print(f"| {sys.argv[1]} | {t:.2f} | {r:.2f} | {ratio} | {med('tpsgap', 2):,.0f} | {med('rotel', 2):,.0f} "
      f"| {med('tpsgap', 3):.0f} MiB | {med('rotel', 3):.0f} MiB |")
PY
done
