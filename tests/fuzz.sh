#!/usr/bin/env bash
# tests/fuzz.sh - builds every cargo-fuzz target of fuzz/ and runs each for a
# bounded time, starting from the corpus kept in the repo (fuzz/seeds/<target>)
# plus what earlier local runs found (fuzz/corpus/<target>, not committed).
#
# Prints per target: executions, exec/s, coverage (libFuzzer's final `cov:` and
# `ft:`), and how many new corpus entries the run found. Fails if any target
# crashes; the crashing input is copied to fuzz/regressions/<target>/ (which
# `cargo test -p ipnix-tests --test fuzz_regressions` replays) and printed.
#
# Tool chain: cargo-fuzz on the stable toolchain with `--sanitizer none` (the
# code has no unsafe, so no ASan; stable rustc takes every flag cargo-fuzz
# passes then, no nightly and no RUSTC_BOOTSTRAP needed). tests/setup-fuzz.sh
# installs cargo-fuzz.
#
# Environment:
#   FUZZ_SECONDS  seconds per target (default 15, what CI runs)
#   FUZZ_JOBS     targets run at once (default: the number of CPUs, at most 4)
#   FUZZ_TARGETS  space-separated subset of targets (default: all)
#   FUZZ_MAX_LEN  largest input libFuzzer tries (default 65536)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
FUZZ_SECONDS=${FUZZ_SECONDS:-15}
FUZZ_MAX_LEN=${FUZZ_MAX_LEN:-65536}
CPUS=$(nproc 2>/dev/null || echo 2)
FUZZ_JOBS=${FUZZ_JOBS:-$((CPUS < 4 ? CPUS : 4))}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BUILD_FLAGS=(--sanitizer none --release)

command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo-fuzz missing (run tests/setup-fuzz.sh)" >&2; exit 1; }

started=$(date +%s)
echo "== fuzz: build (cargo fuzz build ${BUILD_FLAGS[*]})" >&2
(cd fuzz && cargo fuzz build "${BUILD_FLAGS[@]}")
built=$(date +%s)
BIN_DIR=$ROOT/fuzz/target/$TRIPLE/release

targets=${FUZZ_TARGETS:-$(cd fuzz && cargo fuzz list)}
LOGS=$ROOT/fuzz/target/fuzz-logs
rm -rf "$LOGS"
mkdir -p "$LOGS"

# One target: fresh work dir for crashes, corpus = fuzz/corpus/<t> (grows,
# not committed) seeded from fuzz/seeds/<t> (read only).
run_target() {
  local t=$1 log=$LOGS/$1.log art=$LOGS/$1.artifacts/
  mkdir -p "fuzz/corpus/$t" "$art"
  local before
  before=$(find "fuzz/corpus/$t" -type f | wc -l)
  local seeds=()
  [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
  local status=0
  "$BIN_DIR/$t" "fuzz/corpus/$t" "${seeds[@]}" \
    -max_total_time="$FUZZ_SECONDS" -max_len="$FUZZ_MAX_LEN" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$art" >"$log" 2>&1 || status=$?
  local after
  after=$(find "fuzz/corpus/$t" -type f | wc -l)
  echo "$status $before $after" >"$LOGS/$t.status"
}

echo "== fuzz: run ${FUZZ_SECONDS}s per target, $FUZZ_JOBS at a time" >&2
running=0
for t in $targets; do
  run_target "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$FUZZ_JOBS" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true
finished=$(date +%s)

failed=()
printf '\n%-18s %12s %9s %8s %8s %8s  %s\n' target execs exec/s cov ft new result
for t in $targets; do
  log=$LOGS/$t.log
  status=missing before=0 after=0
  [ -f "$LOGS/$t.status" ] && read -r status before after <"$LOGS/$t.status"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  # The last status line libFuzzer printed: `#N  DONE cov: C ft: F corp: ...`.
  cov=$( (grep -Eo 'cov: [0-9]+' "$log" || true) | tail -1 | cut -d' ' -f2)
  ft=$( (grep -Eo 'ft: [0-9]+' "$log" || true) | tail -1 | cut -d' ' -f2)
  result=ok
  crash=$(find "$LOGS/$t.artifacts" -type f 2>/dev/null | head -1)
  if [ "$status" != 0 ] || [ -n "$crash" ]; then
    result="CRASH (exit $status)"
    failed+=("$t")
  fi
  printf '%-18s %12s %9s %8s %8s %8s  %s\n' "$t" "${execs:-?}" "${speed:-?}" "${cov:-?}" \
    "${ft:-?}" "$((after - before))" "$result"
done

for t in "${failed[@]}"; do
  echo >&2
  echo "== fuzz: $t failed; its log ends:" >&2
  tail -40 "$LOGS/$t.log" >&2
  mkdir -p "fuzz/regressions/$t"
  for crash in "$LOGS/$t.artifacts"/*; do
    [ -f "$crash" ] || continue
    name=$(basename "$crash")
    cp "$crash" "fuzz/regressions/$t/$name"
    echo "== fuzz: input saved as fuzz/regressions/$t/$name ($(wc -c <"$crash") bytes):" >&2
    od -A d -c "$crash" | head -20 >&2
  done
done

echo >&2
echo "fuzz: build $((built - started))s, run $((finished - built))s, ${#failed[@]} of $(echo $targets | wc -w) targets failed" >&2
[ "${#failed[@]}" -eq 0 ]
