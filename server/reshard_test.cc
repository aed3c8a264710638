#include "server/reshard.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/optimizer_config.h"
#include "common/partition.h"
#include "server/checkpoint.h"
#include "server/store_impl.h"
#include "tests/server/messages.h"
#include "tests/server/store_driver.h"

namespace ps {
namespace {

namespace fs = std::filesystem;
using ::ps::testutil::CreateRequest;
using ::ps::testutil::MakeSlice;
using ::ps::testutil::PushNow;
using ::ps::testutil::PushRequest;

constexpr uint64_t kSize = 37;

StoreOptions Shape(uint32_t shard, uint32_t num_shards, uint64_t block_size) {
  StoreOptions options;
  options.shard_index = shard;
  options.num_shards = num_shards;
  options.block_size = block_size;
  options.default_optimizer =
      *ParseOptimizerConfig("adam {} learning_rate: 0.01");
  return options;
}

// Element j's gradient at step t: the same whatever the layout.
float Gradient(uint64_t j, uint64_t t) {
  return std::sin(0.1f * static_cast<float>(j) + 0.37f * static_cast<float>(t));
}

// What every element holds, gathered from the stores of one cluster.
struct Flat {
  std::vector<float> values, m, v;
  std::vector<uint64_t> steps;
  bool operator==(const Flat&) const = default;
};

using Cluster = std::vector<std::unique_ptr<VariableStore>>;

Cluster MakeCluster(uint32_t num_shards, uint64_t block_size) {
  Cluster cluster;
  for (uint32_t i = 0; i < num_shards; ++i) {
    cluster.push_back(
        std::make_unique<VariableStore>(Shape(i, num_shards, block_size)));
  }
  return cluster;
}

Flat Gather(const Cluster& cluster) {
  Flat flat;
  flat.values.assign(kSize, NAN);
  flat.m.assign(kSize, NAN);
  flat.v.assign(kSize, NAN);
  flat.steps.assign(kSize, 0);
  for (const auto& store : cluster) {
    auto variable = store->Find("w");
    if (variable == nullptr) continue;
    for (Block* block : variable->SortedBlocks()) {
      absl::ReaderMutexLock lock(&block->mu);
      for (uint64_t k = 0; k < block->range.length; ++k) {
        const uint64_t j = block->range.offset + k;
        flat.values[j] = block->values[k];
        flat.m[j] =
            block->state.grad_avg.empty() ? 0 : block->state.grad_avg[k];
        flat.v[j] =
            block->state.square_avg.empty() ? 0 : block->state.square_avg[k];
        flat.steps[j] = block->state.step;
      }
    }
  }
  return flat;
}

// Steps [from, to] on every block of every store, as worker "w".
void Train(Cluster& cluster, uint64_t from, uint64_t to) {
  for (uint64_t t = from; t <= to; ++t) {
    for (auto& store : cluster) {
      auto variable = store->Find("w");
      ASSERT_NE(variable, nullptr);
      std::vector<v1::Slice> slices;
      for (Block* block : variable->SortedBlocks()) {
        std::vector<float> gradient(block->range.length);
        for (uint64_t k = 0; k < gradient.size(); ++k) {
          gradient[k] = Gradient(block->range.offset + k, t);
        }
        slices.push_back(MakeSlice("w", block->range.offset, gradient));
      }
      if (slices.empty()) continue;
      auto result =
          PushNow(*store, PushRequest("w", t, slices), /*with_values=*/false);
      ASSERT_TRUE(result->status.ok()) << result->status;
    }
  }
}

class ReshardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           absl::StrCat(
               "reshard_test_",
               ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Cluster checkpoint `number` of every store into the shared folder.
  void Checkpoint(Cluster& cluster, uint64_t number) {
    v1::CommitCheckpointRequest commit;
    commit.set_number(number);
    commit.set_block_size(cluster[0]->options().block_size);
    std::vector<std::unique_ptr<Checkpointer>> checkpointers;
    for (auto& store : cluster) {
      checkpointers.push_back(std::make_unique<Checkpointer>(
          CheckpointOptions{dir_.string(), 3}, store.get()));
      auto part = checkpointers.back()->WritePart(number);
      ASSERT_TRUE(part.ok()) << part.status();
      *commit.add_parts() = *part;
    }
    for (auto& checkpointer : checkpointers) {
      ASSERT_TRUE(checkpointer->Commit(commit).ok());
    }
  }

  // A cluster of another shape, each shard restored from the folder.
  Cluster Restore(uint32_t num_shards, uint64_t block_size,
                  std::vector<std::string>* summaries = nullptr) {
    Cluster cluster = MakeCluster(num_shards, block_size);
    for (auto& store : cluster) {
      Checkpointer reader({dir_.string(), 3}, store.get());
      auto loaded = reader.LoadNewest();
      EXPECT_TRUE(loaded.ok()) << loaded.status();
      if (loaded.ok() && summaries != nullptr) {
        summaries->push_back(loaded->summary);
      }
    }
    return cluster;
  }

  fs::path dir_;
};

TEST_F(ReshardTest, TwoShardsIntoThreeThenOneEqualUninterruptedAdam) {
  Cluster reference = MakeCluster(1, 4);
  Cluster two = MakeCluster(2, 4);
  for (Cluster* cluster : {&reference, &two}) {
    for (auto& store : *cluster) {
      ASSERT_TRUE(store->CreateVariable(CreateRequest("w", {kSize})).ok());
    }
  }
  Train(reference, 1, 5);
  Train(two, 1, 5);
  ASSERT_EQ(Gather(two), Gather(reference));
  Checkpoint(two, 1);

  // The same block_size: blocks move whole.
  std::vector<std::string> summaries;
  Cluster three = Restore(3, 4, &summaries);
  EXPECT_EQ(Gather(three), Gather(reference));
  EXPECT_THAT(summaries[0], ::testing::HasSubstr("from 2 shards"));
  EXPECT_THAT(summaries[0], ::testing::HasSubstr("moved from other parts"));
  Train(reference, 6, 8);
  Train(three, 6, 8);
  const Flat at_8 = Gather(reference);
  EXPECT_EQ(Gather(three), at_8);
  EXPECT_THAT(at_8.steps, ::testing::Each(8u));

  // Another block_size: the blocks are re-cut.
  Checkpoint(three, 2);
  Cluster one = Restore(1, 3);
  EXPECT_EQ(Gather(one), at_8);
  Train(reference, 9, 11);
  Train(one, 9, 11);
  EXPECT_EQ(Gather(one), Gather(reference));

  // And back to two shards of another block_size.
  Checkpoint(one, 3);
  Cluster again = Restore(2, 5);
  Train(reference, 12, 12);
  Train(again, 12, 12);
  EXPECT_EQ(Gather(again), Gather(reference));
}

TEST_F(ReshardTest, NewBlockSizeRefusesBlocksAtDifferentSteps) {
  Cluster two = MakeCluster(2, 4);
  for (auto& store : two) {
    ASSERT_TRUE(store->CreateVariable(CreateRequest("w", {kSize})).ok());
  }
  Train(two, 1, 2);
  // One more step for block 0 alone (async: blocks step on their own).
  for (auto& store : two) {
    if (store->Find("w")->block(0) == nullptr) continue;
    auto result = PushNow(
        *store, PushRequest("w", 3, {MakeSlice("w", 0, {1, 1, 1, 1})}), false);
    ASSERT_TRUE(result->status.ok());
  }
  Checkpoint(two, 1);
  VariableStore store(Shape(0, 1, 3));
  Checkpointer reader({dir_.string(), 3}, &store);
  auto loaded = reader.LoadNewest();
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(loaded.status().message(),
              ::testing::AllOf(::testing::HasSubstr("cannot re-cut 'w'"),
                               ::testing::HasSubstr("steps 3 and 2")));
  // The same block_size still restores exactly.
  VariableStore same(Shape(0, 1, 4));
  Checkpointer same_reader({dir_.string(), 3}, &same);
  EXPECT_TRUE(same_reader.LoadNewest().ok());
}

TEST_F(ReshardTest, ACheckpointMissingAPartIsSkippedForThePreviousOne) {
  Cluster two = MakeCluster(2, 4);
  for (auto& store : two) {
    ASSERT_TRUE(store->CreateVariable(CreateRequest("w", {kSize})).ok());
  }
  Train(two, 1, 2);
  Checkpoint(two, 1);
  const Flat at_1 = Gather(two);
  Train(two, 3, 4);
  Checkpoint(two, 2);
  const std::string missing = "ckpt-00000000000000000002-shard-1-of-2";
  fs::remove_all(dir_ / missing);
  // Both shards, each from the shared folder, go back to checkpoint 1.
  Cluster restored = Restore(2, 4);
  EXPECT_EQ(Gather(restored), at_1);
  // Re-sharding skips it too.
  Cluster one = Restore(1, 4);
  EXPECT_EQ(Gather(one), at_1);
}

}  // namespace
}  // namespace ps

