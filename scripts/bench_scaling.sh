#!/usr/bin/env bash
# How the cost per span scales with the number of live runs and with the
# number of requests per run, measured by `tpsgap bench` (gRPC, 16 in flight,
# 512-span requests, two spans per request). Runs go idle 2 s after the load
# and the measurement waits for them, so it includes their finalization
# (the column "of which after the load" is that wait: the runs' ends).
#
# Rounds are interleaved (every row once per round, on a fresh server), so a
# noisy minute on a shared machine touches every row alike; prints each
# row's median over the rounds and, last, the ratio of the dearest row to
# the cheapest: over all rows, and over each of the two ranges of the
# target (1 to 10,000 live runs; 10 to 100,000 requests per run).
#
#   scripts/bench_scaling.sh            # 3 rounds
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/tpsgap}
[ -x "$BIN" ] || cargo build --release --locked --bin tpsgap
ROUNDS=${ROUNDS:-3}
ROWS=("1 500000" "10 100000" "100 10000" "1000 1000" "10000 100" "10000 10")
out=$(mktemp); trap 'rm -f "$out"' EXIT
for ((round = 1; round <= ROUNDS; round++)); do
  for row in "${ROWS[@]}"; do
    read -r runs per <<<"$row"
    spans=$((runs * per * 2))
    "$BIN" bench --runs "$runs" --spans "$spans" --repeat 1 --settle-ms 4000 --json \
      -- --run-idle-timeout 2s 2>/tmp/scaling.err | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(json.dumps({"row": sys.argv[1], "spans": int(sys.argv[2]), "spans_per_s": r["spans_per_s"],
                  "cpu": r["cpu_s_per_million_spans"],
                  "settle": r["settle_cpu_s_per_million_spans"], "rss": r["peak_rss_mib"]}))
' "$row" "$spans" >>"$out"
  done
done
python3 - "$out" "${ROWS[@]}" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| live runs | requests per run | spans | spans/s | server CPU-s per 1M spans | of which after the load | peak RSS |")
print("|---|---|---|---|---|---|---|")
cpus = []
for row in sys.argv[2:]:
    rs = [r for r in rows if r["row"] == row]
    runs, per = map(int, row.split())
    cpu = statistics.median(r["cpu"] for r in rs)
    cpus.append(cpu)
    print("| {:,} | {:,} | {:,} | {:,.0f} | {:.2f} | {:.2f} | {:.0f} MiB |".format(
        runs, per, rs[0]["spans"], statistics.median(r["spans_per_s"] for r in rs), cpu,
        statistics.median(r["settle"] for r in rs), max(r["rss"] for r in rs)))
print()
print("dearest / cheapest row: {:.2f}x".format(max(cpus) / min(cpus)))
# The target's two ranges: 1 to 10,000 live runs (the rows of runs of 100
# requests or more), and 10 to 100,000 requests per run.
shape = [tuple(map(int, row.split())) for row in sys.argv[2:]]
for name, keep in [("1 to 10,000 live runs", lambda r, p: p >= 100),
                   ("10 to 100,000 requests per run", lambda r, p: 10 <= p <= 100_000)]:
    xs = [c for (r, p), c in zip(shape, cpus) if keep(r, p)]
    print("{}: {:.2f}x".format(name, max(xs) / min(xs)))
PY
