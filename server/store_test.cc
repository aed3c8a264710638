#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/optimizer_config.h"
#include "common/status.h"
#include "common/wire.h"
#include "server/optimizer/update.h"
#include "server/store_impl.h"
#include "tests/server/messages.h"
#include "tests/server/store_driver.h"

namespace ps {
namespace {

using ::ps::testutil::CreateRequest;
using ::ps::testutil::Decode;
using ::ps::testutil::Encode;
using ::ps::testutil::Iota;
using ::ps::testutil::MakeSlice;
using ::ps::testutil::Minus;
using ::ps::testutil::PushNow;
using ::ps::testutil::PushRequest;
using ::ps::testutil::PushResult;
using ::ps::testutil::RangeSlice;
using ::ps::testutil::StartPush;
using ::testing::AllOf;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

v1::OptimizerConfig Optimizer(const std::string& text) {
  auto config = ParseOptimizerConfig(text);
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : v1::OptimizerConfig();
}

StoreOptions AsyncOptions(
    uint32_t shard_index = 0, uint32_t num_shards = 1, uint64_t block_size = 4,
    const std::string& optimizer = "sgd {} learning_rate: 1") {
  StoreOptions options;
  options.shard_index = shard_index;
  options.num_shards = num_shards;
  options.block_size = block_size;
  options.default_optimizer = Optimizer(optimizer);
  return options;
}

StoreOptions SyncOptions(uint32_t num_workers, uint32_t quorum,
                         uint64_t block_size = 4) {
  StoreOptions options = AsyncOptions(0, 1, block_size);
  options.sync = true;
  options.num_workers = num_workers;
  options.quorum = quorum;
  return options;
}

// Initial values for every block of `values` that the store's shard owns.
v1::CreateVariableRequest CreateWithValues(const VariableStore& store,
                                           const std::string& name,
                                           std::vector<uint64_t> shape,
                                           const std::vector<float>& values) {
  v1::CreateVariableRequest request = CreateRequest(name, shape);
  const PartitionPlan& plan = store.plan();
  for (uint64_t k = 0; k < plan.NumBlocks(values.size()); ++k) {
    if (plan.ShardOf(name, k) != store.options().shard_index) continue;
    const FlatRange range = plan.BlockRange(values.size(), k);
    *request.add_initial_values() = MakeSlice(
        name, range.offset,
        std::vector<float>(values.begin() + range.offset,
                           values.begin() + range.offset + range.length));
  }
  return request;
}

// Creates `name` on a single-shard store; every block is local.
void CreateLocal(VariableStore& store, const std::string& name,
                 const std::vector<float>& values) {
  auto created = store.CreateVariable(
      CreateWithValues(store, name, {values.size()}, values));
  ASSERT_TRUE(created.ok()) << created.status();
  ASSERT_TRUE(*created);
}

// The values of the store's blocks of a variable, block by block, and their
// versions.
struct Snapshot {
  std::vector<float> values;
  std::vector<uint64_t> versions;
};

Snapshot PullAll(const VariableStore& store, const std::string& name) {
  Snapshot snapshot;
  auto variable = store.Find(name);
  EXPECT_NE(variable, nullptr) << name;
  if (variable == nullptr) return snapshot;
  const PartitionPlan& plan = store.plan();
  v1::PullRequest request;
  for (uint64_t k = 0; k < plan.NumBlocks(variable->size()); ++k) {
    if (plan.ShardOf(name, k) != store.options().shard_index) continue;
    const FlatRange range = plan.BlockRange(variable->size(), k);
    *request.add_slices() = RangeSlice(name, range.offset, range.length);
  }
  v1::PullResponse response;
  absl::Status status = store.Pull(request, &response);
  EXPECT_TRUE(status.ok()) << status;
  for (const v1::Slice& slice : response.values()) {
    std::vector<float> values = Decode(slice);
    snapshot.values.insert(snapshot.values.end(), values.begin(), values.end());
    snapshot.versions.push_back(slice.version());
  }
  return snapshot;
}

// Pulls the single range `slice`; the values it answers are dropped.
absl::Status PullRange(VariableStore& store, const v1::Slice& slice) {
  v1::PullRequest request;
  *request.add_slices() = slice;
  v1::PullResponse response;
  return store.Pull(request, &response);
}

// ---------------------------------------------------------------- create

TEST(StoreCreateTest, CreatesOnceThenAcknowledges) {
  VariableStore store(AsyncOptions());
  auto first = store.CreateVariable(CreateRequest("w", {3, 5}));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(*first);
  auto second = store.CreateVariable(CreateRequest("w", {3, 5}));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(*second);
  EXPECT_THAT(store.VariableNames(), ElementsAreArray({"w"}));
  auto variable = store.Find("w");
  ASSERT_NE(variable, nullptr);
  EXPECT_EQ(variable->size(), 15u);
  EXPECT_EQ(variable->NumRecords(), 4u);  // 4 + 4 + 4 + 3
}

TEST(StoreCreateTest, NoInitialValuesMeansZeros) {
  VariableStore store(AsyncOptions());
  ASSERT_TRUE(store.CreateVariable(CreateRequest("w", {7})).ok());
  Snapshot snapshot = PullAll(store, "w");
  EXPECT_THAT(snapshot.values, ElementsAreArray(std::vector<float>(7, 0.0f)));
  EXPECT_THAT(snapshot.versions, ElementsAreArray({0u, 0u}));
}

TEST(StoreCreateTest, FirstInitialValuesWin) {
  VariableStore store(AsyncOptions());
  const std::vector<float> first = Iota(9);
  const std::vector<float> second = Iota(9, 100.0f);
  auto created = store.CreateVariable(CreateWithValues(store, "w", {9}, first));
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(*created);
  created = store.CreateVariable(CreateWithValues(store, "w", {9}, second));
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_FALSE(*created);
  EXPECT_THAT(PullAll(store, "w").values, ElementsAreArray(first));
}

TEST(StoreCreateTest, ContinuedCreateSetsBlocksThatNoPushUpdated) {
  VariableStore store(AsyncOptions());
  // The creator's first request: shape only; blocks 0 and 1 of 3 come later.
  auto created = store.CreateVariable(CreateRequest("w", {10}));
  ASSERT_TRUE(created.ok()) << created.status();
  ASSERT_TRUE(*created);
  // Block 1 is pushed (SGD, rate 1) before its initial values arrive.
  ASSERT_TRUE(
      PushNow(store, PushRequest("w0", 1, {MakeSlice("w", 4, {1, 1, 1, 1})}))
          ->status.ok());
  v1::CreateVariableRequest more =
      CreateWithValues(store, "w", {10}, Iota(10, 100.0f));
  more.set_continued(true);
  created = store.CreateVariable(more);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_FALSE(*created);
  Snapshot snapshot = PullAll(store, "w");
  // Blocks 0 and 2 take the values; block 1 keeps what its push made.
  EXPECT_THAT(snapshot.values,
              ElementsAreArray({100.0f, 101.0f, 102.0f, 103.0f, -1.0f, -1.0f,
                                -1.0f, -1.0f, 108.0f, 109.0f}));
  EXPECT_THAT(snapshot.versions, ElementsAreArray({0u, 1u, 0u}));
  // Without `continued` a repeat changes nothing.
  ASSERT_TRUE(
      store.CreateVariable(CreateWithValues(store, "w", {10}, Iota(10))).ok());
  EXPECT_EQ(PullAll(store, "w").values[0], 100.0f);
  // A bad continued request is refused whole: its good block 0 (still at
  // version 0, and given before the bad block 2) is not set either.
  v1::CreateVariableRequest bad =
      CreateWithValues(store, "w", {10}, Iota(10, 200.0f));
  bad.set_continued(true);
  bad.mutable_initial_values(bad.initial_values_size() - 1)->set_length(1);
  EXPECT_EQ(store.CreateVariable(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PullAll(store, "w").values[0], 100.0f);
}

TEST(StoreCreateTest, ConcurrentCreatesAgreeOnOneWinner) {
  VariableStore store(AsyncOptions());
  constexpr int kThreads = 8;
  std::atomic<int> created{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto result = store.CreateVariable(
          CreateWithValues(store, "w", {10}, Iota(10, 100.0f * t)));
      if (!result.ok()) {
        ++failed;
      } else if (*result) {
        ++created;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(created.load(), 1);
  // Whoever won, the values are exactly one worker's, never a mixture.
  std::vector<float> values = PullAll(store, "w").values;
  ASSERT_EQ(values.size(), 10u);
  EXPECT_THAT(values, ElementsAreArray(Iota(10, values[0])));
}

TEST(StoreCreateTest, AnotherShapeIsAlreadyExists) {
  VariableStore store(AsyncOptions());
  ASSERT_TRUE(
      store.CreateVariable(CreateWithValues(store, "w", {2, 3}, Iota(6))).ok());
  for (std::vector<uint64_t> shape :
       {std::vector<uint64_t>{3, 2}, std::vector<uint64_t>{6},
        std::vector<uint64_t>{2, 3, 1}}) {
    auto result = store.CreateVariable(CreateRequest("w", shape));
    EXPECT_EQ(result.status().code(), absl::StatusCode::kAlreadyExists)
        << result.status();
    EXPECT_THAT(result.status().message(), HasSubstr("'w'"));
  }
  EXPECT_THAT(store.Find("w")->shape(), ElementsAreArray({2u, 3u}));
  EXPECT_THAT(PullAll(store, "w").values, ElementsAreArray(Iota(6)));
}

TEST(StoreCreateTest, BadShapeIsInvalidArgument) {
  VariableStore store(AsyncOptions());
  const std::vector<std::vector<uint64_t>> bad_shapes = {
      {0},
      {3, 0},
      {0, 5, 2},
      {std::numeric_limits<uint64_t>::max()},  // -1 sent as uint64
      {uint64_t{1} << 32, uint64_t{1} << 32},  // too many values
  };
  for (const auto& shape : bad_shapes) {
    auto result = store.CreateVariable(CreateRequest("bad", shape));
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument)
        << result.status();
    EXPECT_EQ(store.Find("bad"), nullptr);
  }
  auto unnamed = store.CreateVariable(CreateRequest("", {3}));
  EXPECT_EQ(unnamed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(store.VariableNames().empty());
}

TEST(StoreCreateTest, BadOptimizerIsInvalidArgument) {
  VariableStore store(AsyncOptions());
  v1::CreateVariableRequest request = CreateRequest("w", {3});
  request.mutable_optimizer()->mutable_adam()->set_beta1(2.0);
  auto result = store.CreateVariable(request);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.Find("w"), nullptr);
}

TEST(StoreCreateTest, InitialValuesOfAnotherShardAreFailedPrecondition) {
  VariableStore store(AsyncOptions(/*shard_index=*/0, /*num_shards=*/2));
  const PartitionPlan& plan = store.plan();
  // A 12-value variable has blocks 0, 1, 2: at least one lives elsewhere.
  uint64_t foreign = 0;
  while (plan.ShardOf("w", foreign) == 0) ++foreign;
  ASSERT_LT(foreign, 3u);
  v1::CreateVariableRequest request = CreateRequest("w", {12});
  *request.add_initial_values() =
      MakeSlice("w", foreign * 4, {1.0f, 2.0f, 3.0f, 4.0f});
  auto result = store.CreateVariable(request);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition)
      << result.status();
  EXPECT_THAT(result.status().message(), HasSubstr("shard 1"));
  EXPECT_EQ(store.Find("w"), nullptr);

  // Nothing was created, so a correct request still creates it.
  auto retry = store.CreateVariable(CreateRequest("w", {12}));
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_TRUE(*retry);
}

TEST(StoreCreateTest, BadInitialValuesAreInvalidArgument) {
  VariableStore store(AsyncOptions());
  struct Case {
    std::string what;
    v1::Slice slice;
  };
  v1::Slice short_data = MakeSlice("w", 0, {1, 2, 3, 4});
  short_data.set_data(short_data.data().substr(0, 15));
  v1::Slice mismatched = MakeSlice("w", 0, {1, 2, 3});
  mismatched.set_length(4);
  const std::vector<Case> cases = {
      {"NaN", MakeSlice("w", 0, {1, kNaN, 3, 4})},
      {"Inf", MakeSlice("w", 4, {1, 2, -kInf, 4})},
      {"partial block", MakeSlice("w", 0, {1, 2})},
      {"outside", MakeSlice("w", 12, {1, 2, 3, 4})},
      {"data not whole floats", short_data},
      {"data length != length", mismatched},
      {"other variable's name", MakeSlice("v", 0, {1, 2, 3, 4})},
  };
  for (const Case& c : cases) {
    v1::CreateVariableRequest request = CreateRequest("w", {10});
    *request.add_initial_values() = c.slice;
    auto result = store.CreateVariable(request);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument)
        << c.what << ": " << result.status();
    EXPECT_EQ(store.Find("w"), nullptr) << c.what;
  }

  v1::CreateVariableRequest twice = CreateRequest("w", {10});
  *twice.add_initial_values() = MakeSlice("w", 4, {1, 2, 3, 4});
  *twice.add_initial_values() = MakeSlice("w", 4, {5, 6, 7, 8});
  auto result = store.CreateVariable(twice);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument)
      << result.status();
  EXPECT_EQ(store.Find("w"), nullptr);
}

// ------------------------------------------------------------------ pull

TEST(StorePullTest, RangesInsideBlocks) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "w", Iota(10));  // blocks [0,4) [4,8) [8,10)
  v1::PullRequest request;
  *request.add_slices() = RangeSlice("w", 1, 2);
  *request.add_slices() = RangeSlice("w", 4, 4);
  *request.add_slices() = RangeSlice("w", 3, 1);
  *request.add_slices() = RangeSlice("w", 8, 2);
  v1::PullResponse response;
  ASSERT_TRUE(store.Pull(request, &response).ok());
  ASSERT_EQ(response.values_size(), 4);
  const std::vector<std::vector<float>> expected = {
      {2, 3}, {5, 6, 7, 8}, {4}, {9, 10}};
  for (int i = 0; i < 4; ++i) {
    const v1::Slice& slice = response.values(i);
    EXPECT_EQ(slice.variable(), "w");
    EXPECT_EQ(slice.offset(), request.slices(i).offset());
    EXPECT_EQ(slice.length(), request.slices(i).length());
    EXPECT_EQ(slice.dtype(), v1::FLOAT32);
    EXPECT_EQ(slice.version(), 0u);
    EXPECT_THAT(Decode(slice), ElementsAreArray(expected[i])) << i;
  }
}

