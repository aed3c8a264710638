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
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "common/partition.h"
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

// One push as a thread makes it: booked under the table's lock, run after
// it, with its answer rows.
struct Pushed {
  std::vector<uint64_t> ids;
  std::vector<float> grads;
  std::vector<float> after;
  std::optional<double> loss;
  uint64_t booked = 0;  // its place in the order of bookings
};

// Four threads push to one table at once, booking under its lock and
// running after it, while a fifth reads rows and takes snapshots. A
// replay of the same pushes one by one, in the order they were booked, on
// a twin table gives the same rows and the same answers bit for bit: each
// row saw the pushes in that order, whatever ran at once, rows created on
// places that evicted rows left included. Each snapshot, restored, equals
// the replay at the step it was cut at: one cut, no push in it by halves.
void ExpectConcurrentPushesEqualTheirReplay(
    const optimizer::OptimizerSettings& settings,
    const v1::TablePolicy& policy) {
  constexpr uint32_t kDim = 13;
  constexpr int kThreads = 4;
  constexpr int kPushes = 60;
  constexpr uint64_t kIds = 3000;
  SparseTable table("t", kDim, UniformInit(), policy);
  std::vector<std::vector<Pushed>> pushed(kThreads);
  uint64_t bookings = 0;  // guarded by table.mu
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      std::normal_distribution<float> normal;
      for (int k = 0; k < kPushes; ++k) {
        Pushed push;
        for (uint64_t id = 0; id < kIds; ++id) {
          if (rng() % 8 == 0) push.ids.push_back(id * 7919);
        }
        std::shuffle(push.ids.begin(), push.ids.end(), rng);
        push.grads.resize(push.ids.size() * kDim);
        for (float& g : push.grads) g = normal(rng);
        push.after.resize(push.grads.size());
        if (std::holds_alternative<optimizer::EveParams>(settings.rule)) {
          push.loss = 1.0 + 0.1 * (rng() % 10);  // Eve needs one
        }
        SparseTable::Update update;
        {
          absl::MutexLock lock(&table.mu);
          absl::StatusOr<SparseTable::Plan> plan = table.PlanPush(push.ids);
          ASSERT_TRUE(plan.ok()) << plan.status();
          table.Book(settings, *plan, push.ids, push.grads, push.loss,
                     push.after, nullptr, update);
          push.booked = bookings++;
        }
        ASSERT_TRUE(table.Run(update, nullptr));
        pushed[t].push_back(std::move(push));
      }
    });
  }
  std::atomic<bool> stop = false;
  // Snapshots taken while the pushes run, each with the step it was cut
  // at (the bookings before it).
  std::vector<std::vector<storage::v1::BlockRecord>> snapshots;
  std::thread reader([&] {
    std::vector<uint64_t> ids = {0, 7919, 2 * 7919, 99 * 7919};
    std::vector<float> rows(ids.size() * kDim);
    while (!stop.load()) {
      {
        absl::ReaderMutexLock lock(&table.mu);
        table.Read(ids, rows);
      }
      for (float value : rows) ASSERT_TRUE(std::isfinite(value));
      std::vector<storage::v1::BlockRecord> records;
      ASSERT_TRUE(table
                      .Snapshot([&](const storage::v1::BlockRecord& record) {
                        records.push_back(record);
                        return absl::OkStatus();
                      })
                      .ok());
      // Up to 8, each at a step of its own.
      if (snapshots.size() < 8 &&
          (snapshots.empty() || snapshots.back().at(0).rows().state().step() !=
                                    records.at(0).rows().state().step())) {
        snapshots.push_back(std::move(records));
      }
    }
  });
  for (std::thread& thread : threads) thread.join();
  stop = true;
  reader.join();

  std::vector<const Pushed*> order(kThreads * kPushes);
  for (const auto& pushes : pushed) {
    ASSERT_EQ(pushes.size(), size_t{kPushes});
    for (const Pushed& push : pushes) order[push.booked] = &push;
  }
  std::vector<uint64_t> all(kIds);
  for (uint64_t id = 0; id < kIds; ++id) all[id] = id * 7919;
  std::vector<float> got(all.size() * kDim), want(all.size() * kDim);
  // Each snapshot is one cut of the table: restored, it reads as the replay
  // of the pushes booked before it.
  std::map<uint64_t, const std::vector<storage::v1::BlockRecord>*> cuts;
  for (const auto& records : snapshots) {
    cuts[records.at(0).rows().state().step()] = &records;
  }
  SparseTable twin("t", kDim, UniformInit(), policy);
  auto expect_cut = [&](uint64_t step) {
    auto cut = cuts.find(step);
    if (cut == cuts.end()) return;
    SparseTable restored("t", kDim, UniformInit(), policy);
    for (const storage::v1::BlockRecord& record : *cut->second) {
      ASSERT_TRUE(restored.Restore(record).ok());
    }
    absl::MutexLock lock(&restored.mu);
    absl::MutexLock twin_lock(&twin.mu);
    restored.Read(all, got);
    twin.Read(all, want);
    EXPECT_EQ(0,
              std::memcmp(got.data(), want.data(), got.size() * sizeof(float)))
        << "snapshot at step " << step;
    EXPECT_EQ(restored.rows(), twin.rows()) << "snapshot at step " << step;
  };
  ASSERT_FALSE(cuts.empty());
  expect_cut(0);
  for (const Pushed* push : order) {
    std::vector<float> after(push->grads.size());
    {
      absl::MutexLock lock(&twin.mu);
      absl::StatusOr<SparseTable::Plan> plan = twin.PlanPush(push->ids);
      ASSERT_TRUE(plan.ok());
      ASSERT_TRUE(twin.Apply(settings, *plan, push->ids, push->grads,
                             push->loss, nullptr, after));
    }
    ASSERT_EQ(0, std::memcmp(after.data(), push->after.data(),
                             after.size() * sizeof(float)))
        << "answer of booking " << push->booked;
    expect_cut(push->booked + 1);
  }
  absl::MutexLock lock(&table.mu);
  absl::MutexLock twin_lock(&twin.mu);
  table.Read(all, got);
  twin.Read(all, want);
  EXPECT_EQ(0,
            std::memcmp(got.data(), want.data(), got.size() * sizeof(float)));
  EXPECT_EQ(table.rows(), twin.rows());
  EXPECT_EQ(table.step(), uint64_t{kThreads * kPushes});
}

