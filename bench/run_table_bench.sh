#!/usr/bin/env bash
# Builds ps_load and ps_server if needed and prints the sparse-table table:
# PushPullRows of 4,096 unique Zipf(1.1) ids x dim 64 on one shard (ours)
# against the echo server carrying the same ids and rows, medians of RUNS
# runs of SECONDS_PER_RUN each; then, with MEMORY=1, the memory runs: a fill
# of FILL_ROWS distinct Adam rows (bytes per live row) and a run of
# FLAT_SECONDS at --table_max_rows=MAX_ROWS (RSS after each tenth).
#
#   bash bench/run_table_bench.sh                  # speed table, ~2 min
#   MEMORY=1 bash bench/run_table_bench.sh         # and the memory runs
#
# Environment: BUILD_DIR (default build), RUNS (3), SECONDS_PER_RUN (3),
# WORKERS ("1 2"), OPTIMIZERS ("adagrad adam"), MEMORY (0), FILL_ROWS
# (1000000), MAX_ROWS (500000), FLAT_SECONDS (120). Further arguments go to
# every ps_load run.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
runs=${RUNS:-3}
seconds=${SECONDS_PER_RUN:-3}
workers=${WORKERS-1 2}
optimizers=${OPTIMIZERS-adagrad adam}
if [ ! -f "$build_dir/build.ninja" ]; then
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >&2
fi
cmake --build "$build_dir" --target ps_load ps_server >&2
ps_load="$build_dir/bench/ps_load"

echo "PushPullRows of 4,096 unique ids (Zipf s=1.1 over 1e8) x dim 64 fp32" \
  "through ps::Client, 1 shard, medians of $runs runs of ${seconds} s;" \
  "$(nproc) cores, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| mode | optimizer | workers | max_rows | ours calls/s | ours GB/s |" \
  "echo GB/s | ratio | ours p50 µs | echo p50 µs | ours p99 µs |" \
  "server CPU s/GB ours / echo | live rows | RSS B/row (load) |" \
  "TableInfo B/row | target B/row | RSS MiB before -> after |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for opt in $optimizers; do
  for w in $workers; do
    "$ps_load" --mode=table --markdown_row --runs="$runs" \
      --seconds="$seconds" --workers="$w" --optimizer="$opt {}" "$@"
  done
done
if [ "${MEMORY:-0}" = 1 ]; then
  echo
  echo "Memory: ${FILL_ROWS:-1000000} distinct Adam rows pushed, then one short run"
  "$ps_load" --mode=table --echo=false --runs=1 --seconds=1 \
    --table_fill_rows="${FILL_ROWS:-1000000}" --optimizer="adam {}" "$@"
  echo
  flat=${FLAT_SECONDS:-120}
  echo "RSS at --table_max_rows=${MAX_ROWS:-500000}, ${flat} s in 10 runs"
  "$ps_load" --mode=table --echo=false --runs=10 \
    --seconds="$(awk "BEGIN{print $flat/10}")" --warmup_seconds=0 \
    --table_max_rows="${MAX_ROWS:-500000}" --optimizer="adam {}" "$@"
fi