TEST(StorePullTest, HalfPrecisionEncodings) {
  VariableStore store(AsyncOptions(0, 1, 8));
  // 1 + 2^-10 is exact in float16 and rounds to 1 in bfloat16.
  const std::vector<float> values = {1.5f, -2.25f, 0.375f, 1.0f + 0x1p-10f};
  CreateLocal(store, "w", values);
  for (auto [dtype, expected] :
       {std::pair{v1::BFLOAT16, std::vector<float>{1.5f, -2.25f, 0.375f, 1.0f}},
        std::pair{v1::FLOAT16, values}}) {
    v1::PullRequest request;
    request.set_dtype(dtype);
    *request.add_slices() = RangeSlice("w", 0, 4);
    v1::PullResponse response;
    ASSERT_TRUE(store.Pull(request, &response).ok());
    ASSERT_EQ(response.values_size(), 1);
    EXPECT_EQ(response.values(0).dtype(), dtype);
    EXPECT_EQ(response.values(0).data().size(), 8u);
    EXPECT_THAT(Decode(response.values(0)), ElementsAreArray(expected));
  }
  v1::PullRequest unknown;
  unknown.set_dtype(static_cast<v1::DType>(7));
  *unknown.add_slices() = RangeSlice("w", 0, 4);
  v1::PullResponse response;
  EXPECT_EQ(store.Pull(unknown, &response).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(StorePullTest, CrossingABlockBoundaryIsRefused) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "w", Iota(10));
  absl::Status status = PullRange(store, RangeSlice("w", 2, 4));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("block"));
}

TEST(StorePullTest, RangeOutsideTheVariableIsInvalidArgument) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "w", Iota(10));
  const std::vector<std::pair<uint64_t, uint64_t>> ranges = {
      {10, 1},
      {8, 3},
      {9, 0},
      {std::numeric_limits<uint64_t>::max(), 2},
      {1, std::numeric_limits<uint64_t>::max()},
  };
  for (auto [offset, length] : ranges) {
    v1::PullRequest request;
    *request.add_slices() = RangeSlice("w", 0, 1);
    *request.add_slices() = RangeSlice("w", offset, length);
    v1::PullResponse response;
    absl::Status status = store.Pull(request, &response);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument)
        << offset << "+" << length << ": " << status;
  }
}

TEST(StorePullTest, RangeOutsideIsCheckedBeforeOwnership) {
  // On every shard, a range past the end is INVALID_ARGUMENT, also where the
  // block it would fall in would belong to another shard.
  for (uint32_t shard = 0; shard < 3; ++shard) {
    VariableStore store(AsyncOptions(shard, 3));
    ASSERT_TRUE(store.CreateVariable(CreateRequest("w", {10})).ok());
    const PartitionPlan& plan = store.plan();
    // Blocks 3, 4, 5 do not exist; their would-be owners cover all shards.
    for (uint64_t k = 3; k < 6; ++k) {
      absl::Status status = PullRange(store, RangeSlice("w", k * 4, 2));
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument)
          << "shard " << shard << " block " << k << " (would be shard "
          << plan.ShardOf("w", k) << "): " << status;
    }
  }
}

TEST(StorePullTest, AnotherShardsBlockIsFailedPrecondition) {
  VariableStore store(AsyncOptions(1, 3));
  ASSERT_TRUE(store.CreateVariable(CreateRequest("w", {12})).ok());
  const PartitionPlan& plan = store.plan();
  int foreign_blocks = 0;
  for (uint64_t k = 0; k < 3; ++k) {
    absl::Status status = PullRange(store, RangeSlice("w", k * 4 + 1, 2));
    const uint32_t owner = plan.ShardOf("w", k);
    if (owner == 1) {
      EXPECT_TRUE(status.ok()) << status;
    } else {
      ++foreign_blocks;
      EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
      EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("shard ", owner)));
    }
  }
  EXPECT_EQ(foreign_blocks, 2);  // three blocks over three shards
}

TEST(StorePullTest, RepeatedOrOverlappingRangesAreRefused) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "w", Iota(12));
  CreateLocal(store, "v", Iota(4));
  const std::vector<std::vector<v1::Slice>> refused = {
      {RangeSlice("w", 0, 4), RangeSlice("w", 0, 4)},
      {RangeSlice("w", 4, 3), RangeSlice("v", 0, 4), RangeSlice("w", 6, 2)},
      {RangeSlice("w", 9, 1), RangeSlice("w", 8, 4)},
  };
  for (const auto& slices : refused) {
    v1::PullRequest request;
    for (const v1::Slice& slice : slices) *request.add_slices() = slice;
    v1::PullResponse response;
    absl::Status status = store.Pull(request, &response);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(status.message(), HasSubstr("more than once"));
    EXPECT_EQ(response.values_size(), 0);
  }
  // Touching ranges, and the same offsets of another variable, are fine.
  v1::PullRequest request;
  *request.add_slices() = RangeSlice("w", 4, 2);
  *request.add_slices() = RangeSlice("w", 6, 2);
  *request.add_slices() = RangeSlice("v", 0, 4);
  *request.add_slices() = RangeSlice("w", 0, 4);
  v1::PullResponse response;
  ASSERT_TRUE(store.Pull(request, &response).ok());
  EXPECT_EQ(response.values_size(), 4);
}

// One small request naming a block thousands of times once built an answer
// of gigabytes before any size check; now it is refused before any of it.
TEST(StorePullTest, AnswersLargerThanAMessageAreRefusedBeforeBuilding) {
  StoreOptions options = AsyncOptions(0, 1, 1024);
  options.max_answer_bytes = 64 << 10;
  VariableStore store(options);
  CreateLocal(store, "w", std::vector<float>(1 << 16, 1.0f));
  v1::PullRequest request;
  for (uint64_t k = 0; k < 16; ++k) {
    *request.add_slices() = RangeSlice("w", k * 1024, 1024);
  }
  v1::PullResponse response;
  absl::Status status = store.Pull(request, &response);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_THAT(status.message(), HasSubstr("max_message_mb"));
  EXPECT_EQ(response.values_size(), 0);
  // In bf16 it is half as large, and fits.
  request.set_dtype(v1::BFLOAT16);
  EXPECT_TRUE(store.Pull(request, &response).ok());
  // PushPull's answer is bounded the same way; a plain push is not.
  std::vector<v1::Slice> gradients;
  for (uint64_t k = 0; k < 16; ++k) {
    gradients.push_back(
        MakeSlice("w", k * 1024, std::vector<float>(1024, 0.0f)));
  }
  EXPECT_EQ(
      StartPush(store, PushRequest("w0", 1, gradients), true)->status.code(),
      absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(
      StartPush(store, PushRequest("w0", 1, gradients), false)->status.ok());
}

TEST(StorePullTest, UnknownVariableIsNotFound) {
  VariableStore store(AsyncOptions());
  absl::Status status = PullRange(store, RangeSlice("nope", 0, 1));
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(status.message(), HasSubstr("nope"));
}

// ------------------------------------------------------------ async push

TEST(StorePushTest, SgdSubtractsTheGradient) {
  VariableStore store(AsyncOptions());
  const std::vector<float> initial = Iota(10);
  CreateLocal(store, "w", initial);
  const std::vector<float> g = {0.5f, -1, 2, 3, 4, 5, 6, 7, -8, 9.25f};
  auto result = PushNow(store,
                        PushRequest("w0", 1,
                                    {MakeSlice("w", 0, {0.5f, -1, 2, 3}),
                                     MakeSlice("w", 4, {4, 5, 6, 7}),
                                     MakeSlice("w", 8, {-8, 9.25f})}),
                        /*with_values=*/false);
  ASSERT_TRUE(result->status.ok()) << result->status;
  EXPECT_EQ(result->calls, 1);
  EXPECT_EQ(result->answer.values_size(), 0);  // Push answers nothing
  Snapshot snapshot = PullAll(store, "w");
  EXPECT_THAT(snapshot.values, ElementsAreArray(Minus(initial, g)));
  EXPECT_THAT(snapshot.versions, ElementsAreArray({1u, 1u, 1u}));
}

TEST(StorePushTest, PushPullAnswersTheValuesAfterThePush) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "a", Iota(10));
  CreateLocal(store, "b", Iota(3, 50.0f));
  // Touch block 1 of "a" first, so versions differ between blocks.
  ASSERT_TRUE(
      PushNow(store, PushRequest("w0", 1, {MakeSlice("a", 4, {1, 1, 1, 1})}))
          ->status.ok());

  v1::PushRequest request = PushRequest(
      "w0", 2,
      {MakeSlice("b", 0, {1, 2, 3}), MakeSlice("a", 4, {1, 2, 3, 4}),
       MakeSlice("a", 0, {-1, -1, -1, -1})});
  request.set_pull_dtype(v1::FLOAT32);
  auto result = PushNow(store, request);
  ASSERT_TRUE(result->status.ok()) << result->status;
  ASSERT_EQ(result->answer.values_size(), 3);
  struct Expected {
    std::string variable;
    uint64_t offset;
    std::vector<float> values;
    uint64_t version;
  };
  const std::vector<Expected> expected = {
      {"b", 0, {49, 49, 49}, 1},
      {"a", 4, {3, 3, 3, 3}, 2},  // 5..8 - 1 - (1, 2, 3, 4)
      {"a", 0, {2, 3, 4, 5}, 1},
  };
  for (int i = 0; i < 3; ++i) {
    const v1::Slice& slice = result->answer.values(i);
    EXPECT_EQ(slice.variable(), expected[i].variable) << i;
    EXPECT_EQ(slice.offset(), expected[i].offset) << i;
    EXPECT_EQ(slice.length(), expected[i].values.size()) << i;
    EXPECT_EQ(slice.version(), expected[i].version) << i;
    EXPECT_THAT(Decode(slice), ElementsAreArray(expected[i].values)) << i;
  }
}

TEST(StorePushTest, PushPullAnswersInTheRequestedDtype) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "w", {2, 2, 2, 2});
  v1::PushRequest request =
      PushRequest("w0", 1, {MakeSlice("w", 0, {0.5f, 1.0f, -0x1p-10f, 0.0f})});
  request.set_pull_dtype(v1::BFLOAT16);
  auto result = PushNow(store, request);
  ASSERT_TRUE(result->status.ok()) << result->status;
  ASSERT_EQ(result->answer.values_size(), 1);
  EXPECT_EQ(result->answer.values(0).dtype(), v1::BFLOAT16);
  EXPECT_EQ(result->answer.values(0).data().size(), 8u);
  // 2 + 2^-10 is not a bfloat16; it rounds to 2. The store keeps float32.
  EXPECT_THAT(Decode(result->answer.values(0)),
              ElementsAreArray({1.5f, 1.0f, 2.0f, 2.0f}));
  EXPECT_THAT(PullAll(store, "w").values,
              ElementsAreArray({1.5f, 1.0f, 2.0f + 0x1p-10f, 2.0f}));
}