TEST(SparseTableTest, ConcurrentSparseAdamPushesEqualTheirReplay) {
  ExpectConcurrentPushesEqualTheirReplay(Rule(optimizer::AdamParams{}),
                                         v1::TablePolicy());
  v1::TablePolicy small;
  small.set_max_rows(800);  // each push carries about 375 rows
  small.set_evict_after_steps(20);
  ExpectConcurrentPushesEqualTheirReplay(Rule(optimizer::AdamParams{}), small);
}

TEST(SparseTableTest, ConcurrentGatheredPushesEqualTheirReplay) {
  v1::TablePolicy policy;
  policy.set_max_rows(800);
  policy.set_min_count(2);
  {
    SCOPED_TRACE("adagrad");
    ExpectConcurrentPushesEqualTheirReplay(Rule(optimizer::AdagradParams{}),
                                           policy);
  }
  {
    SCOPED_TRACE("rmsprop");
    ExpectConcurrentPushesEqualTheirReplay(Rule(optimizer::RmsPropParams{}),
                                           policy);
  }
  // Eve's update runs while it is booked (its feedback is the next one's
  // input).
  SCOPED_TRACE("eve");
  ExpectConcurrentPushesEqualTheirReplay(Rule(optimizer::EveParams{}), policy);
}

// A run waits for the turns of the pushes booked before it: run first, the
// later of two pushes to the same rows still lands second.
TEST(SparseTableTest, RunWaitsForTheTurnsOfEarlierBookings) {
  constexpr uint32_t kDim = 5;
  const optimizer::OptimizerSettings settings = Rule(optimizer::AdamParams{});
  std::vector<uint64_t> ids;
  for (uint64_t id = 0; id < 200; ++id) ids.push_back(id);
  std::vector<float> first(ids.size() * kDim, 1.0f);
  std::vector<float> second(ids.size() * kDim, -3.0f);
  SparseTable table("t", kDim, UniformInit(), v1::TablePolicy());
  SparseTable::Update a, b;
  {
    absl::MutexLock lock(&table.mu);
    table.Book(settings, *table.PlanPush(ids), ids, first, std::nullopt, {},
               nullptr, a);
    table.Book(settings, *table.PlanPush(ids), ids, second, std::nullopt, {},
               nullptr, b);
  }
  std::thread later([&] { table.Run(b, nullptr); });
  // Long enough for `later` to run ahead if nothing held it.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  table.Run(a, nullptr);
  later.join();

  SparseTable twin("t", kDim, UniformInit(), v1::TablePolicy());
  absl::MutexLock twin_lock(&twin.mu);
  twin.Apply(settings, *twin.PlanPush(ids), ids, first, std::nullopt, nullptr);
  twin.Apply(settings, *twin.PlanPush(ids), ids, second, std::nullopt, nullptr);
  std::vector<float> got(ids.size() * kDim), want(ids.size() * kDim);
  absl::MutexLock lock(&table.mu);
  table.Read(ids, got);
  twin.Read(ids, want);
  EXPECT_THAT(got, ElementsAreArray(want));
}

// Ids of one shard spread over every stripe, for any number of shards.
TEST(SparseTableTest, OneShardsIdsSpreadOverEveryStripe) {
  for (uint32_t shards : {1u, 2u, 4u, 16u, 64u}) {
    std::vector<int> counts(SparseTable::kStripes);
    int owned = 0;
    for (uint64_t id = 0; owned < 16000; ++id) {
      if (RowShard(Fnv1a64("emb"), id, shards) != 0) continue;
      ++owned;
      ++counts[SparseTable::StripeOf(id)];
    }
    for (int count : counts) {
      EXPECT_GT(count, 16000 / SparseTable::kStripes / 2) << shards;
    }
  }
}

}  // namespace
}  // namespace ps
