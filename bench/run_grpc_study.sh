#!/usr/bin/env bash
# What gRPC's transport settings do to CPU per byte: for each setting, the
# same ps_load rows against ours and the echo server, both (and the client)
# given the setting with --grpc_arg (or, for connections, the client's
# --channels_per_shard). Prints one markdown table: GB/s and server CPU
# seconds per GB of payload for both servers, and 4 KiB p50 latency.
#
#   bash bench/run_grpc_study.sh           # about 8 minutes
#
# The echo server's PushPull on gRPC's completion-queue API (ps_load
# --echo_api=cq) compares the two server APIs: ours stays on the callback
# API in those rows, as a control.
#
# Environment: BUILD_DIR (default build), RUNS (3), SECONDS_PER_RUN (2),
# ONLY (a regular expression: only the settings whose names match it).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
runs=${RUNS:-3}
seconds=${SECONDS_PER_RUN:-2}
if [ ! -f "$build_dir/build.ninja" ]; then
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >&2
fi
cmake --build "$build_dir" --target ps_load ps_server >&2
ps_load="$build_dir/bench/ps_load"

# name|ps_load flags
settings=(
  "defaults|"
  "HTTP/2 frames of up to 1 MiB|--grpc_arg=grpc.http2.max_frame_size=1048576"
  "HTTP/2 frames of up to 16 MiB|--grpc_arg=grpc.http2.max_frame_size=16777215"
  "stream window 16 MiB, BDP probe off|--grpc_arg=grpc.http2.lookahead_bytes=16777216,grpc.http2.bdp_probe=0"
  "BDP probe off|--grpc_arg=grpc.http2.bdp_probe=0"
  "TCP reads of 1 MiB (min 256 KiB)|--grpc_arg=grpc.experimental.tcp_read_chunk_size=1048576,grpc.experimental.tcp_min_read_chunk_size=262144"
  "TCP reads of 64 KiB (max 64 KiB)|--grpc_arg=grpc.experimental.tcp_read_chunk_size=65536,grpc.experimental.tcp_max_read_chunk_size=65536"
  "2 connections per shard|--channels_per_shard=2"
  "echo on the CQ API, 1 thread|--echo_api=cq --echo_cq_threads=1"
  "echo on the CQ API, 2 threads|--echo_api=cq --echo_cq_threads=2"
  "defaults again|"
)
# size workers
rows=("4MiB 2" "1MiB 1" "4KiB 1")

echo "PushPull fp32, Adam, 1 shard, medians of $runs runs of ${seconds} s;" \
  "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| setting | size | W | ours GB/s | echo GB/s | ratio | ours p50 µs | echo p50 µs | ours CPU s/GB | echo CPU s/GB |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for setting in "${settings[@]}"; do
  name=${setting%%|*}
  flags=${setting#*|}
  if [ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]]; then continue; fi
  for row in "${rows[@]}"; do
    read -r size workers <<<"$row"
    # | op | size | wire | W | ours | echo | ratio | calls/s | ours p50 |
    # echo p50 | p50 ratio | ours p99 | ours CPU | echo CPU | CPU ratio | RSS |
    # shellcheck disable=SC2086
    "$ps_load" --op=pushpull --value_bytes="$size" --workers="$workers" \
      --runs="$runs" --seconds="$seconds" --markdown_row $flags 2>/dev/null |
      tail -1 |
      awk -F'|' -v name="$name" '{printf "| %s |%s|%s|%s|%s|%s|%s|%s|%s|%s|\n",
        name, $3, $5, $6, $7, $8, $10, $11, $14, $15}'
  done
done