TEST(StorePushTest, GradientsInHalfPrecisionAreWidened) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "w", {8, 8, 8, 8});
  for (v1::DType dtype : {v1::BFLOAT16, v1::FLOAT16}) {
    v1::Slice slice = MakeSlice("w", 0, {});
    slice.set_length(4);
    slice.set_dtype(dtype);
    slice.set_data(Encode({1, -2, 0.5f, 3}, dtype));
    ASSERT_TRUE(PushNow(store, PushRequest("", 0, {slice}))->status.ok());
  }
  EXPECT_THAT(PullAll(store, "w").values,
              ElementsAreArray({6.0f, 12.0f, 7.0f, 2.0f}));
}

// Blocks larger than the update's chunk: a 16-bit gradient is widened
// chunk by chunk during the update, and PushPull's answer is written chunk by
// chunk over the request's own gradient bytes (handed over as the service
// does). Every value lands where it belongs, also when helper threads
// (update_threads 2) share a block's chunks out.
TEST(StorePushTest, LargeHalfPrecisionBlocksAreUpdatedChunkByChunk) {
  const size_t block = 2 * optimizer::kParallelValues + 123;
  for (auto [dtype, answered, threads] : {std::tuple{v1::BFLOAT16, false, 1},
                                          {v1::BFLOAT16, true, 1},
                                          {v1::FLOAT16, false, 1},
                                          {v1::FLOAT16, true, 1},
                                          {v1::BFLOAT16, true, 2},
                                          {v1::FLOAT16, true, 2},
                                          {v1::FLOAT32, true, 2}}) {
    StoreOptions options = AsyncOptions(0, 1, block);
    options.update_threads = threads;
    VariableStore store(options);
    const std::vector<float> initial = Iota(2 * block);
    CreateLocal(store, "w", initial);
    std::vector<float> g(2 * block);
    for (size_t i = 0; i < g.size(); ++i) {
      g[i] = std::sin(0.01f * static_cast<float>(i));
    }
    v1::PushRequest request = PushRequest("w0", 1, {});
    request.set_pull_dtype(dtype);
    for (size_t k = 0; k < 2; ++k) {
      v1::Slice* slice = request.add_gradients();
      slice->set_variable("w");
      slice->set_offset(k * block);
      slice->set_length(block);
      slice->set_dtype(dtype);
      slice->set_data(Encode(std::vector<float>(g.begin() + k * block,
                                                g.begin() + (k + 1) * block),
                             dtype));
    }
    std::vector<float> widened(g.size());
    for (size_t k = 0; k < 2; ++k) {
      ASSERT_TRUE(
          DecodeValues(dtype, request.gradients(k).data(),
                       std::span<float>(widened).subspan(k * block, block))
              .ok());
    }
    const std::vector<float> expected = Minus(initial, widened);

    auto result = std::make_shared<PushResult>();
    absl::StatusOr<PreparedPush> prepared =
        store.PreparePush(request, answered);
    ASSERT_TRUE(prepared.ok()) << prepared.status();
    auto completion = std::make_shared<PushCompletion>(
        2, answered, dtype, [result](absl::Status status, v1::PullResponse a) {
          result->status = std::move(status);
          result->answer = std::move(a);
          result->done.Notify();
        });
    if (answered) {
      for (int k = 0; k < 2; ++k) {
        completion->ReuseBuffer(
            k, std::move(*request.mutable_gradients(k)->mutable_data()));
      }
    }
    store.ApplyPush(*std::move(prepared), std::move(completion));
    ASSERT_TRUE(result->done.HasBeenNotified());
    ASSERT_TRUE(result->status.ok()) << result->status;
    EXPECT_EQ(PullAll(store, "w").values, expected)
        << v1::DType_Name(dtype) << " answered " << answered << " threads "
        << threads;
    if (answered) {
      ASSERT_EQ(result->answer.values_size(), 2);
      for (size_t k = 0; k < 2; ++k) {
        EXPECT_EQ(result->answer.values(k).data(),
                  Encode(std::vector<float>(expected.begin() + k * block,
                                            expected.begin() + (k + 1) * block),
                         dtype))
            << v1::DType_Name(dtype) << " block " << k;
      }
    }
    // GetStats counts the two blocks' updates as split for the helpers
    // (each into at least 3 tasks), and only with a helper.
    const v1::UpdateHelperStats helpers = store.Stats().update_helpers();
    EXPECT_EQ(helpers.threads(), static_cast<uint32_t>(threads - 1));
    EXPECT_EQ(helpers.split_updates(), threads > 1 ? 2u : 0u);
    EXPECT_GE(helpers.tasks(), threads > 1 ? 6u : 0u);
    EXPECT_LE(helpers.helper_tasks(), helpers.tasks());
  }
}

TEST(StorePushTest, ConcurrentPushesLoseNoUpdate) {
  VariableStore store(AsyncOptions(0, 1, 5));
  const std::vector<float> initial = Iota(13);
  CreateLocal(store, "w", initial);
  constexpr int kThreads = 8;
  constexpr int kPushes = 200;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string worker = absl::StrCat("w", t);
      for (int i = 0; i < kPushes; ++i) {
        // Gradient (t + 1) on every value; each push touches every block.
        const float g = static_cast<float>(t + 1);
        auto result = PushNow(store,
                              PushRequest(worker, i + 1,
                                          {MakeSlice("w", 10, {g, g, g}),
                                           MakeSlice("w", 0, {g, g, g, g, g}),
                                           MakeSlice("w", 5, {g, g, g, g, g})}),
                              /*with_values=*/i % 2 == 0);
        if (!result->status.ok()) ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  const float total = kPushes * (kThreads * (kThreads + 1) / 2);
  std::vector<float> expected = initial;
  for (float& v : expected) v -= total;
  Snapshot snapshot = PullAll(store, "w");
  EXPECT_THAT(snapshot.values, ElementsAreArray(expected));
  const uint64_t pushes = kThreads * kPushes;
  EXPECT_THAT(snapshot.versions, ElementsAreArray({pushes, pushes, pushes}));
}

TEST(StorePushTest, PullNeverSeesAHalfAppliedBlock) {
  // A block of 64K values takes long enough to update that an unlocked read
  // would catch it half-way. Every value starts at 0 and every push subtracts
  // 1 everywhere, so a consistent read has every value == -version.
  constexpr uint64_t kBlock = 1 << 16;
  VariableStore store(AsyncOptions(0, 1, kBlock));
  ASSERT_TRUE(store.CreateVariable(CreateRequest("w", {kBlock})).ok());
  const v1::Slice ones = MakeSlice("w", 0, std::vector<float>(kBlock, 1.0f));
  constexpr int kPushes = 100;
  std::atomic<bool> pusher_done{false};
  std::thread pusher([&] {
    for (int i = 0; i < kPushes; ++i) {
      EXPECT_TRUE(
          PushNow(store, PushRequest("p", i + 1, {ones}), false)->status.ok());
    }
    pusher_done = true;
  });
  int torn = 0;
  int reads = 0;
  uint64_t last_version = 0;
  bool last_read = false;
  while (!last_read) {
    last_read = pusher_done.load();  // one more read after the last push
    v1::PullRequest request;
    *request.add_slices() = RangeSlice("w", 0, kBlock);
    v1::PullResponse response;
    ASSERT_TRUE(store.Pull(request, &response).ok());
    ++reads;
    const uint64_t version = response.values(0).version();
    EXPECT_GE(version, last_version);
    last_version = version;
    for (float v : Decode(response.values(0))) {
      if (v != -static_cast<float>(version)) {
        ++torn;
        break;
      }
    }
  }
  pusher.join();
  EXPECT_EQ(torn, 0) << "of " << reads << " reads";
  EXPECT_EQ(last_version, static_cast<uint64_t>(kPushes));
}

// --------------------------------------------------------- exactly-once

TEST(StoreExactlyOnceTest, RepeatedSeqIsAppliedOnceAndAnsweredAgain) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "w", {10, 10, 10, 10});
  const v1::PushRequest request =
      PushRequest("worker", 7, {MakeSlice("w", 0, {1, 2, 3, 4})});
  auto first = PushNow(store, request);
  ASSERT_TRUE(first->status.ok()) << first->status;
  auto repeat = PushNow(store, request);
  ASSERT_TRUE(repeat->status.ok()) << repeat->status;
  // The repeat answers the current values.
  ASSERT_EQ(repeat->answer.values_size(), 1);
  EXPECT_EQ(repeat->answer.values(0).version(), 1u);
  EXPECT_THAT(Decode(repeat->answer.values(0)), ElementsAreArray({9, 8, 7, 6}));

  const v1::Slice ones = MakeSlice("w", 0, {1, 1, 1, 1});
  auto push = [&](const std::string& worker, uint64_t seq) {
    auto result = PushNow(store, PushRequest(worker, seq, {ones}));
    EXPECT_TRUE(result->status.ok()) << result->status;
  };
  // A lower seq that was not applied yet (pushes may arrive out of order)
  // is applied, once.
  push("worker", 3);
  push("worker", 3);
  Snapshot snapshot = PullAll(store, "w");
  EXPECT_THAT(snapshot.values, ElementsAreArray({8, 7, 6, 5}));
  EXPECT_THAT(snapshot.versions, ElementsAreArray({2u}));

  // Another worker with the same seq is a different push.
  push("other", 7);
  // And the next seq of the first worker is applied.
  push("worker", 8);
  snapshot = PullAll(store, "w");
  EXPECT_THAT(snapshot.values, ElementsAreArray({6, 5, 4, 3}));
  EXPECT_THAT(snapshot.versions, ElementsAreArray({4u}));

  // A seq further below the highest than the window reaches counts as
  // applied: it is acknowledged, not applied.
  push("worker", 8 + SeqWindow::kWidth + 10);
  push("worker", 9);
  auto old = PushNow(store, PushRequest("worker", 9, {ones}));
  ASSERT_TRUE(old->status.ok());
  EXPECT_THAT(Decode(old->answer.values(0)), ElementsAreArray({5, 4, 3, 2}));
  snapshot = PullAll(store, "w");
  EXPECT_THAT(snapshot.values, ElementsAreArray({5, 4, 3, 2}));
  EXPECT_THAT(snapshot.versions, ElementsAreArray({5u}));
}

TEST(StoreExactlyOnceTest, RepeatsAreTrackedPerBlock) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "w", Iota(8, 10.0f));  // blocks [0,4) [4,8)
  // seq 1 reaches block 0 only; its retry covers both blocks: block 0
  // acknowledges it again, block 1 applies it.
  ASSERT_TRUE(
      PushNow(store, PushRequest("w0", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}))
          ->status.ok());
  auto retry = PushNow(store, PushRequest("w0", 1,
                                          {MakeSlice("w", 0, {1, 1, 1, 1}),
                                           MakeSlice("w", 4, {1, 1, 1, 1})}));
  ASSERT_TRUE(retry->status.ok()) << retry->status;
  ASSERT_EQ(retry->answer.values_size(), 2);
  EXPECT_EQ(retry->answer.values(0).version(), 1u);
  EXPECT_EQ(retry->answer.values(1).version(), 1u);
  Snapshot snapshot = PullAll(store, "w");
  EXPECT_THAT(snapshot.values, ElementsAreArray(Iota(8, 9.0f)));
  EXPECT_THAT(snapshot.versions, ElementsAreArray({1u, 1u}));
}

TEST(StoreExactlyOnceTest, SeqZeroIsNeverDeduplicated) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "w", {10, 10, 10, 10});
  const v1::PushRequest request =
      PushRequest("worker", 0, {MakeSlice("w", 0, {1, 2, 3, 4})});
  ASSERT_TRUE(PushNow(store, request)->status.ok());
  ASSERT_TRUE(PushNow(store, request)->status.ok());
  EXPECT_THAT(PullAll(store, "w").values, ElementsAreArray({8, 6, 4, 2}));
}

// ------------------------------------------------------------ sessions

