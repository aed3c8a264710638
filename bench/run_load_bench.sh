#!/usr/bin/env bash
# Builds ps_load and ps_server if needed and prints one markdown table: the
# parameter server (ours) against the echo server over the same transport,
# PushPull of one dense Adam variable through ps::Client, medians of RUNS
# runs of SECONDS each.
#
#   bash bench/run_load_bench.sh                   # the full table, ~10 min
#   RUNS=3 SECONDS_PER_RUN=2 bash bench/run_load_bench.sh   # quicker
#   SIZES="1MiB 4MiB" WORKERS="2" HALF_SIZES="" bash bench/run_load_bench.sh
#
# Environment: BUILD_DIR (default build), RUNS (5), SECONDS_PER_RUN (3),
# SIZES (fp32 sizes), WORKERS, HALF_SIZES (bf16/fp16 sizes), HALF_DTYPES,
# CHANNELS (channels per shard). Further arguments go to every ps_load run.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
runs=${RUNS:-5}
seconds=${SECONDS_PER_RUN:-3}
sizes=${SIZES-4KiB 1MiB 4MiB 40MiB}
workers=${WORKERS-1 2}
half_sizes=${HALF_SIZES-4MiB 40MiB}
half_dtypes=${HALF_DTYPES-bf16 fp16}
channels=${CHANNELS:-1}
if [ ! -f "$build_dir/build.ninja" ]; then
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >&2
fi
cmake --build "$build_dir" --target ps_load ps_server >&2

load() {
  # Fewer, longer runs would not help the largest size: a 40 MiB call takes
  # about 0.1 s, so a run of a few seconds holds dozens of calls.
  "$build_dir/bench/ps_load" --markdown_row --runs="$runs" \
    --seconds="$seconds" --channels_per_shard="$channels" "$@"
}

echo "PushPull through ps::Client, 1 shard, Adam, medians of $runs runs of" \
  "${seconds} s; $(nproc) cores, $(uname -r)"
echo
echo "| op | size (fp32) | wire | workers | ours GB/s | echo GB/s | ratio |" \
  "ours calls/s | ours p50 µs | echo p50 µs | p50 ratio | ours p99 µs |" \
  "ours CPU s/GB | echo CPU s/GB | CPU ratio | server RSS / state MiB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for size in $sizes; do
  for w in $workers; do
    load --value_bytes="$size" --workers="$w" --dtype=fp32 "${@}"
  done
done
for size in $half_sizes; do
  for dtype in $half_dtypes; do
    for w in $workers; do
      load --value_bytes="$size" --workers="$w" --dtype="$dtype" "${@}"
    done
  done
done