namespace ps {
namespace {

// A table's rows move to their owners under the new row_shard, with their
// Adagrad sums and the table's step: training goes on as it would have.
TEST_F(ReshardTest, TableRowsMoveToTheirNewOwners) {
  constexpr uint32_t kDim = 3;
  auto create = [](Cluster& cluster) {
    v1::CreateTableRequest table;
    table.set_name("emb");
    table.set_dim(kDim);
    table.mutable_init()->mutable_normal()->set_stddev(1);
    *table.mutable_optimizer() =
        *ParseOptimizerConfig("adagrad {} learning_rate: 0.1");
    for (auto& store : cluster) ASSERT_TRUE(store->CreateTable(table).ok());
  };
  // Step t pushes ids t..t+40 (every shard gets a push, as the client sends).
  auto step = [](Cluster& cluster, uint64_t t) {
    const uint64_t hash = Fnv1a64("emb");
    for (auto& store : cluster) {
      v1::PushRequest request;
      v1::RowSlice* rows = request.add_rows();
      rows->set_table("emb");
      std::vector<float> grads;
      for (uint64_t id = t; id < t + 40; ++id) {
        if (RowShard(hash, id, cluster.size()) !=
            store->options().shard_index) {
          continue;
        }
        rows->add_ids(id);
        for (uint32_t j = 0; j < kDim; ++j) {
          grads.push_back(std::cos(0.3f * static_cast<float>(id + j + t)));
        }
      }
      rows->set_data(std::string(reinterpret_cast<const char*>(grads.data()),
                                 grads.size() * sizeof(float)));
      auto result = PushNow(*store, request, /*with_values=*/false);
      ASSERT_TRUE(result->status.ok()) << result->status;
    }
  };
  auto rows = [](Cluster& cluster) {
    std::vector<float> all;
    const uint64_t hash = Fnv1a64("emb");
    for (uint64_t id = 0; id < 60; ++id) {
      v1::PullRequest pull;
      v1::RowSlice* ask = pull.add_rows();
      ask->set_table("emb");
      ask->add_ids(id);
      v1::PullResponse answer;
      EXPECT_TRUE(cluster[RowShard(hash, id, cluster.size())]
                      ->Pull(pull, &answer)
                      .ok());
      const std::string& data = answer.rows(0).data();
      const float* values = reinterpret_cast<const float*>(data.data());
      all.insert(all.end(), values, values + kDim);
    }
    return all;
  };

  // Restored into one shard, a table with max_rows holds more rows than it
  // allows until its next row is created, which brings it back to max_rows.
  {
    Cluster small = MakeCluster(2, 4);
    v1::CreateTableRequest table;
    table.set_name("emb");
    table.set_dim(kDim);
    table.mutable_policy()->set_max_rows(30);
    for (auto& store : small) ASSERT_TRUE(store->CreateTable(table).ok());
    step(small, 1);  // ids 1..40, about 20 on each shard
    Checkpoint(small, 1);
    Cluster one = Restore(1, 4);
    auto rows_held = [&] {
      v1::ListVariablesResponse list = one[0]->ListVariables();
      return list.variables(0).table().rows();
    };
    EXPECT_EQ(rows_held(), 40u);
    v1::PushRequest request;  // three new ids
    v1::RowSlice* rows = request.add_rows();
    rows->set_table("emb");
    for (uint64_t id : {1000, 1001, 1002}) rows->add_ids(id);
    const std::vector<float> grads(3 * kDim, 1.0f);
    rows->set_data(std::string(reinterpret_cast<const char*>(grads.data()),
                               grads.size() * sizeof(float)));
    auto result = PushNow(*one[0], request, /*with_values=*/false);
    ASSERT_TRUE(result->status.ok()) << result->status;
    EXPECT_EQ(rows_held(), 30u);
    fs::remove_all(dir_);
  }

  Cluster original = MakeCluster(2, 4);
  create(original);
  for (uint64_t t = 1; t <= 5; ++t) step(original, t);
  Checkpoint(original, 1);
  for (uint32_t shards : {3u, 1u}) {
    SCOPED_TRACE(shards);
    Cluster restored = Restore(shards, 4);
    EXPECT_EQ(rows(restored), rows(original));
    Cluster reference = Restore(2, 4);
    for (uint64_t t = 6; t <= 8; ++t) {
      step(restored, t);
      step(reference, t);
    }
    EXPECT_EQ(rows(restored), rows(reference));
  }
}

}  // namespace
}  // namespace ps