// A worker restarted with its seqs counting from 1 again opens a newer
// session: its pushes are applied, not taken for repeats of the old ones.
TEST(StoreSessionTest, ARestartedWorkerWhoseSeqsWentBackIsApplied) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "w", {0, 0, 0, 0});
  auto first = store.OpenSession("trainer", 0);
  ASSERT_TRUE(first.ok()) << first.status();
  for (uint64_t seq = 1; seq <= 5; ++seq) {
    ASSERT_TRUE(PushNow(store, PushRequest("trainer", seq,
                                           {MakeSlice("w", 0, {1, 1, 1, 1})}, 0,
                                           first->epoch))
                    ->status.ok());
  }
  auto second = store.OpenSession("trainer", 0);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_GT(second->epoch, first->epoch);
  for (uint64_t seq = 1; seq <= 3; ++seq) {
    ASSERT_TRUE(PushNow(store, PushRequest("trainer", seq,
                                           {MakeSlice("w", 0, {1, 1, 1, 1})}, 0,
                                           second->epoch))
                    ->status.ok());
  }
  EXPECT_THAT(PullAll(store, "w").values, ElementsAreArray({-8, -8, -8, -8}));
  // A retry within the new session is still applied once.
  ASSERT_TRUE(PushNow(store, PushRequest("trainer", 3,
                                         {MakeSlice("w", 0, {1, 1, 1, 1})}, 0,
                                         second->epoch))
                  ->status.ok());
  EXPECT_THAT(PullAll(store, "w").values, ElementsAreArray({-8, -8, -8, -8}));
}

// The old process's pushes after the new session opened are refused, never
// acknowledged: it learns it was replaced.
TEST(StoreSessionTest, AnOlderSessionIsFenced) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "w", {0, 0, 0, 0});
  const uint64_t old_epoch = store.OpenSession("trainer", 0)->epoch;
  const uint64_t new_epoch = store.OpenSession("trainer", 0)->epoch;
  auto fenced = PushNow(
      store, PushRequest("trainer", 7, {MakeSlice("w", 0, {1, 1, 1, 1})}, 0,
                         old_epoch));
  EXPECT_EQ(fenced->status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(fenced->status.message(), HasSubstr("fenced"));
  // Reopening with the old epoch is refused too; the current one is fine.
  EXPECT_EQ(store.OpenSession("trainer", old_epoch).status().code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(store.OpenSession("trainer", new_epoch)->epoch, new_epoch);
  EXPECT_THAT(PullAll(store, "w").values, ElementsAreArray({0, 0, 0, 0}));
}

// A shard that did not see the session open (it was away) takes the epoch
// from the push; a block that took a newer epoch fences an older push that
// passed the shard's check before the reopen.
TEST(StoreSessionTest, APushCarriesANewerEpochToTheShard) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "w", {0, 0, 0, 0});
  ASSERT_TRUE(
      PushNow(store, PushRequest("trainer", 1,
                                 {MakeSlice("w", 0, {1, 1, 1, 1})}, 0, 100))
          ->status.ok());
  auto reopened = store.OpenSession("trainer", 0);
  EXPECT_GT(reopened->epoch, 100u);
  EXPECT_EQ(
      PushNow(store, PushRequest("trainer", 2,
                                 {MakeSlice("w", 0, {1, 1, 1, 1})}, 0, 100))
          ->status.code(),
      absl::StatusCode::kFailedPrecondition);
}

// One push with seq 2^64-1 once made every later seq of the worker look
// like a repeat, acknowledged and dropped.
TEST(StoreSessionTest, ASeqFarAheadIsRefusedAndSilencesNoOne) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "w", {0, 0, 0, 0});
  const uint64_t epoch = store.OpenSession("trainer", 0)->epoch;
  auto far =
      PushNow(store, PushRequest("trainer", UINT64_MAX,
                                 {MakeSlice("w", 0, {1, 1, 1, 1})}, 0, epoch));
  EXPECT_EQ(far->status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(far->status.message(), HasSubstr("seqs count from 1"));
  for (uint64_t seq = 1; seq <= 2; ++seq) {
    ASSERT_TRUE(
        PushNow(store, PushRequest("trainer", seq,
                                   {MakeSlice("w", 0, {1, 1, 1, 1})}, 0, epoch))
            ->status.ok());
  }
  EXPECT_THAT(PullAll(store, "w").values, ElementsAreArray({-2, -2, -2, -2}));
}

TEST(StoreSessionTest, ExactlyOnceNeedsASessionAndEpochsComeFromNow) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "w", {0, 0, 0, 0});
  auto no_session = PushNow(
      store, PushRequest("trainer", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}, 0,
                         /*epoch=*/0));
  EXPECT_EQ(no_session->status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_session->status.message(), HasSubstr("OpenSession"));
  // seq 0 opts out of exactly-once and needs none.
  EXPECT_TRUE(
      PushNow(store, PushRequest("trainer", 0,
                                 {MakeSlice("w", 0, {1, 1, 1, 1})}, 0, 0))
          ->status.ok());
  // An epoch picked by a shard is at least its clock in microseconds; one
  // far past it (it would fence the worker's real sessions) is refused.
  const uint64_t now = static_cast<uint64_t>(absl::ToUnixMicros(absl::Now()));
  EXPECT_GE(store.OpenSession("a", 0)->epoch, now);
  EXPECT_EQ(store.OpenSession("b", now * 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      PushNow(store, PushRequest("c", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}, 0,
                                 UINT64_MAX))
          ->status.code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.OpenSession("", 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(StoreSessionTest, WorkerIdsPastTheLimitAreRefused) {
  StoreOptions options = AsyncOptions();
  options.max_workers = 2;
  VariableStore store(options);
  CreateLocal(store, "w", {0, 0, 0, 0});
  ASSERT_TRUE(store.OpenSession("a", 0).ok());
  ASSERT_TRUE(
      PushNow(store, PushRequest("b", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}))
          ->status.ok());
  EXPECT_EQ(store.OpenSession("c", 0).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(
      PushNow(store, PushRequest("d", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}))
          ->status.code(),
      absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(store.OpenSession("a", 0).ok());  // known ones go on
}

TEST(StoreExactlyOnceTest, RefusedPushLeavesItsSeqFree) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "w", {10, 10, 10, 10});
  auto refused = PushNow(
      store, PushRequest("worker", 1, {MakeSlice("w", 0, {1, kNaN, 3, 4})}));
  EXPECT_EQ(refused->status.code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(PushNow(store, PushRequest("worker", 1,
                                         {MakeSlice("w", 0, {1, 2, 3, 4})}))
                  ->status.ok());
  EXPECT_THAT(PullAll(store, "w").values, ElementsAreArray({9, 8, 7, 6}));
}

// ------------------------------------------------------------- bad push

// Pushes `request` and expects it refused with `code` and nothing changed.
void ExpectRefused(VariableStore& store, const v1::PushRequest& request,
                   absl::StatusCode code, const std::string& what) {
  std::vector<Snapshot> before;
  for (const std::string& name : store.VariableNames()) {
    before.push_back(PullAll(store, name));
  }
  auto result = PushNow(store, request);
  EXPECT_EQ(result->status.code(), code) << what << ": " << result->status;
  EXPECT_FALSE(result->status.message().empty()) << what;
  EXPECT_EQ(result->answer.values_size(), 0) << what;
  std::vector<std::string> names = store.VariableNames();
  ASSERT_EQ(names.size(), before.size());
  for (size_t i = 0; i < names.size(); ++i) {
    Snapshot after = PullAll(store, names[i]);
    EXPECT_THAT(after.values, ElementsAreArray(before[i].values))
        << what << ": " << names[i] << " changed";
    EXPECT_THAT(after.versions, ElementsAreArray(before[i].versions))
        << what << ": " << names[i] << " changed";
  }
}

TEST(StoreBadPushTest, RefusedPushesChangeNothing) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "w", Iota(10));
  CreateLocal(store, "v", Iota(4));
  const v1::Slice good0 = MakeSlice("w", 0, {1, 1, 1, 1});
  const v1::Slice good_v = MakeSlice("v", 0, {1, 1, 1, 1});

  v1::Slice short_data = MakeSlice("w", 4, {1, 2, 3, 4});
  short_data.set_data(short_data.data().substr(0, 13));
  v1::Slice mismatched = MakeSlice("w", 4, {1, 2, 3});
  mismatched.set_length(4);
  v1::Slice long_data = MakeSlice("w", 4, {1, 2, 3, 4, 5});
  long_data.set_length(4);
  v1::Slice bad_dtype = MakeSlice("w", 4, {1, 2, 3, 4});
  bad_dtype.set_dtype(static_cast<v1::DType>(9));

  struct Case {
    std::string what;
    v1::Slice bad;
    absl::StatusCode code;
  };
  const std::vector<Case> cases = {
      {"NaN", MakeSlice("w", 4, {1, kNaN, 3, 4}),
       absl::StatusCode::kInvalidArgument},
      {"+Inf", MakeSlice("w", 8, {kInf, 1}),
       absl::StatusCode::kInvalidArgument},
      {"-Inf", MakeSlice("w", 4, {1, 2, 3, -kInf}),
       absl::StatusCode::kInvalidArgument},
      {"data not whole floats", short_data, absl::StatusCode::kInvalidArgument},
      {"data shorter than length", mismatched,
       absl::StatusCode::kInvalidArgument},
      {"data longer than length", long_data,
       absl::StatusCode::kInvalidArgument},
      {"unknown dtype", bad_dtype, absl::StatusCode::kInvalidArgument},
      {"not a whole block", MakeSlice("w", 4, {1, 2}),
       absl::StatusCode::kInvalidArgument},
      {"not block aligned", MakeSlice("w", 2, {1, 2, 3, 4}),
       absl::StatusCode::kInvalidArgument},
      {"outside", MakeSlice("w", 12, {1, 2, 3, 4}),
       absl::StatusCode::kInvalidArgument},
      {"past the end", MakeSlice("w", 8, {1, 2, 3, 4}),
       absl::StatusCode::kInvalidArgument},
      {"block twice", MakeSlice("w", 0, {2, 2, 2, 2}),
       absl::StatusCode::kInvalidArgument},
      {"unknown variable", MakeSlice("nope", 0, {1, 2, 3, 4}),
       absl::StatusCode::kNotFound},
  };
  for (const Case& c : cases) {
    // The bad slice comes last, after good slices of two variables.
    ExpectRefused(store, PushRequest("w0", 1, {good_v, good0, c.bad}), c.code,
                  c.what);
    // And first.
    ExpectRefused(store, PushRequest("w0", 1, {c.bad, good_v, good0}), c.code,
                  c.what + " (first)");
  }
  v1::PushRequest bad_pull_dtype = PushRequest("w0", 1, {good0});
  bad_pull_dtype.set_pull_dtype(static_cast<v1::DType>(5));
  ExpectRefused(store, bad_pull_dtype, absl::StatusCode::kInvalidArgument,
                "unknown pull_dtype");

  // After all that, the seq is still free and a good push applies.
  ASSERT_TRUE(PushNow(store, PushRequest("w0", 1, {good0}))->status.ok());
  EXPECT_THAT(PullAll(store, "w").values,
              ElementsAreArray({0, 1, 2, 3, 5, 6, 7, 8, 9, 10}));
}

TEST(StoreBadPushTest, AnotherShardsBlockIsFailedPrecondition) {
  VariableStore store(AsyncOptions(0, 2));
  ASSERT_TRUE(store.CreateVariable(CreateRequest("w", {16})).ok());
  const PartitionPlan& plan = store.plan();
  uint64_t own = 0, foreign = 0;
  while (plan.ShardOf("w", own) != 0) ++own;
  while (plan.ShardOf("w", foreign) == 0) ++foreign;
  ExpectRefused(store,
                PushRequest("w0", 1,
                            {MakeSlice("w", own * 4, {1, 1, 1, 1}),
                             MakeSlice("w", foreign * 4, {1, 1, 1, 1})}),
                absl::StatusCode::kFailedPrecondition, "foreign block");
  auto result = PushNow(
      store, PushRequest("w0", 1, {MakeSlice("w", foreign * 4, {1, 1, 1, 1})}));
  EXPECT_THAT(result->status.message(), HasSubstr("shard 1"));
  // A gradient outside the variable is INVALID_ARGUMENT, whoever would own
  // the block it falls in.
  for (uint64_t k = 4; k < 6; ++k) {
    ExpectRefused(
        store, PushRequest("w0", 1, {MakeSlice("w", k * 4, {1, 1, 1, 1})}),
        absl::StatusCode::kInvalidArgument, absl::StrCat("outside, block ", k));
  }
}

