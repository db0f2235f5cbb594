#!/usr/bin/env bash
# Where the end-to-end cost goes, stage by stage, in the real server: the
# `tpsgap bench` load (gRPC, 16 in flight) against `tpsgap serve` stopping
# each request after receiving it, after decoding it, after extracting its
# observations (`--bench-stop-after`, for benchmarks only), and whole. The
# four alternate round by round, each on a fresh server, so one noisy
# minute touches all of them. Prints each one's median server CPU-seconds
# per million spans, what each stage adds, and the in-process decode-only
# yardstick of the limit ratio.
#
#   scripts/bench_stages.sh                  # 1M spans, 5 rounds
#   SPANS=2000000 ROUNDS=7 scripts/bench_stages.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/tpsgap}
[ -x "$BIN" ] || cargo build --release --locked --bin tpsgap
SPANS=${SPANS:-1000000}; ROUNDS=${ROUNDS:-5}
rows=$(mktemp); trap 'rm -f "$rows"' EXIT
for _ in $(seq "$ROUNDS"); do
  for stage in receive decode extract whole; do
    extra=()
    [ "$stage" = whole ] || extra=(-- --bench-stop-after "$stage")
    "$BIN" bench --spans "$SPANS" --json "${extra[@]}" 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)
if r["rejected_spans"] != 0:
    sys.exit(sys.argv[1] + ": spans rejected")
print(sys.argv[1], r["cpu_s_per_million_spans"], r["decode_only_cpu_s_per_million_spans"])
' "$stage" >>"$rows"
  done
done
python3 - "$rows" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = lambda stage, col: statistics.median(float(r[col]) for r in rows if r[0] == stage)
print("| server stops after | CPU-s per 1M spans | the stage adds |")
print("|---|---|---|")
before = 0.0
for stage, label in [("receive", "receiving (HTTP/2, the kernel, the body)"),
                     ("decode", "decoding (every span, attribute and event read in place)"),
                     ("extract", "extracting the observations"),
                     ("whole", "joining, windows, export (the whole server)")]:
    c = med(stage, 1)
    print(f"| {label} | {c:.2f} | {c - before:+.2f} |")
    before = c
print()
print(f"decode-only in process (the limit's yardstick): {statistics.median(float(r[2]) for r in rows):.2f}")
PY
