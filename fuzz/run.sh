#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on the stable toolchain and
# runs them, one at a time, niced, single process.
#
#   fuzz/run.sh [TARGET|all] [RUNS]   RUNS inputs per target (default 1000000)
#   fuzz/run.sh all 0                 replay the committed corpus only (the cheap check)
#
# New inputs libFuzzer finds go to target/fuzz/corpus/<target> (not committed); crashes to
# target/fuzz/artifacts/<target>/. The committed seeds are fuzz/corpus/<target>/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target_arg="${1:-all}"
runs="${2:-1000000}"
work="${FUZZ_WORK_DIR:-$here/../target/fuzz}"
export CARGO_TARGET_DIR="$work/build"
# What `cargo fuzz build -s none` passes: coverage counters, comparison tracing and the
# `fuzzing` cfg, without a sanitizer (those need nightly). With an explicit --target these
# flags reach only the fuzzed code, not build scripts or proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
host="$(rustc -vV | sed -n 's/^host: //p')"

if [ "$target_arg" = all ]; then
  targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$here/Cargo.toml" | grep -v '^damselfly-fuzz$')
else
  targets="$target_arg"
fi

bins=()
for t in $targets; do bins+=(--bin "$t"); done
# FUZZ_CARGO_ARGS=--no-default-features builds only the light targets (dfinit, task IDs).
# shellcheck disable=SC2086
(cd "$here" && nice -n 10 cargo build --quiet --target "$host" ${FUZZ_CARGO_ARGS:-} "${bins[@]}")

status=0
for t in $targets; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t" "$work/logs"
  log="$work/logs/$t.log"
  start=$(date +%s)
  # -jobs=1 -workers=1: one fuzzing process; libFuzzer then writes its output to fuzz-0.log in
  # the working directory, so it runs in the logs directory and the log is renamed after.
  if (cd "$work/logs" && nice -n 10 "$CARGO_TARGET_DIR/$host/debug/$t" \
      -runs="$runs" -jobs=1 -workers=1 -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$work/artifacts/$t/" \
      "$work/corpus/$t" "$here/corpus/$t" >/dev/null 2>&1); then
    result=ok
  else
    result=FAILED
    status=1
  fi
  mv -f "$work/logs/fuzz-0.log" "$log" 2>/dev/null || true
  seconds=$(( $(date +%s) - start ))
  executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  echo "$t: $result, ${executed:-?} inputs in ${seconds}s (log: $log)"
  if [ "$result" = FAILED ]; then
    grep -m1 -A15 -E "panicked|ERROR: libFuzzer|==ERROR" "$log" || tail -20 "$log"
  fi
done
exit "$status"