// An optimizer change that lands while a push is being applied cannot make
// it apply to some blocks and be refused for others.
TEST(StoreBadPushTest, APushIsAllOrNothingWhileTheRuleChanges) {
  VariableStore store(AsyncOptions(0, 1, 4, "sgd {} learning_rate: 0.001"));
  CreateLocal(store, "w", std::vector<float>(16, 1.0f));  // four blocks
  std::atomic<bool> stop = false;
  std::thread flipper([&] {
    // Eve refuses a push without a loss; SGD takes it.
    for (int i = 0; !stop.load(); ++i) {
      ASSERT_TRUE(
          store.SetOptimizer("", Optimizer(i % 2 ? "eve {}" : "sgd {}"), false)
              .ok());
    }
  });
  uint64_t applied = 0;
  for (int i = 0; i < 2000; ++i) {
    auto result = PushNow(store,
                          PushRequest("", 0,
                                      {MakeSlice("w", 0, {1, 1, 1, 1}),
                                       MakeSlice("w", 4, {1, 1, 1, 1}),
                                       MakeSlice("w", 8, {1, 1, 1, 1}),
                                       MakeSlice("w", 12, {1, 1, 1, 1})}),
                          /*with_values=*/false);
    if (result->status.ok()) {
      ++applied;
    } else {
      ASSERT_EQ(result->status.code(), absl::StatusCode::kInvalidArgument)
          << result->status;
    }
  }
  stop = true;
  flipper.join();
  const Snapshot after = PullAll(store, "w");
  EXPECT_THAT(after.versions, ::testing::Each(applied));
}

TEST(StoreBadPushTest, EveNeedsAUsableLoss) {
  VariableStore store(AsyncOptions(0, 1, 4, "eve { loss_floor: 0.5 }"));
  CreateLocal(store, "w", {1, 2, 3, 4});
  const v1::Slice g = MakeSlice("w", 0, {0.1f, 0.2f, 0.3f, 0.4f});

  ExpectRefused(store, PushRequest("w0", 1, {g}),
                absl::StatusCode::kInvalidArgument, "no loss");
  auto result = PushNow(store, PushRequest("w0", 1, {g}));
  EXPECT_THAT(result->status.message(), HasSubstr("loss"));
  for (double loss :
       {std::nan(""), std::numeric_limits<double>::infinity(), 0.25, 0.5}) {
    v1::PushRequest request = PushRequest("w0", 1, {g});
    request.set_loss(loss);
    ExpectRefused(store, request, absl::StatusCode::kInvalidArgument,
                  absl::StrCat("loss ", loss));
  }

  v1::PushRequest good = PushRequest("w0", 1, {g});
  good.set_loss(2.0);
  auto applied = PushNow(store, good);
  ASSERT_TRUE(applied->status.ok()) << applied->status;
  Snapshot snapshot = PullAll(store, "w");
  EXPECT_THAT(snapshot.versions, ElementsAreArray({1u}));
  for (int i = 0; i < 4; ++i) EXPECT_LT(snapshot.values[i], i + 1.0f) << i;

  // Once started, a loss at the floor is allowed; below it is not.
  v1::PushRequest at_floor = PushRequest("w0", 2, {g});
  at_floor.set_loss(0.5);
  EXPECT_TRUE(PushNow(store, at_floor)->status.ok());
  v1::PushRequest below = PushRequest("w0", 3, {g});
  below.set_loss(0.4);
  ExpectRefused(store, below, absl::StatusCode::kInvalidArgument,
                "below floor");
}

// ------------------------------------------------------------------ sync

// An update whose values overflow float32 (a diverged run) is applied as
// torch would apply it; the block then refuses pushes, saying why, and the
// shard counts it.
TEST(StorePushTest, ABlockWhoseValuesOverflowTakesNoMorePushes) {
  VariableStore store(AsyncOptions(0, 1, 4, "sgd {} learning_rate: 3e38"));
  CreateLocal(store, "w", std::vector<float>(8, 0.0f));
  auto first = PushNow(store, PushRequest("", 0,
                                          {MakeSlice("w", 0, {1, 2, 0, 0}),
                                           MakeSlice("w", 4, {0, 0, 0, 0})}));
  ASSERT_TRUE(first->status.ok()) << first->status;
  EXPECT_TRUE(std::isinf(Decode(first->answer.values(0))[1]));
  EXPECT_EQ(store.Stats().diverged_blocks(), 1u);

  auto next =
      PushNow(store, PushRequest("", 0, {MakeSlice("w", 0, {0, 0, 0, 0})}));
  EXPECT_EQ(next->status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(next->status.message(),
              AllOf(HasSubstr("block 0 of 'w'"), HasSubstr("not finite")));
  // The other block trains on, and both can still be read.
  EXPECT_TRUE(
      PushNow(store, PushRequest("", 0, {MakeSlice("w", 4, {1, 1, 1, 1})}))
          ->status.ok());
  const Snapshot snapshot = PullAll(store, "w");
  EXPECT_THAT(snapshot.versions, ElementsAreArray({1u, 2u}));
  // A push naming both blocks is refused whole.
  auto both = PushNow(store, PushRequest("", 0,
                                         {MakeSlice("w", 4, {0, 0, 0, 0}),
                                          MakeSlice("w", 0, {0, 0, 0, 0})}));
  EXPECT_EQ(both->status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(PullAll(store, "w").versions, ElementsAreArray({1u, 2u}));
}

TEST(StoreSyncTest, QuorumOfAllAppliesTheMeanOnce) {
  VariableStore store(SyncOptions(3, 3));
  const std::vector<float> initial = Iota(6);  // blocks [0,4) [4,6)
  CreateLocal(store, "w", initial);
  const std::vector<std::vector<float>> g = {
      {1, 2, 3, 4, 5, 6}, {4, 4, 4, 4, 4, 4}, {-2, 0, 7, 1, 1, 2}};
  auto push = [&](int worker, uint64_t step) {
    const std::vector<float>& gw = g[worker];
    return StartPush(
        store, PushRequest(absl::StrCat("w", worker), step + 1,
                           {MakeSlice("w", 0, {gw[0], gw[1], gw[2], gw[3]}),
                            MakeSlice("w", 4, {gw[4], gw[5]})},
                           step));
  };
  auto r0 = push(0, 0);
  auto r1 = push(1, 0);
  EXPECT_FALSE(r0->done.HasBeenNotified());
  EXPECT_FALSE(r1->done.HasBeenNotified());
  // Nothing applied while the step collects.
  Snapshot waiting = PullAll(store, "w");
  EXPECT_THAT(waiting.values, ElementsAreArray(initial));
  EXPECT_THAT(waiting.versions, ElementsAreArray({0u, 0u}));

  auto r2 = push(2, 0);
  std::vector<float> expected = initial;
  for (size_t i = 0; i < expected.size(); ++i) {
    const float mean = (g[0][i] + g[1][i] + g[2][i]) / 3.0f;
    expected[i] = initial[i] + (-1.0f) * mean;
  }
  for (auto* r : {&r0, &r1, &r2}) {
    ASSERT_TRUE((*r)->WaitFor());
    ASSERT_TRUE((*r)->status.ok()) << (*r)->status;
    EXPECT_EQ((*r)->calls, 1);
    ASSERT_EQ((*r)->answer.values_size(), 2);
    std::vector<float> answer = Decode((*r)->answer.values(0));
    std::vector<float> tail = Decode((*r)->answer.values(1));
    answer.insert(answer.end(), tail.begin(), tail.end());
    EXPECT_THAT(answer, ElementsAreArray(expected));
    EXPECT_EQ((*r)->answer.values(0).version(), 1u);
    EXPECT_EQ((*r)->answer.values(1).version(), 1u);
  }
  Snapshot snapshot = PullAll(store, "w");
  EXPECT_THAT(snapshot.values, ElementsAreArray(expected));
  EXPECT_THAT(snapshot.versions, ElementsAreArray({1u, 1u}));
}

TEST(StoreSyncTest, LateThirdPushOfAQuorumOfTwoIsAborted) {
  VariableStore store(SyncOptions(3, 2));
  CreateLocal(store, "w", {10, 10, 10, 10});
  auto r0 = StartPush(
      store, PushRequest("w0", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}, 0));
  EXPECT_FALSE(r0->done.HasBeenNotified());
  auto r1 = StartPush(
      store, PushRequest("w1", 1, {MakeSlice("w", 0, {3, 3, 3, 3})}, 0));
  ASSERT_TRUE(r0->WaitFor());
  ASSERT_TRUE(r1->WaitFor());
  ASSERT_TRUE(r0->status.ok()) << r0->status;
  ASSERT_TRUE(r1->status.ok()) << r1->status;
  EXPECT_THAT(Decode(r0->answer.values(0)), ElementsAreArray({8, 8, 8, 8}));

  ExpectRefused(store,
                PushRequest("w2", 1, {MakeSlice("w", 0, {5, 5, 5, 5})}, 0),
                absl::StatusCode::kAborted, "late push");
  auto late = PushNow(
      store, PushRequest("w2", 1, {MakeSlice("w", 0, {5, 5, 5, 5})}, 0));
  EXPECT_EQ(late->status.code(), absl::StatusCode::kAborted);
  EXPECT_THAT(late->status.message(), HasSubstr("current step is 1"));

  // The late worker catches up with step 1, using the seq the refusal left
  // free.
  auto r2 = StartPush(
      store, PushRequest("w2", 1, {MakeSlice("w", 0, {2, 2, 2, 2})}, 1));
  auto r0b = StartPush(
      store, PushRequest("w0", 2, {MakeSlice("w", 0, {4, 4, 4, 4})}, 1));
  ASSERT_TRUE(r2->WaitFor());
  ASSERT_TRUE(r0b->WaitFor());
  ASSERT_TRUE(r2->status.ok()) << r2->status;
  Snapshot snapshot = PullAll(store, "w");
  EXPECT_THAT(snapshot.values, ElementsAreArray({5, 5, 5, 5}));
  EXPECT_THAT(snapshot.versions, ElementsAreArray({2u}));
}

TEST(StoreSyncTest, PushForAStepAheadIsRefused) {
  VariableStore store(SyncOptions(2, 2));
  CreateLocal(store, "w", {10, 10, 10, 10});
  auto r0 = StartPush(
      store, PushRequest("w0", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}, 0));
  EXPECT_FALSE(r0->done.HasBeenNotified());
  auto ahead = PushNow(
      store, PushRequest("w1", 1, {MakeSlice("w", 0, {3, 3, 3, 3})}, 1));
  // Retryable: the client tries again, by when the block may be there.
  EXPECT_EQ(ahead->status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(ahead->status.message(), HasSubstr("step 0"));
  EXPECT_FALSE(r0->done.HasBeenNotified()) << "the step ahead completed it";
  EXPECT_THAT(PullAll(store, "w").values, ElementsAreArray({10, 10, 10, 10}));

  // The refused push left w1's seq free: its step-0 push is not a repeat.
  auto r1 = StartPush(
      store, PushRequest("w1", 1, {MakeSlice("w", 0, {3, 3, 3, 3})}, 0));
  ASSERT_TRUE(r0->WaitFor());
  ASSERT_TRUE(r1->WaitFor());
  EXPECT_TRUE(r0->status.ok()) << r0->status;
  EXPECT_TRUE(r1->status.ok()) << r1->status;
  EXPECT_THAT(PullAll(store, "w").values, ElementsAreArray({8, 8, 8, 8}));
}

// The first push once decided a block's step: one push with step 2^64-1
// wedged it for good (and the wedge was saved in checkpoints).
TEST(StoreSyncTest, OnePushFarAheadDoesNotWedgeABlock) {
  VariableStore store(SyncOptions(2, 2));
  CreateLocal(store, "w", {10, 10, 10, 10});
  auto wedge = PushNow(
      store, PushRequest("intruder", 1, {MakeSlice("w", 0, {5, 5, 5, 5})},
                         UINT64_MAX));
  EXPECT_EQ(wedge->status.code(), absl::StatusCode::kUnavailable);
  auto r0 = StartPush(
      store, PushRequest("w0", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}, 0));
  auto r1 = StartPush(
      store, PushRequest("w1", 1, {MakeSlice("w", 0, {3, 3, 3, 3})}, 0));
  ASSERT_TRUE(r0->WaitFor());
  ASSERT_TRUE(r1->WaitFor());
  EXPECT_TRUE(r0->status.ok()) << r0->status;
  EXPECT_THAT(PullAll(store, "w").values, ElementsAreArray({8, 8, 8, 8}));
  EXPECT_EQ(store.OpenSession("w0", 0)->sync_step, 1u);
}

