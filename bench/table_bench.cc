// Pushes to one sparse table from several threads at once, in the shard's
// process but without the transport: what the table's row locks give.
//
// Each push carries 4096 unique ids of dim 64 (1 MiB of float32 gradients,
// as ps_load --mode=table), drawn uniformly from rows that already exist
// (the table is filled first), with Adam (SparseAdam, in place) or Adagrad
// (the gathered kernel). Two ways of running the same pushes, in one binary:
//   serial   the push is planned, booked and run under the table's lock, as
//            every push was before the rows had locks of their own
//            (SparseTable::Apply under the lock);
//   striped  booked under the table's lock and run after it, waiting only
//            for the turns of its stripes (what the store does).
// With one thread both do the same work. With several, `serial` runs one
// push at a time and `striped` runs the rows of different stripes at once;
// the ratio striped / serial at the same thread count is the figure.
//
// Reported: rows/s (rows updated per second of wall time, over all
// threads). Unless the command line says otherwise each benchmark runs 5
// times and only the aggregates are printed; read the medians.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/optimizer_config.h"
#include "common/optimizer_settings.h"
#include "server/table.h"

namespace {

constexpr uint32_t kDim = 64;
constexpr size_t kIdsPerPush = 4096;
constexpr uint64_t kRows = 1 << 19;  // 128 MiB of values per array
constexpr int kBatchesPerThread = 8;

ps::optimizer::OptimizerSettings Settings(int rule) {
  ps::optimizer::OptimizerSettings settings;
  if (rule == 0) {
    settings.rule = ps::optimizer::AdamParams{};
  } else {
    settings.rule = ps::optimizer::AdagradParams{};
  }
  settings.learning_rate = 0.01;
  return settings;
}

// The table the threads share, filled before they start.
std::unique_ptr<ps::SparseTable> table;
ps::optimizer::OptimizerSettings settings;

void FillTable(const benchmark::State& state) {
  settings = Settings(static_cast<int>(state.range(1)));
  ps::v1::RowInit init;
  init.mutable_normal()->set_stddev(0.1);
  table = std::make_unique<ps::SparseTable>("emb", kDim, init,
                                            ps::v1::TablePolicy());
  std::vector<uint64_t> ids(kIdsPerPush);
  const std::vector<float> grads(kIdsPerPush * kDim, 0.01f);
  absl::MutexLock lock(&table->mu);
  for (uint64_t first = 0; first < kRows; first += kIdsPerPush) {
    std::iota(ids.begin(), ids.end(), first);
    auto plan = table->PlanPush(ids);
    table->Apply(settings, *plan, ids, grads, std::nullopt, nullptr);
  }
}

void DropTable(const benchmark::State&) { table.reset(); }

// range(0): 0 serial, 1 striped; range(1): 0 Adam, 1 Adagrad.
void BM_TablePushes(benchmark::State& state) {
  const bool striped = state.range(0) == 1;
  // Batches drawn before the clock starts: unique ids, in random order.
  std::mt19937_64 rng(1000 + state.thread_index());
  std::vector<std::vector<uint64_t>> batches(kBatchesPerThread);
  std::vector<uint64_t> all(kRows);
  std::iota(all.begin(), all.end(), 0);
  for (auto& batch : batches) {
    std::shuffle(all.begin(), all.end(), rng);
    batch.assign(all.begin(), all.begin() + kIdsPerPush);
  }
  std::vector<float> grads(kIdsPerPush * kDim);
  std::normal_distribution<float> normal(0, 0.01f);
  for (float& g : grads) g = normal(rng);
  std::vector<float> after(grads.size());

  size_t next = 0;
  for (auto _ : state) {
    const std::vector<uint64_t>& ids = batches[next++ % batches.size()];
    if (striped) {
      ps::SparseTable::Update update;
      {
        absl::MutexLock lock(&table->mu);
        auto plan = table->PlanPush(ids);
        table->Book(settings, *plan, ids, grads, std::nullopt, after, nullptr,
                    update);
      }
      table->Run(update, nullptr);
    } else {
      absl::MutexLock lock(&table->mu);
      auto plan = table->PlanPush(ids);
      table->Apply(settings, *plan, ids, grads, std::nullopt, nullptr, after);
    }
  }
  state.counters["rows/s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * kIdsPerPush),
                         benchmark::Counter::kIsRate);
}

BENCHMARK(BM_TablePushes)
    ->ArgNames({"striped", "adagrad"})
    ->ArgsProduct({{0, 1}, {0, 1}})
    ->Setup(FillTable)
    ->Teardown(DropTable)
    ->ThreadRange(1, 2)
    ->UseRealTime()
    ->MinTime(1.0);

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> args(argv, argv + argc);
  std::string repetitions = "--benchmark_repetitions=5";
  std::string aggregates = "--benchmark_report_aggregates_only=true";
  args.insert(args.begin() + 1, aggregates.data());
  args.insert(args.begin() + 1, repetitions.data());
  int count = static_cast<int>(args.size());
  benchmark::Initialize(&count, args.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
