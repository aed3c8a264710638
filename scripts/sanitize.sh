#!/usr/bin/env bash
# Builds every C++ target with Debian's clang under a sanitizer, into its own
# folder, and runs the ctest suite there:
#
#   scripts/sanitize.sh asan   # AddressSanitizer + UndefinedBehaviorSanitizer
#   scripts/sanitize.sh tsan   # ThreadSanitizer
#
# Extra arguments go to ctest (e.g. -R store_test). The folder is
# build-asan or build-tsan unless BUILD_DIR says otherwise. Fails when the
# build fails, when a test fails, or when any process (tests, and the
# ps_server children they start) wrote a sanitizer report. CI does not run
# this: it keeps its GCC Release build.
#
# Every finding halts the process that made it (UBSan's too), and each
# report is also written under <build>/sanitizer-logs/, because a report
# made by a ps_server child goes to a pipe or file of the test that started
# it, where ctest may not show it. The script prints those files at the end.
#
# Python tests (label python) are left out: psclient is a binding, an
# instrumented module that Debian's uninstrumented python3 cannot load (it
# lacks the sanitizer runtime), and preloading the runtime into python3
# would be inherited by the ps_server children, which carry their own
# (ASan refuses two runtimes). The C++ tests cover ps::Client, which the
# binding only converts types for.
#
# gRPC, protobuf and Abseil come from Debian, built without a sanitizer.
# AddressSanitizer still checks what our code does with their memory.
# ThreadSanitizer cannot see their synchronization on its own:
# scripts/sanitizers/tsan_sync.cc shows it absl::Mutex (which gRPC's locks
# are too) and gRPC's completion queue, and scripts/sanitizers/*.supp list,
# with the reason for each, the few reports that are suppressed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

mode=${1:-}
extra_cmake_args=(-UCMAKE_PROJECT_INCLUDE)
case "$mode" in
  asan)
    # -O1 keeps the reports' stacks close to the source; assertions are on
    # (no NDEBUG), so Eigen checks its indices too.
    sanitize_flags="-fsanitize=address,undefined -fno-sanitize-recover=all"
    sanitize_flags+=" -fno-omit-frame-pointer -fno-optimize-sibling-calls"
    ;;
  tsan)
    sanitize_flags="-fsanitize=thread"
    # Shows ThreadSanitizer how Abseil and gRPC order threads (see the file).
    extra_cmake_args=(
      -DCMAKE_PROJECT_INCLUDE="$PWD/scripts/sanitizers/tsan_sync.cmake")
    ;;
  *)
    echo "usage: $0 asan|tsan [ctest arguments]" >&2
    exit 2
    ;;
esac
shift

build_dir=${BUILD_DIR:-build-$mode}
logs="$root/$build_dir/sanitizer-logs"
supp="$root/scripts/sanitizers"

start=$(date +%s)
# Configured every time, so that the folder follows this script.
cmake -S . -B "$build_dir" -G Ninja \
  -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
  -DCMAKE_CXX_FLAGS="$sanitize_flags" \
  -DCMAKE_EXE_LINKER_FLAGS="$sanitize_flags" \
  -DCMAKE_SHARED_LINKER_FLAGS="$sanitize_flags" "${extra_cmake_args[@]}" \
  >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
built=$(date +%s)

rm -rf "$logs"
mkdir -p "$logs"
export ASAN_SYMBOLIZER_PATH=/usr/bin/llvm-symbolizer
# Reports go to <logs>/report.<program>.<pid> (UBSan shares ASan's file).
common="halt_on_error=1:print_stacktrace=1:log_exe_name=1:log_path=$logs/report"
case "$mode" in
  asan)
    # Leaks are checked at exit, with the few in Debian's libraries
    # suppressed (see the file for why each).
    export ASAN_OPTIONS="$common:detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:strict_string_checks=1"
    export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
    export UBSAN_OPTIONS="$common"
    ;;
  tsan)
    # Debian's gRPC, protobuf and Abseil hand memory between their threads
    # with atomics that ThreadSanitizer does not see; what they do with it
    # through intercepted calls (memcpy, free, sendmsg) is then not checked
    # (ignore_noninstrumented_modules). Every access our code makes is.
    export TSAN_OPTIONS="$common:ignore_noninstrumented_modules=1:second_deadlock_stack=1:suppressions=$supp/tsan.supp:print_suppressions=0"
    ;;
esac

status=0
# Tests without a TIMEOUT of their own get 20 minutes: under a sanitizer
# they run several times slower than in Release.
ctest --test-dir "$build_dir" -j 2 --output-on-failure --timeout 1200 \
  -LE python "$@" || status=$?
tested=$(date +%s)

shopt -s nullglob
reports=("$logs"/*)
if [ "${#reports[@]}" -gt 0 ]; then
  echo "sanitize.sh: ${#reports[@]} sanitizer report(s):"
  for r in "${reports[@]}"; do
    echo "==== $r"
    cat "$r"
  done
  status=1
fi
echo "sanitize.sh $mode: build $((built - start)) s, tests $((tested - built)) s"
exit "$status"
