// Throughput of every update rule against the memory bound.
//
// Each rule runs through ps::optimizer::ApplyUpdate (the store's entry point)
// on one block of 1M and of 16M float values. In the same binary a memcpy of
// arrays of the same length measures what one core can move. Every benchmark
// reports, as counters:
//   Gvalues/s    values updated per second, in billions
//   GB/s         bytes the rule must move per second (its reads plus writes,
//                counted per rule, see kRules) or memcpy's read + write
//   memcpy_GB/s  memcpy's rate at the same length (see below)
//   bound_pct    GB/s as a percentage of memcpy_GB/s: how close the rule
//                runs to the memory bound
//
// The memcpy rate a rule is compared with is measured inside the rule's own
// benchmark, on its own values array, just before the timed loop: on a
// shared machine the memory bandwidth left to one core drifts within
// minutes, and a bound taken at another time would make the ratio noise.
// The memcpy/ benchmarks report that rate on its own.
//
// Repetitions: unless the command line says otherwise, each benchmark runs
// 5 times and only the mean, median, stddev and cv are printed
// (--benchmark_repetitions=5 --benchmark_report_aggregates_only=true, which
// any flag given later on the command line overrides). Read the medians.
//
// Timing is the benchmark thread's CPU time, as Google Benchmark's own
// columns are by default: time spent waiting on memory counts, while time
// the thread spends descheduled on a busy (shared) machine does not.
#include <benchmark/benchmark.h>
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/optimizer_config.h"
#include "common/optimizer_settings.h"
#include "server/optimizer/update.h"

namespace {

// CPU time of the calling thread, in seconds.
double ThreadCpuSeconds() {
  timespec now;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) +
         1e-9 * static_cast<double>(now.tv_nsec);
}

// A rule under test: its config (protobuf text) and the bytes per value that
// one step must read and write.
struct RuleCase {
  const char* name;
  const char* config;
  int bytes_per_value;
};

// Bytes per value: 4 per float32 array read, plus 4 per array written.
constexpr RuleCase kRules[] = {
    // read p, g; write p
    {"SGD", "sgd {}", 12},
    // read p, g, b; write p, b
    {"Momentum", "momentum {}", 20},
    {"Nesterov", "momentum { nesterov: true }", 20},
    // read p, g, s; write p, s
    {"Adagrad", "adagrad {}", 20},
    // read p, g, v; write p, v
    {"RMSProp", "rmsprop {}", 20},
    // read p, g, v, a, b; write p, v, a, b
    {"RMSPropCenteredMomentum", "rmsprop { centered: true momentum: 0.9 }", 36},
    // read p, g, m, v; write p, m, v
    {"Adam", "adam {}", 28},
    // read p, g, m, v, w; write p, m, v, w
    {"AMSGrad", "adam { amsgrad: true }", 36},
    // as Adam: the decay p *= 1 - lr wd happens in the same pass
    {"AdamW",
     "adam { decoupled_weight_decay: true } weight_decay: 0.01 "
     "learning_rate: 0.001",
     28},
    // as Adam; Eve's feedback is a per-block scalar
    {"Eve", "eve {}", 28},
};

constexpr int64_t kSizes[] = {int64_t{1} << 20, int64_t{1} << 24};

std::vector<float> RandomValues(int64_t n, float scale, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> out(static_cast<size_t>(n));
  for (float& x : out) x = dist(gen);
  return out;
}

double Median(std::vector<double> xs) {
  std::sort(xs.begin(), xs.end());
  const size_t n = xs.size();
  return n % 2 == 1 ? xs[n / 2] : (xs[n / 2 - 1] + xs[n / 2]) / 2;
}

// memcpy's rate (bytes read + written per second) copying `src` into a
// buffer of its size: the median of a few copies. Measured right before a
// rule runs, so that both see the same state of a shared machine.
double MemcpyBound(std::span<const float> src) {
  std::vector<float> dst(src.size());
  std::vector<double> rates;
  for (int i = 0; i < 6; ++i) {
    const double start = ThreadCpuSeconds();
    std::memcpy(dst.data(), src.data(), src.size_bytes());
    benchmark::ClobberMemory();
    const double elapsed = ThreadCpuSeconds() - start;
    // The first copy faults dst's pages in; it does not count.
    if (i > 0) rates.push_back(8.0 * static_cast<double>(src.size()) / elapsed);
  }
  return Median(rates);
}