// A shard restored from an older checkpoint (here: blocks at step 3, one
// of them with half of step 3 collected) while its workers are at step 7:
// once a quorum of workers is ahead, the block moves to their step.
TEST(StoreSyncTest, ABlockBehindItsWorkersCatchesUpWithAQuorum) {
  VariableStore store(SyncOptions(2, 2));
  CreateLocal(store, "w", {10, 10, 10, 10, 10, 10, 10, 10});
  for (uint64_t step = 0; step < 3; ++step) {
    auto a = StartPush(store, PushRequest("w0", step + 1,
                                          {MakeSlice("w", 0, {0, 0, 0, 0}),
                                           MakeSlice("w", 4, {0, 0, 0, 0})},
                                          step));
    auto b = StartPush(store, PushRequest("w1", step + 1,
                                          {MakeSlice("w", 0, {0, 0, 0, 0}),
                                           MakeSlice("w", 4, {0, 0, 0, 0})},
                                          step));
    ASSERT_TRUE(a->WaitFor() && b->WaitFor());
  }
  // w0 pushed step 3 of block 1 only, then the shard "restarted".
  auto half = StartPush(
      store, PushRequest("w0", 4, {MakeSlice("w", 4, {9, 9, 9, 9})}, 3));
  ASSERT_FALSE(half->done.HasBeenNotified());

  // The workers come back at step 7.
  const std::vector<v1::Slice> gradient = {MakeSlice("w", 0, {1, 1, 1, 1}),
                                           MakeSlice("w", 4, {1, 1, 1, 1})};
  auto first = PushNow(store, PushRequest("w0", 5, gradient, 7));
  EXPECT_EQ(first->status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(first->status.message(), HasSubstr("quorum"));
  auto second = StartPush(store, PushRequest("w1", 5, gradient, 7));
  // The abandoned half step is answered, not left hanging.
  ASSERT_TRUE(half->WaitFor());
  EXPECT_EQ(half->status.code(), absl::StatusCode::kAborted);
  // w0's retry completes step 7 with w1's.
  auto retry = StartPush(store, PushRequest("w0", 5, gradient, 7));
  ASSERT_TRUE(second->WaitFor() && retry->WaitFor());
  EXPECT_TRUE(second->status.ok()) << second->status;
  EXPECT_TRUE(retry->status.ok()) << retry->status;
  EXPECT_THAT(PullAll(store, "w").values,
              ElementsAreArray({9, 9, 9, 9, 9, 9, 9, 9}));
  EXPECT_EQ(store.OpenSession("w0", 0)->sync_step, 8u);
}

// Workers of a fresh cluster that count from 1 start it there.
TEST(StoreSyncTest, WorkersStartingAtAnyStepStartAFreshShard) {
  VariableStore store(SyncOptions(2, 2));
  CreateLocal(store, "w", {10, 10, 10, 10});
  auto first = PushNow(
      store, PushRequest("w0", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}, 1));
  EXPECT_EQ(first->status.code(), absl::StatusCode::kUnavailable);
  auto second = StartPush(
      store, PushRequest("w1", 1, {MakeSlice("w", 0, {3, 3, 3, 3})}, 1));
  auto retry = StartPush(
      store, PushRequest("w0", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}, 1));
  ASSERT_TRUE(second->WaitFor() && retry->WaitFor());
  EXPECT_TRUE(second->status.ok()) << second->status;
  EXPECT_THAT(PullAll(store, "w").values, ElementsAreArray({8, 8, 8, 8}));
}

TEST(StoreSyncTest, RepeatedSeqWhileWaitingIsAnsweredWhenTheStepCompletes) {
  VariableStore store(SyncOptions(3, 3));
  CreateLocal(store, "w", {10, 10, 10, 10});
  const v1::PushRequest w0 =
      PushRequest("w0", 1, {MakeSlice("w", 0, {3, 3, 3, 3})}, 0);
  auto first = StartPush(store, w0);
  auto repeat = StartPush(store, w0);
  EXPECT_FALSE(first->done.HasBeenNotified());
  EXPECT_FALSE(repeat->done.HasBeenNotified());
  auto r1 = StartPush(
      store, PushRequest("w1", 1, {MakeSlice("w", 0, {6, 6, 6, 6})}, 0));
  EXPECT_FALSE(repeat->done.HasBeenNotified())
      << "the repeat counted towards the quorum";
  auto r2 = StartPush(
      store, PushRequest("w2", 1, {MakeSlice("w", 0, {0, 0, 0, 0})}, 0));
  for (auto* r : {&first, &repeat, &r1, &r2}) {
    ASSERT_TRUE((*r)->WaitFor());
    ASSERT_TRUE((*r)->status.ok()) << (*r)->status;
    ASSERT_EQ((*r)->answer.values_size(), 1);
    EXPECT_THAT(Decode((*r)->answer.values(0)), ElementsAreArray({7, 7, 7, 7}));
    EXPECT_EQ((*r)->answer.values(0).version(), 1u);
  }
  // A repeat after the step answers the current values at once.
  auto late_repeat = PushNow(store, w0);
  ASSERT_TRUE(late_repeat->status.ok()) << late_repeat->status;
  EXPECT_THAT(Decode(late_repeat->answer.values(0)),
              ElementsAreArray({7, 7, 7, 7}));
  EXPECT_THAT(PullAll(store, "w").versions, ElementsAreArray({1u}));
}

TEST(StoreSyncTest, SecondPushOfAWorkerForTheSameStepDoesNotCount) {
  VariableStore store(SyncOptions(2, 2));
  CreateLocal(store, "w", {10, 10, 10, 10});
  auto r0 = StartPush(
      store, PushRequest("w0", 1, {MakeSlice("w", 0, {2, 2, 2, 2})}, 0));
  auto again = PushNow(
      store,
      PushRequest("w0", 2, {MakeSlice("w", 0, {100, 100, 100, 100})}, 0));
  EXPECT_FALSE(again->status.ok());
  EXPECT_FALSE(r0->done.HasBeenNotified()) << "one worker made the quorum";
  auto r1 = StartPush(
      store, PushRequest("w1", 1, {MakeSlice("w", 0, {4, 4, 4, 4})}, 0));
  ASSERT_TRUE(r0->WaitFor());
  ASSERT_TRUE(r1->WaitFor());
  EXPECT_THAT(PullAll(store, "w").values, ElementsAreArray({7, 7, 7, 7}));
}

TEST(StoreSyncTest, MultiBlockRefusalChangesNoBlock) {
  VariableStore store(SyncOptions(2, 2));
  CreateLocal(store, "w", Iota(8));  // blocks [0,4) [4,8)
  // Block 0 advances to step 1; block 1 stays at step 0.
  auto a = StartPush(
      store, PushRequest("w0", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}, 0));
  auto b = StartPush(
      store, PushRequest("w1", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}, 0));
  ASSERT_TRUE(a->WaitFor());
  ASSERT_TRUE(b->WaitFor());
  auto c = StartPush(
      store, PushRequest("w0", 2, {MakeSlice("w", 4, {1, 1, 1, 1})}, 0));
  EXPECT_FALSE(c->done.HasBeenNotified());
  // Step 0 for both blocks: fresh for block 1, stale for block 0.
  ExpectRefused(store,
                PushRequest("w1", 2,
                            {MakeSlice("w", 4, {5, 5, 5, 5}),
                             MakeSlice("w", 0, {5, 5, 5, 5})},
                            0),
                absl::StatusCode::kAborted, "stale on one block");
  EXPECT_FALSE(c->done.HasBeenNotified())
      << "the refused push counted towards block 1's quorum";
  auto d = StartPush(
      store, PushRequest("w1", 2, {MakeSlice("w", 4, {3, 3, 3, 3})}, 0));
  ASSERT_TRUE(c->WaitFor());
  ASSERT_TRUE(d->WaitFor());
  EXPECT_THAT(PullAll(store, "w").values,
              ElementsAreArray({0, 1, 2, 3, 3, 4, 5, 6}));
}

TEST(StoreSyncTest, GradientsAndLossesAreAveraged) {
  // Eve's step depends on the loss from its second step on: a sync store
  // must follow an async one that is fed the mean gradient and mean loss.
  StoreOptions options = SyncOptions(2, 2);
  options.default_optimizer = Optimizer("eve { loss_floor: 0.5 }");
  VariableStore sync_store(options);
  VariableStore reference(AsyncOptions(0, 1, 4, "eve { loss_floor: 0.5 }"));
  CreateLocal(sync_store, "w", {1, 2, 3, 4});
  CreateLocal(reference, "w", {1, 2, 3, 4});
  struct Step {
    std::vector<float> g0, g1;
    double loss0, loss1;
  };
  const std::vector<Step> steps = {
      {{1, 2, 3, 4}, {3, 2, 1, 0}, 2.0, 4.0},
      {{1, 1, 1, 1}, {0, 2, 4, 6}, 1.0, 2.0},
      {{-1, 0, 1, 2}, {1, 0, -1, -2}, 5.0, 0.75},
  };
  for (uint64_t s = 0; s < steps.size(); ++s) {
    const Step& step = steps[s];
    v1::PushRequest p0 =
        PushRequest("w0", s + 1, {MakeSlice("w", 0, step.g0)}, s);
    p0.set_loss(step.loss0);
    v1::PushRequest p1 =
        PushRequest("w1", s + 1, {MakeSlice("w", 0, step.g1)}, s);
    p1.set_loss(step.loss1);
    auto r0 = StartPush(sync_store, p0);
    auto r1 = StartPush(sync_store, p1);
    ASSERT_TRUE(r0->WaitFor());
    ASSERT_TRUE(r1->WaitFor());
    ASSERT_TRUE(r0->status.ok()) << r0->status;
    ASSERT_TRUE(r1->status.ok()) << r1->status;

    std::vector<float> mean(4);
    for (int i = 0; i < 4; ++i) mean[i] = (step.g0[i] + step.g1[i]) / 2.0f;
    v1::PushRequest averaged =
        PushRequest("ref", s + 1, {MakeSlice("w", 0, mean)});
    averaged.set_loss((step.loss0 + step.loss1) / 2);
    ASSERT_TRUE(PushNow(reference, averaged)->status.ok());

    Snapshot got = PullAll(sync_store, "w");
    EXPECT_THAT(got.values, ElementsAreArray(PullAll(reference, "w").values))
        << "step " << s;
    EXPECT_THAT(got.versions, ElementsAreArray({s + 1}));
  }
}

TEST(StoreSyncTest, WorkerIdIsRequired) {
  VariableStore store(SyncOptions(2, 2));
  CreateLocal(store, "w", {1, 1, 1, 1});
  ExpectRefused(store, PushRequest("", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}),
                absl::StatusCode::kInvalidArgument, "no worker id");
}

// ---------------------------------------------------------------- sync cut

// Pushes step `step` of "w" from workers w0 and w1, to the blocks starting
// at `offsets` (blocks of 4 values), gradient ones.
std::vector<std::shared_ptr<PushResult>> PushStep(
    VariableStore& store, uint64_t step, const std::vector<uint64_t>& offsets) {
  std::vector<std::shared_ptr<PushResult>> results;
  for (int worker = 0; worker < 2; ++worker) {
    std::vector<v1::Slice> gradients;
    for (uint64_t offset : offsets) {
      gradients.push_back(MakeSlice("w", offset, {1, 1, 1, 1}));
    }
    results.push_back(StartPush(store, PushRequest(absl::StrCat("w", worker),
                                                   step + 1, gradients, step)));
  }
  return results;
}

void ExpectDone(const std::vector<std::shared_ptr<PushResult>>& results,
                bool done) {
  for (const auto& result : results) {
    if (done) {
      ASSERT_TRUE(result->WaitFor());
      EXPECT_TRUE(result->status.ok()) << result->status;
    } else {
      EXPECT_FALSE(result->done.HasBeenNotified());
    }
  }
}

