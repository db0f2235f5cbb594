#!/usr/bin/env bash
# Fuzzes tpsgap with hostile input: runs each cargo-fuzz target of fuzz/
# (protobuf, json, timestamp, gzip, deflate; the harnesses are in src/fuzzing.rs) for
# SECONDS (default 60), one after the other, on one core, starting from the
# seed corpus in fuzz/corpus/<target>/seed-*.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Installs cargo-fuzz if it is missing. Needs no nightly toolchain: the
# nightly-only flags that cargo-fuzz passes (sanitizer, coverage) are allowed
# on stable with RUSTC_BOOTSTRAP=1. Builds are release with debug assertions
# and overflow checks, and AddressSanitizer (FUZZ_SANITIZER=none to go
# without it). Inputs libFuzzer finds are added to fuzz/corpus/<target>/
# (ignored by git; only seed-* files are tracked). A crash stops that target,
# is saved in fuzz/artifacts/<target>/ and makes the script exit non-zero
# after the remaining targets ran. Then:
#
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz tmin <target> artifacts/<target>/crash-...
#
# and copy the minimized input to tests/fuzz/<target>-<description>, with an
# entry in tests/fuzz_corpus.rs, which replays it in `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(protobuf json timestamp gzip deflate)
sanitizer=${FUZZ_SANITIZER:-address}

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

cd fuzz
cargo fuzz build -O -a --sanitizer "$sanitizer"
failed=()
for t in "${targets[@]}"; do
  echo "=== fuzzing $t for ${seconds}s"
  mkdir -p "corpus/$t"
  # --jobs 1: one process on one core. -print_final_stats: executions and
  # exec/s at the end.
  if ! cargo fuzz run -O -a --sanitizer "$sanitizer" --jobs 1 "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1; then
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashes in: ${failed[*]} (see fuzz/artifacts/)" >&2
  exit 1
fi
echo "no crash in ${targets[*]} (${seconds}s each)"