// Sets the counters every benchmark reports from its own CPU time.
void ReportRates(benchmark::State& state, int64_t n, int bytes_per_value,
                 double seconds, double bound_bytes_per_second) {
  const double values =
      static_cast<double>(n) * static_cast<double>(state.iterations());
  const double bytes_per_second = values * bytes_per_value / seconds;
  state.SetItemsProcessed(static_cast<int64_t>(values));
  state.SetBytesProcessed(static_cast<int64_t>(values * bytes_per_value));
  state.counters["Gvalues/s"] = values / seconds / 1e9;
  state.counters["GB/s"] = bytes_per_second / 1e9;
  state.counters["memcpy_GB/s"] = bound_bytes_per_second / 1e9;
  state.counters["bound_pct"] =
      100.0 * bytes_per_second / bound_bytes_per_second;
}

void BM_Memcpy(benchmark::State& state, int64_t n) {
  std::vector<float> src = RandomValues(n, 1.0f, 7);
  std::vector<float> dst(src.size());
  std::memcpy(dst.data(), src.data(), src.size() * sizeof(float));
  const double start = ThreadCpuSeconds();
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), src.size() * sizeof(float));
    benchmark::ClobberMemory();
  }
  const double elapsed = ThreadCpuSeconds() - start;
  const double rate =
      8.0 * static_cast<double>(n) * state.iterations() / elapsed;
  ReportRates(state, n, 8, elapsed, rate);
}

void BM_Rule(benchmark::State& state, const RuleCase& rule, int64_t n) {
  absl::StatusOr<ps::v1::OptimizerConfig> config =
      ps::ParseOptimizerConfig(rule.config);
  if (!config.ok()) {
    state.SkipWithError(std::string(config.status().message()).c_str());
    return;
  }
  absl::StatusOr<ps::optimizer::OptimizerSettings> settings =
      ps::ResolveOptimizerConfig(*config);
  if (!settings.ok()) {
    state.SkipWithError(std::string(settings.status().message()).c_str());
    return;
  }
  std::vector<float> values = RandomValues(n, 1.0f, 1);
  const std::vector<float> grad = RandomValues(n, 0.1f, 2);
  ps::optimizer::BlockOptimizerState opt_state;
  // Eve's loss moves both ways so that its feedback branch varies; the other
  // rules ignore it.
  double loss = 1.0;
  auto step = [&] {
    loss = loss > 1.0 ? 0.9 : 1.1;
    ps::optimizer::ApplyUpdate(*settings, opt_state, std::span<float>(values),
                               std::span<const float>(grad), loss);
  };
  // The first step allocates the optimizer's slots and takes the rules'
  // first-step paths; it is not what a running job spends its time on.
  step();

  const double bound = MemcpyBound(values);
  const double start = ThreadCpuSeconds();
  for (auto _ : state) {
    step();
    benchmark::ClobberMemory();
  }
  const double elapsed = ThreadCpuSeconds() - start;
  benchmark::DoNotOptimize(values.data());
  ReportRates(state, n, rule.bytes_per_value, elapsed, bound);
}

std::string SizeLabel(int64_t n) { return absl::StrCat(n >> 20, "M"); }

void RegisterAll() {
  for (int64_t n : kSizes) {
    benchmark::RegisterBenchmark(
        absl::StrCat("memcpy/", SizeLabel(n)).c_str(),
        [n](benchmark::State& state) { BM_Memcpy(state, n); })
        ->Unit(benchmark::kMillisecond);
  }
  for (int64_t n : kSizes) {
    for (const RuleCase& rule : kRules) {
      benchmark::RegisterBenchmark(
          absl::StrCat(rule.name, "/", SizeLabel(n)).c_str(),
          [&rule, n](benchmark::State& state) { BM_Rule(state, rule, n); })
          ->Unit(benchmark::kMillisecond);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Defaults that any later flag on the command line overrides.
  std::vector<char*> args;
  args.push_back(argv[0]);
  std::string repetitions = "--benchmark_repetitions=5";
  std::string aggregates = "--benchmark_report_aggregates_only=true";
  args.push_back(repetitions.data());
  args.push_back(aggregates.data());
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  int args_count = static_cast<int>(args.size());

  benchmark::Initialize(&args_count, args.data());
  if (benchmark::ReportUnrecognizedArguments(args_count, args.data())) return 1;
  RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