TEST(StoreSyncCutTest, HeldStepsWaitUntilReleasedAndACutAppliesThoseBelowIt) {
  VariableStore store(SyncOptions(2, 2));
  CreateLocal(store, "w", std::vector<float>(8, 0));  // blocks [0,4) [4,8)
  ExpectDone(PushStep(store, 0, {0, 4}), true);
  EXPECT_THAT(PullAll(store, "w").versions, ElementsAreArray({1u, 1u}));

  // Held from step 1: a complete step 1 waits, applied on release.
  EXPECT_EQ(store.HoldSteps(absl::Seconds(60)), 1u);
  auto step1 = PushStep(store, 1, {0, 4});
  ExpectDone(step1, false);
  EXPECT_THAT(PullAll(store, "w").versions, ElementsAreArray({1u, 1u}));
  // A cut before step 1 needs nothing more, and keeps step 1 waiting.
  ASSERT_TRUE(store.CutBefore(1, absl::Now() + absl::Seconds(5)).ok());
  ExpectDone(step1, false);
  EXPECT_THAT(PullAll(store, "w").versions, ElementsAreArray({1u, 1u}));
  store.ReleaseSteps();
  ExpectDone(step1, true);
  EXPECT_THAT(PullAll(store, "w").versions, ElementsAreArray({2u, 2u}));

  // Held from step 2, cut before step 3: block 0's step 2, held, is
  // applied by the cut; block 1 nobody pushes, so the cut fails naming it
  // and releases the hold (block 0's step 3 is applied at once).
  EXPECT_EQ(store.HoldSteps(absl::Seconds(60)), 2u);
  auto step2 = PushStep(store, 2, {0});
  ExpectDone(step2, false);
  absl::Status cut = store.CutBefore(3, absl::Now() + absl::Milliseconds(50));
  EXPECT_EQ(cut.code(), absl::StatusCode::kDeadlineExceeded) << cut;
  EXPECT_THAT(std::string(cut.message()),
              HasSubstr("block 1 of 'w' is at step 2"));
  ExpectDone(step2, true);
  ExpectDone(PushStep(store, 3, {0}), true);
  EXPECT_THAT(PullAll(store, "w").versions, ElementsAreArray({4u, 2u}));
}

TEST(StoreSyncCutTest, AHoldRunsOutByItself) {
  VariableStore store(SyncOptions(2, 2));
  CreateLocal(store, "w", std::vector<float>(4, 0));
  EXPECT_EQ(store.HoldSteps(absl::Milliseconds(20)), 0u);
  auto step0 = PushStep(store, 0, {0});
  ExpectDone(step0, false);
  store.Tick();  // not yet run out
  ExpectDone(step0, false);
  absl::SleepFor(absl::Milliseconds(30));
  store.Tick();
  ExpectDone(step0, true);
  EXPECT_THAT(PullAll(store, "w").versions, ElementsAreArray({1u}));
}

TEST(StoreSyncCutTest, AsyncStoresHoldNothingAndRefuseACut) {
  VariableStore store(AsyncOptions());
  CreateLocal(store, "w", std::vector<float>(4, 0));
  EXPECT_EQ(store.HoldSteps(absl::Seconds(60)), 0u);
  absl::Status cut = store.CutBefore(1, absl::Now() + absl::Seconds(1));
  EXPECT_EQ(cut.code(), absl::StatusCode::kFailedPrecondition) << cut;
  EXPECT_THAT(std::string(cut.message()), HasSubstr("--consistency=sync"));
  auto pushed =
      PushNow(store, PushRequest("w0", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}));
  EXPECT_TRUE(pushed->status.ok()) << pushed->status;
}

// A roll-back in place takes the shard to its part of a checkpoint whole:
// values and steps, the own optimizers it had, its tables (emptied and
// refilled), and nothing created after it.
TEST(StoreSyncCutTest, ARollBackInPlaceRestoresEntriesOverridesAndTables) {
  VariableStore store(SyncOptions(2, 2));
  CreateLocal(store, "w", std::vector<float>(8, 0));
  v1::CreateTableRequest table;
  table.set_name("t");
  table.set_dim(4);
  *table.mutable_optimizer() = Optimizer("adagrad {}");  // its own
  ASSERT_TRUE(store.CreateTable(table).ok());
  ExpectDone(PushStep(store, 0, {0, 4}), true);
  // The checkpoint: after step 0.
  storage::v1::ShardState state;
  std::vector<storage::v1::BlockRecord> records;
  ASSERT_TRUE(store
                  .Snapshot(
                      [&](const storage::v1::ShardState& shard) {
                        state = shard;
                        return absl::OkStatus();
                      },
                      [&](const storage::v1::BlockRecord& record) {
                        records.push_back(record);
                        return absl::OkStatus();
                      })
                  .ok());
  const Snapshot at_checkpoint = PullAll(store, "w");

  // After it: a step, an own optimizer, a variable and a table.
  ExpectDone(PushStep(store, 1, {0, 4}), true);
  ASSERT_TRUE(store.SetOptimizer("w", Optimizer("momentum {}"), false).ok());
  CreateLocal(store, "late", std::vector<float>(4, 1));
  v1::CreateTableRequest late_table = table;
  late_table.set_name("late_t");
  ASSERT_TRUE(store.SetOptimizer("t", Optimizer("rmsprop {}"), false).ok());
  ASSERT_TRUE(store.CreateTable(late_table).ok());
  ASSERT_NE(PullAll(store, "w").values, at_checkpoint.values);
  auto replay =
      [&](absl::FunctionRef<absl::Status(const storage::v1::BlockRecord&)> fn)
      -> absl::Status {
    for (const auto& record : records) PS_RETURN_IF_ERROR(fn(record));
    return absl::OkStatus();
  };

  // A checkpoint that names a variable the shard lacks is refused, and
  // changes nothing.
  storage::v1::ShardState other = state;
  other.mutable_variables(0)->set_name("missing");
  absl::Status refused = store.RollBack(other, 1, 1, replay);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_THAT(std::string(refused.message()), HasSubstr("'missing'"));
  EXPECT_NE(store.Find("late"), nullptr);
  EXPECT_EQ(store.GetOptimizer("w")->rule_case(),
            v1::OptimizerConfig::kMomentum);

  ASSERT_TRUE(store.RollBack(state, 1, 1, replay).ok());
  const Snapshot after = PullAll(store, "w");
  EXPECT_EQ(after.values, at_checkpoint.values);
  EXPECT_EQ(after.versions, at_checkpoint.versions);
  EXPECT_EQ(store.Find("late"), nullptr);
  EXPECT_EQ(store.FindTable("late_t"), nullptr);
  ASSERT_NE(store.FindTable("t"), nullptr);
  // "w" follows the default (SGD) again; the table has its own (Adagrad)
  // as at the checkpoint.
  EXPECT_EQ(store.GetOptimizer("w")->rule_case(),
            store.GetOptimizer("")->rule_case());
  ASSERT_TRUE(store.GetOptimizer("t").ok());
  EXPECT_EQ(store.GetOptimizer("t")->rule_case(),
            v1::OptimizerConfig::kAdagrad);
  // Old sessions' pushes are refused; the step after the cut goes on in
  // new ones.
  auto stale = PushStep(store, 1, {0, 4});
  for (const auto& result : stale) {
    ASSERT_TRUE(result->WaitFor());
    EXPECT_EQ(result->status.code(), absl::StatusCode::kFailedPrecondition)
        << result->status;
  }
}

// ---------------------------------------------------------------- state

// WriteState refuses what is not whole blocks of this shard, with finite
// values and slots the rule holds, and then changes nothing.
TEST(StoreStateTest, BadBlocksAreRefusedAndChangeNothing) {
  // Shard 0 of 2: of "w"'s blocks [0,4) [4,8) [8,10) it owns some.
  VariableStore store(AsyncOptions(0, 2, 4, "momentum {} learning_rate: 1"));
  CreateLocal(store, "w", Iota(10));
  PushNow(store, PushRequest("w0", 1, {}));
  v1::ReadStateResponse read;
  v1::ReadStateRequest ask;
  ask.set_variable("w");
  ASSERT_TRUE(store.ReadState(ask, &read).ok());
  ASSERT_FALSE(read.blocks().empty());
  EXPECT_FALSE(read.more());
  EXPECT_TRUE(read.optimizer().has_momentum());
  const v1::BlockState good = read.blocks(0);
  EXPECT_EQ(good.size(), 10u);
  const Snapshot before = PullAll(store, "w");

  auto refused = [&](v1::BlockState block, absl::StatusCode code,
                     const std::string& text) {
    v1::WriteStateRequest request;
    *request.add_blocks() = std::move(block);
    absl::StatusOr<uint64_t> written = store.WriteState(request);
    EXPECT_EQ(written.status().code(), code) << written.status();
    EXPECT_THAT(std::string(written.status().message()), HasSubstr(text));
  };
  v1::BlockState block = good;
  block.set_offset(good.offset() + 1);
  refused(block, absl::StatusCode::kInvalidArgument, "is not a block");
  {  // a good block, then the same again: neither is written
    v1::WriteStateRequest twice;
    block = good;
    block.set_step(100);
    *twice.add_blocks() = block;
    *twice.add_blocks() = block;
    absl::StatusOr<uint64_t> written = store.WriteState(twice);
    EXPECT_EQ(written.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(written.status().message()),
                HasSubstr("given twice"));
  }
  block = good;
  block.set_size(11);
  refused(block, absl::StatusCode::kInvalidArgument, "the variable has 10");
  block = good;
  block.mutable_values()->pop_back();
  refused(block, absl::StatusCode::kInvalidArgument, "bytes of values");
  block = good;
  block.set_square_avg(block.values());  // momentum holds no square_avg
  refused(block, absl::StatusCode::kInvalidArgument, "square_avg");
  block = good;
  block.mutable_momentum()->resize(4);
  refused(block, absl::StatusCode::kInvalidArgument, "slot momentum");
  block = good;
  block.set_eve_d(std::numeric_limits<double>::infinity());
  refused(block, absl::StatusCode::kInvalidArgument, "not finite");
  block = good;
  block.set_variable("t");
  refused(block, absl::StatusCode::kNotFound, "'t'");
  // A block of the other shard.
  for (uint64_t offset : {0, 4, 8}) {
    bool owned = false;
    for (const v1::BlockState& mine : read.blocks()) {
      owned = owned || mine.offset() == offset;
    }
    if (owned) continue;
    block = good;
    block.set_offset(offset);
    block.set_length(offset == 8 ? 2 : 4);
    block.mutable_values()->resize(block.length() * sizeof(float));
    block.clear_momentum();
    refused(block, absl::StatusCode::kFailedPrecondition, "belongs to shard 1");
  }
  const Snapshot after = PullAll(store, "w");
  EXPECT_EQ(after.values, before.values);
  EXPECT_EQ(after.versions, before.versions);

  // A good one: its step and values, and the slot left out starts afresh.
  v1::WriteStateRequest request;
  block = good;
  block.set_step(7);
  block.clear_momentum();
  block.set_values(std::string(good.values().size(), '\0'));
  *request.add_blocks() = block;
  request.set_validate_only(true);
  ASSERT_EQ(store.WriteState(request).value_or(99), 0u);
  EXPECT_EQ(PullAll(store, "w").values, before.values);
  request.set_validate_only(false);
  ASSERT_EQ(store.WriteState(request).value_or(99), 1u);
  v1::ReadStateResponse again;
  ASSERT_TRUE(store.ReadState(ask, &again).ok());
  EXPECT_EQ(again.blocks(0).step(), 7u);
  EXPECT_TRUE(again.blocks(0).momentum().empty());
  EXPECT_EQ(again.blocks(0).values(), block.values());
}

// ---------------------------------------------------------------- memory

// What the store's variables hold now: values, state slots and sync sums.
uint64_t HeldBytes(const VariableStore& store) {
  uint64_t floats = 0;
  for (const std::string& name : store.VariableNames()) {
    for (Block* block : store.Find(name)->SortedBlocks()) {
      absl::ReaderMutexLock lock(&block->mu);
      const optimizer::BlockOptimizerState& state = block->state;
      floats += block->values.size() + state.momentum.size() +
                state.square_avg.size() + state.grad_avg.size() +
                state.max_square_avg.size() + block->sync.sum.size();
    }
  }
  return floats * sizeof(float);
}

// Pushes a gradient of ones to every block of `name` (async store).
void PushOnes(VariableStore& store, const std::string& name, uint64_t seq) {
  auto variable = store.Find(name);
  ASSERT_NE(variable, nullptr);
  std::vector<v1::Slice> gradients;
  for (Block* block : variable->SortedBlocks()) {
    gradients.push_back(MakeSlice(name, block->range.offset,
                                  std::vector<float>(block->range.length, 1)));
  }
  v1::PushRequest request = PushRequest("w0", seq, gradients);
  request.set_loss(1.0);  // for Eve
  auto result = PushNow(store, request, /*with_values=*/false);
  ASSERT_TRUE(result->status.ok()) << result->status;
}

v1::CreateVariableRequest CreateWithOptimizer(const std::string& name,
                                              uint64_t size,
                                              const std::string& optimizer) {
  v1::CreateVariableRequest request = CreateRequest(name, {size});
  *request.mutable_optimizer() = Optimizer(optimizer);
  return request;
}

// The bookkeeping of "w" of SgdStoreWithRoomFor: 25 blocks, one worker's
// exactly-once record in each, and its session.
constexpr uint64_t kRoomBookkeeping =
    MemoryBudget::kAppliedRecordBytes * 25 + MemoryBudget::kSessionBytes;

