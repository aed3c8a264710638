#!/usr/bin/env bash
# Builds optimizer_bench if needed, runs it, and prints one table of medians:
# rule, size, G values/s, GB/s and % of the memcpy bound.
#
#   bash bench/run_optimizer_bench.sh                      # everything
#   bash bench/run_optimizer_bench.sh --benchmark_filter='(Adam|Eve|memcpy)/16M'
#   bash bench/run_optimizer_bench.sh --benchmark_repetitions=9
#
# Arguments go to the benchmark (Google Benchmark flags). The binary's own
# output goes to stderr while it runs; the JSON it writes is kept at
# $BUILD_DIR/optimizer_bench.json. BUILD_DIR defaults to build.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
if [ ! -f "$build_dir/build.ninja" ]; then
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$build_dir" --target optimizer_bench

json="$build_dir/optimizer_bench.json"
"$build_dir/bench/optimizer_bench" --benchmark_out="$json" \
  --benchmark_out_format=json "$@" >&2

# Debian's interpreter, whatever python3 comes first on PATH.
/usr/bin/python3 - "$json" <<'EOF'
import json
import statistics
import sys

with open(sys.argv[1]) as f:
    report = json.load(f)

# Medians per benchmark: the "median" aggregate when the run has
# repetitions, else the median of the single runs.
samples = {}
medians = {}
for b in report["benchmarks"]:
    name = b["run_name"]
    if b.get("run_type") == "aggregate":
        if b.get("aggregate_name") == "median":
            medians[name] = b
    else:
        samples.setdefault(name, []).append(b)
counters = ("Gvalues/s", "GB/s", "memcpy_GB/s", "bound_pct")
for name, runs in samples.items():
    if name not in medians:
        medians[name] = {c: statistics.median(r[c] for r in runs)
                         for c in counters}

repetitions = max([b.get("repetitions", 1) for b in report["benchmarks"]] +
                  [len(runs) for runs in samples.values()])
ctx = report["context"]
print(f"{ctx.get('host_name', '?')}: {ctx['num_cpus']} CPUs at "
      f"{ctx['mhz_per_cpu']} MHz, {ctx['date']}; medians of {repetitions} "
      f"repetitions")
print(f"{'rule':<24} {'size':>5} {'G values/s':>11} {'GB/s':>7} "
      f"{'% of memcpy':>12}")
for name, b in medians.items():  # the order the benchmarks ran in
    rule, size = name.split("/")[:2]
    print(f"{rule:<24} {size:>5} {b['Gvalues/s']:>11.3f} {b['GB/s']:>7.1f} "
          f"{b['bound_pct']:>11.0f}%")
EOF
