#!/usr/bin/env bash
# The limit ratio counted in instructions, which do not move with the host's
# load as CPU time does: valgrind's callgrind counts what `tpsgap serve`
# executes over the `tpsgap bench` load (gRPC, 16 in flight), the server
# stopping each request after receiving it, after decoding it, after
# extracting it (`--bench-stop-after`, as in bench_stages.sh), and whole;
# and what the bench's in-process decode-only pass (the limit's yardstick,
# five passes over the same bodies) executes. User-space instructions only:
# the kernel's share of receiving is not counted. Prints instructions per
# span for each stage and the ratio of the whole server to the yardstick.
#
#   scripts/bench_instructions.sh                 # 1M spans
#   SPANS=102400 scripts/bench_instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/tpsgap}
[ -x "$BIN" ] || cargo build --release --locked --bin tpsgap
SPANS=${SPANS:-1000000}
for tool in valgrind callgrind_control curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (Debian: valgrind, curl, python3)" >&2; exit 1; }
done
dir=$(mktemp -d)
server=""
cleanup() {
  [ -z "$server" ] || kill "$server" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# The instructions a callgrind output file counted.
summary() { sed -n 's/^summary: //p' "$1"; }

read -r grpc http api < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')
declare -A count
for stage in receive decode extract whole; do
  extra=()
  [ "$stage" = whole ] || extra=(--bench-stop-after "$stage")
  valgrind --tool=callgrind --callgrind-out-file="$dir/$stage.out" "$BIN" serve \
    --grpc-listen "127.0.0.1:$grpc" --http-listen "127.0.0.1:$http" \
    --api-listen "127.0.0.1:$api" "${extra[@]}" >"$dir/$stage.log" 2>&1 &
  server=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$api/healthz" >/dev/null 2>&1 && break
    kill -0 "$server" 2>/dev/null || { cat "$dir/$stage.log" >&2; exit 1; }
    sleep 0.2
  done
  # Count the load only: not start-up, not shutdown's final reports.
  callgrind_control -z "$server" >/dev/null 2>&1
  client=("$BIN")
  if [ "$stage" = receive ]; then
    # The bench itself, counting only its decode-only pass.
    client=(valgrind --tool=callgrind --collect-atstart=no
      --toggle-collect='tpsgap::cli::bench::decode_only'
      --callgrind-out-file="$dir/limit.out" "$BIN")
  fi
  "${client[@]}" bench --spans "$SPANS" --server-pid "$server" \
    --grpc-endpoint "http://127.0.0.1:$grpc" --json >"$dir/$stage.json" 2>"$dir/$stage.bench.log" || {
    cat "$dir/$stage.bench.log" "$dir/$stage.log" >&2
    exit 1
  }
  callgrind_control -d "$server" >/dev/null 2>&1
  kill -INT "$server"
  wait "$server" || true
  server=""
  count[$stage]=$(summary "$dir/$stage.out.1")
done
spans=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["spans"])' "$dir/whole.json")
python3 - "$spans" "${count[receive]}" "${count[decode]}" "${count[extract]}" "${count[whole]}" "$(summary "$dir/limit.out")" <<'EOF'
import sys
spans, receive, decode, extract, whole, limit = map(int, sys.argv[1:])
per = lambda n: n / spans
print("| server stops after | instructions per span | the stage adds |")
print("|---|---|---|")
before = 0.0
for name, n in [("receiving (HTTP/2, the body)", receive), ("decoding (every span, attribute and event read in place)", decode),
                ("extracting the observations", extract), ("joining, windows, export (the whole server)", whole)]:
    print(f"| {name} | {per(n):,.0f} | +{per(n) - before:,.0f} |")
    before = per(n)
yardstick = per(limit) / 5
print()
print(f"decode-only in process (the limit's yardstick, 5 passes): {yardstick:,.0f} instructions per span")
print(f"the whole server against it: {per(whole) / yardstick:.2f}x")
EOF