// An SGD store whose limit holds `arrays` arrays of 100 values (and their
// bookkeeping), with "w" of 100 values, pushed once.
std::unique_ptr<VariableStore> SgdStoreWithRoomFor(int arrays) {
  StoreOptions options = AsyncOptions(0, 1, 4, "sgd {} learning_rate: 0.1");
  options.memory_limit_bytes = 100 * arrays * sizeof(float) +
                               25 * DenseVariable::kBookkeepingBytesPerBlock +
                               kRoomBookkeeping;
  auto store = std::make_unique<VariableStore>(options);
  EXPECT_TRUE(store->CreateVariable(CreateRequest("w", {100})).ok());
  PushOnes(*store, "w", 1);
  return store;
}

TEST(StoreMemoryTest, EachVariableIsChargedWhatItsRuleHolds) {
  VariableStore store(AsyncOptions());
  const std::pair<std::string, int> rules[] = {
      {"sgd {}", 1},
      {"momentum {}", 2},
      {"adagrad {}", 2},
      {"rmsprop {}", 2},
      {"rmsprop { centered: true momentum: 0.9 }", 4},
      {"adam {}", 3},
      {"adam { amsgrad: true }", 4},
      {"eve {}", 3},
  };
  uint64_t expected = 0;
  int i = 0;
  for (const auto& [rule, arrays] : rules) {
    SCOPED_TRACE(rule);
    const std::string name = absl::StrCat("v", i++);
    ASSERT_TRUE(store.CreateVariable(CreateWithOptimizer(name, 10, rule)).ok());
    expected += 10 * arrays * sizeof(float);
    EXPECT_EQ(store.StateBytes(), expected);
    PushOnes(store, name, i);
    EXPECT_EQ(HeldBytes(store), store.StateBytes());
  }
  EXPECT_EQ(store.Stats().state_bytes(), expected);
  EXPECT_EQ(store.Stats().memory_limit_bytes(), 0u);

  // Sync mode also holds the sum of a step's gradients.
  VariableStore sync(SyncOptions(2, 2));
  ASSERT_TRUE(sync.CreateVariable(CreateRequest("w", {10})).ok());
  EXPECT_EQ(sync.StateBytes(), 10 * 2 * sizeof(float));  // SGD: values + sum
}

TEST(StoreMemoryTest, VariablesPastTheLimitAreRefusedAndChangeNothing) {
  StoreOptions options = AsyncOptions(0, 1, 4, "adam {} learning_rate: 0.1");
  // 100 values of Adam, in 25 blocks.
  const uint64_t block_bytes = DenseVariable::kBookkeepingBytesPerBlock;
  options.memory_limit_bytes = 100 * 3 * sizeof(float) + 25 * block_bytes;
  VariableStore store(options);
  ASSERT_TRUE(store.CreateVariable(CreateRequest("a", {6, 10})).ok());
  EXPECT_EQ(store.StateBytes(), 60 * 3 * sizeof(float));

  const absl::StatusOr<bool> refused =
      store.CreateVariable(CreateRequest("b", {50}));
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted)
      << refused.status();
  EXPECT_THAT(refused.status().message(),
              AllOf(HasSubstr("'b'"), HasSubstr("adam"),
                    HasSubstr(absl::StrCat(600 + 13 * block_bytes, " bytes")),
                    HasSubstr("--memory_limit_mb")));
  EXPECT_EQ(store.Find("b"), nullptr) << refused.status().message();
  EXPECT_THAT(store.VariableNames(), ElementsAreArray({"a"}));
  EXPECT_EQ(store.StateBytes(), 60 * 3 * sizeof(float));

  // What is left still fits, exactly; then nothing more does.
  ASSERT_TRUE(store.CreateVariable(CreateRequest("b", {40})).ok());
  EXPECT_EQ(store.StateBytes(), 100 * 3 * sizeof(float));
  EXPECT_EQ(store.StateBytes() + store.BookkeepingBytes(),
            options.memory_limit_bytes);
  EXPECT_EQ(store.CreateVariable(CreateWithOptimizer("c", 1, "sgd {}"))
                .status()
                .code(),
            absl::StatusCode::kResourceExhausted);
  // Creating an existing variable again costs nothing.
  EXPECT_TRUE(store.CreateVariable(CreateRequest("b", {40})).ok());
  EXPECT_EQ(store.Stats().memory_limit_bytes(), options.memory_limit_bytes);

  // A shape far beyond the machine is refused before anything is allocated.
  const absl::StatusOr<bool> huge =
      store.CreateVariable(CreateRequest("huge", {1ull << 20, 1ull << 17}));
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(StoreMemoryTest, OptimizerChangesAreChargedAndRefusedPastTheLimit) {
  auto owner = SgdStoreWithRoomFor(3);
  VariableStore& store = *owner;
  const StoreOptions& options = store.options();
  const uint64_t version = store.GetOptimizer("w")->config_version();

  // AMSGrad keeps three arrays besides the values: past the limit.
  auto refused = store.SetOptimizer("w", Optimizer("adam { amsgrad: true }"),
                                    /*reset_state=*/false);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted)
      << refused.status();
  EXPECT_THAT(refused.status().message(),
              AllOf(HasSubstr("'w'"), HasSubstr("adam")));
  EXPECT_EQ(store.GetOptimizer("w")->config_version(), version);
  EXPECT_TRUE(store.GetOptimizer("w")->has_sgd());
  EXPECT_EQ(store.StateBytes(), 100 * sizeof(float));

  // Adam as the default fits exactly; its state is what is charged.
  ASSERT_TRUE(store.SetOptimizer("", Optimizer("adam {}"), false).ok());
  EXPECT_EQ(store.StateBytes() + store.BookkeepingBytes(),
            options.memory_limit_bytes);
  PushOnes(store, "w", 2);
  EXPECT_EQ(HeldBytes(store), store.StateBytes());

  // Back to SGD frees Adam's state; momentum then keeps its buffer into
  // Adam's first moment, and Adam adds the second.
  ASSERT_TRUE(store.SetOptimizer("w", Optimizer("sgd {}"), false).ok());
  EXPECT_EQ(store.StateBytes(), 100 * sizeof(float));
  EXPECT_EQ(HeldBytes(store), store.StateBytes());
  ASSERT_TRUE(store.SetOptimizer("w", Optimizer("momentum {}"), false).ok());
  PushOnes(store, "w", 3);
  EXPECT_EQ(store.StateBytes(), 100 * 2 * sizeof(float));
  ASSERT_TRUE(store.SetOptimizer("w", Optimizer("adam {}"), false).ok());
  PushOnes(store, "w", 4);
  EXPECT_EQ(store.StateBytes() + store.BookkeepingBytes(),
            options.memory_limit_bytes);
  EXPECT_EQ(HeldBytes(store), store.StateBytes());
}

TEST(StoreMemoryTest, SlotsKeptAcrossAChangeStayCharged) {
  VariableStore store(AsyncOptions(0, 1, 4, "adam { amsgrad: true }"));
  ASSERT_TRUE(store.CreateVariable(CreateRequest("w", {10})).ok());
  PushOnes(store, "w", 1);
  // Plain Adam is the same rule: AMSGrad's running max stays allocated.
  ASSERT_TRUE(store.SetOptimizer("", Optimizer("adam {}"), false).ok());
  EXPECT_EQ(store.StateBytes(), 10 * 4 * sizeof(float));
  PushOnes(store, "w", 2);
  EXPECT_EQ(HeldBytes(store), store.StateBytes());
  // A reset frees everything; the next update allocates Adam's two slots.
  ASSERT_TRUE(store.SetOptimizer("", Optimizer("adam {}"), true).ok());
  EXPECT_EQ(store.StateBytes(), 10 * 3 * sizeof(float));
  EXPECT_EQ(HeldBytes(store), 10 * sizeof(float));
  PushOnes(store, "w", 3);
  EXPECT_EQ(HeldBytes(store), store.StateBytes());
}

TEST(StoreMemoryTest, ARestoredStoreCountsWhatItsCheckpointHeld) {
  VariableStore store(AsyncOptions(0, 1, 4, "sgd {}"));
  ASSERT_TRUE(store.CreateVariable(CreateRequest("w", {10})).ok());
  ASSERT_TRUE(store.CreateVariable(CreateWithOptimizer("s", 6, "sgd {}")).ok());
  ASSERT_TRUE(
      store.SetOptimizer("", Optimizer("adam { amsgrad: true }"), false).ok());
  PushOnes(store, "w", 1);
  // Plain Adam keeps AMSGrad's running max, which the restore must count.
  ASSERT_TRUE(store.SetOptimizer("", Optimizer("adam {}"), false).ok());
  ASSERT_EQ(store.StateBytes(), (10 * 4 + 6) * sizeof(float));

  // Restarted with another default: the checkpoint's rules decide.
  VariableStore restored(AsyncOptions(
      0, 1, 4, "rmsprop { centered: true momentum: 0.9 } learning_rate: 0.1"));
  ASSERT_TRUE(store
                  .Snapshot(
                      [&](const storage::v1::ShardState& state) {
                        return restored.RestoreState(state);
                      },
                      [&](const storage::v1::BlockRecord& record) {
                        return restored.RestoreBlock(record);
                      })
                  .ok());
  EXPECT_EQ(restored.StateBytes(), store.StateBytes());
  EXPECT_EQ(HeldBytes(restored), HeldBytes(store));
}

// Tables cost memory before their first row: creating empty tables stops
// at the limit, and a deleted one gives its share back.
TEST(StoreMemoryTest, EmptyTablesAreChargedAndRefusedPastTheLimit) {
  StoreOptions options = AsyncOptions();
  options.memory_limit_bytes = 64 * SparseTable::kTableBytes;
  VariableStore store(options);
  v1::CreateTableRequest table;
  table.set_dim(4);
  int created = 0;
  absl::Status refused;
  for (; created < 1000; ++created) {
    const uint64_t before = store.StateBytes();
    table.set_name(absl::StrCat("t", created));
    absl::StatusOr<bool> made = store.CreateTable(table);
    if (!made.ok()) {
      refused = made.status();
      EXPECT_EQ(store.StateBytes(), before);
      EXPECT_EQ(store.FindTable(table.name()), nullptr);
      break;
    }
    EXPECT_EQ(store.StateBytes(), before + SparseTable::kTableBytes);
  }
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_THAT(std::string(refused.message()),
              HasSubstr("before its first row"));
  EXPECT_GT(created, 0);
  EXPECT_LE(created, 64);
  // A creation of an existing one (reuse) costs nothing; a delete gives
  // the bytes back and a new table fits again.
  table.set_name("t0");
  table.set_on_exists(v1::ON_EXISTS_REUSE);
  ASSERT_TRUE(store.CreateTable(table).ok());
  const uint64_t full = store.StateBytes();
  ASSERT_TRUE(store.DeleteVariable("t0").ok());
  EXPECT_EQ(store.StateBytes(), full - SparseTable::kTableBytes);
  table.set_name("again");
  EXPECT_TRUE(store.CreateTable(table).ok());
  EXPECT_EQ(store.StateBytes(), full);
}

TEST(StoreMemoryTest, ValidateOnlyChecksEverythingAndChangesNothing) {
  auto owner = SgdStoreWithRoomFor(2);
  VariableStore& store = *owner;
  const Snapshot before = PullAll(store, "w");

  // Past the limit: the same refusal as the change itself would get.
  auto check = store.SetOptimizer("", Optimizer("adam {}"), false,
                                  /*validate_only=*/true);
  auto real = store.SetOptimizer("", Optimizer("adam {}"), false);
  ASSERT_EQ(check.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(check.status(), real.status());
  EXPECT_EQ(store.SetOptimizer("nope", Optimizer("sgd {}"), false, true)
                .status()
                .code(),
            absl::StatusCode::kNotFound);

  // Within it: accepted, and still nothing changes.
  auto fits = store.SetOptimizer("w", Optimizer("momentum {}"), true, true);
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_EQ(fits->previous_version, 1u);
  EXPECT_EQ(fits->version, 1u);
  EXPECT_EQ(store.GetOptimizer("w")->config_version(), 1u);
  EXPECT_TRUE(store.GetOptimizer("w")->has_sgd());
  EXPECT_EQ(store.StateBytes(), 100 * sizeof(float));
  PushOnes(store, "w", 2);  // SGD, from where it was
  const Snapshot after = PullAll(store, "w");
  EXPECT_THAT(after.versions, ::testing::Each(2u));
  for (size_t i = 0; i < after.values.size(); ++i) {
    EXPECT_FLOAT_EQ(after.values[i], before.values[i] - 0.1f);
  }
}

}  // namespace
}  // namespace ps
