// SparseTable alone: the rows Apply writes as it goes equal what Read gives
// after it, on every path (SparseAdam in place, the gathered kernel, rows
// created, ids still counted toward admission, rows evicted for room), and
// eviction takes the least recently updated rows. Through real shards:
// tests/tables.
#include "server/table.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <list>
#include <random>
#include <vector>

#include "common/row_init.h"

namespace ps {
namespace {

using ::testing::ElementsAreArray;

v1::RowInit UniformInit() {
  v1::RowInit init;
  init.mutable_uniform()->set_low(-0.5);
  init.mutable_uniform()->set_high(0.5);
  init.set_seed(17);
  return init;
}

optimizer::OptimizerSettings Rule(optimizer::RuleParams rule) {
  optimizer::OptimizerSettings settings;
  settings.rule = rule;
  settings.learning_rate = 0.05;
  return settings;
}

// Pushes 20 batches of unique ids (in random order) and checks after every
// push that Apply's `after` equals Read of the same ids, also when `after`
// is the gradients' own memory (a twin table), and that the table's rows
// moved (so the check saw updated rows, not only initial ones).
void ExpectAfterEqualsRead(const optimizer::OptimizerSettings& settings,
                           const v1::TablePolicy& policy) {
  constexpr uint32_t kDim = 13;  // a packet of eight and a tail
  SparseTable table("t", kDim, UniformInit(), policy);
  SparseTable twin("t", kDim, UniformInit(), policy);
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal;
  for (int step = 0; step < 20; ++step) {
    std::vector<uint64_t> ids;
    for (uint64_t id = 0; id < 64; ++id) {
      if (rng() % 3 == 0) ids.push_back(id * 1000003);
    }
    std::shuffle(ids.begin(), ids.end(), rng);
    std::vector<float> grads(ids.size() * kDim);
    for (float& g : grads) g = normal(rng);
    std::vector<float> after(grads.size(), -1.0f), read(grads.size());
    {
      absl::MutexLock lock(&table.mu);
      absl::StatusOr<SparseTable::Plan> plan = table.PlanPush(ids);
      ASSERT_TRUE(plan.ok());
      ASSERT_TRUE(table.Apply(settings, *plan, ids, grads, std::nullopt,
                              nullptr, after));
      table.Read(ids, read);
    }
    ASSERT_THAT(after, ElementsAreArray(read)) << "step " << step;
    {
      absl::MutexLock lock(&twin.mu);
      absl::StatusOr<SparseTable::Plan> plan = twin.PlanPush(ids);
      ASSERT_TRUE(plan.ok());
      ASSERT_TRUE(twin.Apply(settings, *plan, ids, grads, std::nullopt, nullptr,
                             grads));
    }
    ASSERT_THAT(grads, ElementsAreArray(read)) << "in place, step " << step;
  }
  // The rows moved: a row read now is not its initial row.
  absl::MutexLock lock(&table.mu);
  ASSERT_GT(table.rows(), 0u);
  std::vector<float> initial(kDim), now(kDim);
  InitialRow(UniformInit(), table.name_hash(), 0, initial);
  table.Read(std::vector<uint64_t>{0}, now);
  EXPECT_NE(0, std::memcmp(initial.data(), now.data(), sizeof(float) * kDim));
}

TEST(SparseTableTest, RowsWrittenDuringSparseAdamEqualARead) {
  ExpectAfterEqualsRead(Rule(optimizer::AdamParams{}), v1::TablePolicy());
}

TEST(SparseTableTest, RowsWrittenDuringAGatheredUpdateEqualARead) {
  ExpectAfterEqualsRead(Rule(optimizer::AdagradParams{}), v1::TablePolicy());
  optimizer::AdamParams amsgrad;
  amsgrad.amsgrad = true;
  ExpectAfterEqualsRead(Rule(amsgrad), v1::TablePolicy());
}

TEST(SparseTableTest, RowsWrittenForPendingIdsAndUnderEvictionEqualARead) {
  v1::TablePolicy admission;
  admission.set_min_count(3);
  ExpectAfterEqualsRead(Rule(optimizer::AdamParams{}), admission);
  ExpectAfterEqualsRead(Rule(optimizer::SgdParams{}), admission);
  v1::TablePolicy small;
  small.set_max_rows(30);
  small.set_evict_after_steps(4);
  ExpectAfterEqualsRead(Rule(optimizer::AdamParams{}), small);
  ExpectAfterEqualsRead(Rule(optimizer::RmsPropParams{}), small);
}

// A model of the update order (ids oldest first; a push moves the ids it
// carries to the newest end in its order, evicts the oldest rows it does
// not carry to make room, then adds its new ids in its order) predicts
// which ids hold rows after every push of a random mix of carried and new
// ids, with max_rows reached after the first pushes.
TEST(SparseTableTest, EvictionTakesTheLeastRecentlyUpdatedRows) {
  constexpr uint32_t kDim = 3;
  constexpr uint64_t kMaxRows = 40;
  constexpr uint64_t kIds = 100;
  v1::TablePolicy policy;
  policy.set_max_rows(kMaxRows);
  SparseTable table("t", kDim, UniformInit(), policy);
  const optimizer::OptimizerSettings settings = Rule(optimizer::SgdParams{});
  std::list<uint64_t> order;
  std::mt19937_64 rng(11);
  for (int step = 0; step < 60; ++step) {
    std::vector<uint64_t> ids;
    for (uint64_t id = 0; id < kIds; ++id) {
      if (rng() % 4 == 0) ids.push_back(id);
    }
    std::shuffle(ids.begin(), ids.end(), rng);
    if (ids.size() > kMaxRows) ids.resize(kMaxRows);
    std::vector<float> grads(ids.size() * kDim, 1.0f);
    {
      absl::MutexLock lock(&table.mu);
      absl::StatusOr<SparseTable::Plan> plan = table.PlanPush(ids);
      ASSERT_TRUE(plan.ok()) << plan.status();
      ASSERT_TRUE(
          table.Apply(settings, *plan, ids, grads, std::nullopt, nullptr));
    }
    std::vector<uint64_t> created;
    for (uint64_t id : ids) {
      auto it = std::find(order.begin(), order.end(), id);
      if (it == order.end()) {
        created.push_back(id);
      } else {
        order.erase(it);
        order.push_back(id);
      }
    }
    while (order.size() + created.size() > kMaxRows) order.pop_front();
    order.insert(order.end(), created.begin(), created.end());

    absl::MutexLock lock(&table.mu);
    ASSERT_EQ(table.rows(), order.size()) << "step " << step;
    // A row pushed once differs from its initial row (SGD moved it).
    for (uint64_t id = 0; id < kIds; ++id) {
      std::vector<float> initial(kDim), now(kDim);
      InitialRow(UniformInit(), table.name_hash(), id, initial);
      table.Read(std::vector<uint64_t>{id}, now);
      const bool held =
          std::find(order.begin(), order.end(), id) != order.end();
      EXPECT_EQ(held, initial != now) << "id " << id << ", step " << step;
    }
  }
}

}  // namespace
}  // namespace ps
