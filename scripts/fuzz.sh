#!/usr/bin/env bash
# Builds the fuzz targets (tests/fuzz/) with Debian's clang, libFuzzer,
# AddressSanitizer and UndefinedBehaviorSanitizer into build-fuzz/, and runs
# each for a given time:
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     # default: 600 s, every target
#
# Each target starts from its seeds (tests/data/fuzz/TARGET/) and keeps the
# corpus it grows in build-fuzz/corpus/TARGET, so later runs go on from
# there. An input that crashes a target, or makes a sanitizer report, stops
# that target and is saved as build-fuzz/crashes/TARGET/crash-*: copy it
# into tests/data/fuzz/TARGET/ once fixed, and the ordinary build's
# TARGET_replay test keeps it fixed. The last lines print, per target, the
# runs, the coverage and the outcome. Exits non-zero when any target failed.
# FUZZ_JOBS=N runs N targets at once (default: 1).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds=${1:-600}
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] ||
  targets=(requests_fuzzer slices_fuzzer checkpoint_fuzzer)
case $seconds in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

build=${BUILD_DIR:-build-fuzz}
# Every library is instrumented for coverage and checked by the sanitizers;
# the targets alone link libFuzzer's main.
flags="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all"
flags+=" -fno-omit-frame-pointer"
cmake -S . -B "$build" -G Ninja \
  -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DPS_FUZZ=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target "${targets[@]}"

export ASAN_SYMBOLIZER_PATH=/usr/bin/llvm-symbolizer
export ASAN_OPTIONS=halt_on_error=1:detect_leaks=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

run_one() {
  local target=$1
  local corpus="$root/$build/corpus/$target" crashes="$root/$build/crashes/$target"
  mkdir -p "$corpus" "$crashes"
  # -rss_limit_mb: the stores a target builds are small; far more is a leak.
  "$root/$build/tests/fuzz/$target" "$corpus" "$root/tests/data/fuzz/$target" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 \
    -print_final_stats=1 -artifact_prefix="$crashes/" \
    >"$root/$build/$target.log" 2>&1
}

jobs=${FUZZ_JOBS:-1}
status=0
declare -A pids=()
for target in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
  echo "fuzz: $target for ${seconds} s (log: $build/$target.log)"
  run_one "$target" &
  pids[$target]=$!
done
declare -A outcome=()
for target in "${targets[@]}"; do
  if wait "${pids[$target]}"; then
    outcome[$target]=clean
  else
    outcome[$target]="FAILED (see $build/$target.log and $build/crashes/$target/)"
    status=1
  fi
done

printf '\n%-20s %14s %8s %8s  %s\n' target runs cov features outcome
for target in "${targets[@]}"; do
  log="$build/$target.log"
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
  printf '%-20s %14s %8s %8s  %s\n' "$target" "$runs" "$cov" "$ft" "${outcome[$target]}"
done
exit "$status"
