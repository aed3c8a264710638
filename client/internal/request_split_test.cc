#include "client/internal/request_split.h"

#include <algorithm>
#include <limits>
#include <numeric>

#include "common/wire.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ps::client_internal {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMaxVersion = std::numeric_limits<uint64_t>::max();

// The answer a shard would give to `slices`, every version at its widest.
v1::PullResponse AnswerTo(
    const google::protobuf::RepeatedPtrField<v1::Slice>& slices,
    v1::DType dtype) {
  v1::PullResponse answer;
  for (const v1::Slice& asked : slices) {
    v1::Slice* slice = answer.add_values();
    slice->set_variable(asked.variable());
    slice->set_offset(asked.offset());
    slice->set_length(asked.length());
    slice->set_dtype(dtype);
    slice->set_version(kMaxVersion);
    EncodeValues(dtype, std::vector<float>(asked.length(), 1.0f),
                 slice->mutable_data());
  }
  return answer;
}

// Marks the values each slice covers; fails on overlap.
void Cover(const v1::Slice& slice, std::vector<int>& covered) {
  for (uint64_t i = slice.offset(); i < slice.offset() + slice.length(); ++i) {
    ASSERT_LT(i, covered.size());
    EXPECT_EQ(covered[i]++, 0) << "value " << i << " sent twice";
  }
}

TEST(SplitPushTest, WholeOwnedBlocksUnderTheLimit) {
  const PartitionPlan plan(3, 10);
  std::vector<float> a(95, 1.0f), b(7, 2.0f);
  const std::vector<PushItem> items = {{"a", a}, {"b", b}};
  v1::PushRequest header;
  header.set_worker_id("worker-1");
  header.set_step(12345);
  header.set_loss(0.25);
  header.set_pull_dtype(v1::FLOAT32);
  const size_t max_bytes = 200;
  absl::StatusOr<ShardParts<v1::PushRequest>> parts =
      SplitPush(plan, items, header, v1::FLOAT32, /*answered=*/true,
                {max_bytes, max_bytes});
  ASSERT_TRUE(parts.ok()) << parts.status();
  ASSERT_EQ(parts->size(), 3u);

  std::vector<int> covered_a(95), covered_b(7);
  for (uint32_t s = 0; s < 3; ++s) {
    for (Part<v1::PushRequest>& part : (*parts)[s]) {
      EXPECT_EQ(part.request.worker_id(), "worker-1");
      EXPECT_EQ(part.request.step(), 12345u);
      EXPECT_EQ(part.request.loss(), 0.25);
      part.request.set_seq(kMaxVersion);
      EXPECT_LE(part.request.ByteSizeLong(), max_bytes);
      EXPECT_LE(AnswerTo(part.request.gradients(), v1::FLOAT32).ByteSizeLong(),
                max_bytes);
      ASSERT_EQ(part.items.size(),
                static_cast<size_t>(part.request.gradients_size()));
      for (int i = 0; i < part.request.gradients_size(); ++i) {
        const v1::Slice& slice = part.request.gradients(i);
        const uint64_t k = plan.BlockOf(slice.offset());
        EXPECT_EQ(plan.ShardOf(slice.variable(), k), s);
        const uint64_t size = slice.variable() == "a" ? 95 : 7;
        EXPECT_EQ(FlatRange({slice.offset(), slice.length()}),
                  plan.BlockRange(size, k));
        EXPECT_EQ(part.items[i], slice.variable() == "a" ? 0u : 1u);
        Cover(slice, slice.variable() == "a" ? covered_a : covered_b);
      }
    }
  }
  EXPECT_EQ(covered_a, std::vector<int>(95, 1));
  EXPECT_EQ(covered_b, std::vector<int>(7, 1));
}

TEST(SplitPushTest, HalfPrecisionHalvesTheData) {
  const PartitionPlan plan(1, 4);
  const std::vector<float> g = {1, 2, 3, 4, 5};
  const std::vector<PushItem> items = {{"w", g}};
  absl::StatusOr<ShardParts<v1::PushRequest>> parts =
      SplitPush(plan, items, v1::PushRequest(), v1::BFLOAT16, false,
                {size_t{1} << 20, size_t{1} << 20});
  ASSERT_TRUE(parts.ok());
  ASSERT_EQ((*parts)[0].size(), 1u);
  const v1::PushRequest& request = (*parts)[0][0].request;
  ASSERT_EQ(request.gradients_size(), 2);
  EXPECT_EQ(request.gradients(0).dtype(), v1::BFLOAT16);
  EXPECT_EQ(request.gradients(0).data().size(), 8u);
  EXPECT_EQ(request.gradients(1).data().size(), 2u);
}

TEST(SplitPushTest, RefusesABlockThatCannotFit) {
  const PartitionPlan plan(2, 100);
  const std::vector<float> g(100);
  const std::vector<PushItem> items = {{"w", g}};
  absl::StatusOr<ShardParts<v1::PushRequest>> parts =
      SplitPush(plan, items, v1::PushRequest(), v1::FLOAT32, false, {300, 300});
  EXPECT_EQ(parts.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(parts.status().message(), HasSubstr("max_message_bytes"));
  // As BFLOAT16 it fits.
  EXPECT_TRUE(
      SplitPush(plan, items, v1::PushRequest(), v1::BFLOAT16, false, {300, 300})
          .ok());
}

TEST(SplitPullTest, RangesStayInsideBlocksAndAnswersUnderTheLimit) {
  const PartitionPlan plan(2, 100);
  const std::vector<PullItem> items = {{"big", 950}, {"small", 3}};
  const size_t max_bytes = 256;
  for (v1::DType dtype : {v1::FLOAT32, v1::FLOAT16}) {
    absl::StatusOr<ShardParts<v1::PullRequest>> parts =
        SplitPull(plan, items, dtype, {max_bytes, max_bytes});
    ASSERT_TRUE(parts.ok()) << parts.status();
    std::vector<int> covered_big(950), covered_small(3);
    for (uint32_t s = 0; s < 2; ++s) {
      for (const Part<v1::PullRequest>& part : (*parts)[s]) {
        EXPECT_EQ(part.request.dtype(), dtype);
        EXPECT_LE(AnswerTo(part.request.slices(), dtype).ByteSizeLong(),
                  max_bytes);
        for (const v1::Slice& slice : part.request.slices()) {
          const uint64_t k = plan.BlockOf(slice.offset());
          EXPECT_EQ(plan.ShardOf(slice.variable(), k), s);
          EXPECT_LE(slice.offset() + slice.length(), (k + 1) * 100);
          EXPECT_TRUE(slice.data().empty());
          Cover(slice, slice.variable() == "big" ? covered_big : covered_small);
        }
      }
    }
    EXPECT_EQ(covered_big, std::vector<int>(950, 1));
    EXPECT_EQ(covered_small, std::vector<int>(3, 1));
  }
}

TEST(SplitPullTest, KeepsBlocksWholeWhenTheyFit) {
  const PartitionPlan plan(1, 10);
  const std::vector<PullItem> items = {{"w", 100}};
  absl::StatusOr<ShardParts<v1::PullRequest>> parts =
      SplitPull(plan, items, v1::FLOAT32, {150, 150});
  ASSERT_TRUE(parts.ok());
  for (const auto& part : (*parts)[0]) {
    for (const v1::Slice& slice : part.request.slices()) {
      EXPECT_EQ(slice.length(), 10u);
    }
  }
  EXPECT_GT((*parts)[0].size(), 1u);
}

// Parts are packed up to part_bytes; a block larger than that goes alone
// (it still fits in a message), and nothing is refused for part_bytes.
TEST(SplitPushTest, PacksPartsUpToPartBytes) {
  const PartitionPlan plan(1, 10);  // blocks of 40 bytes as float32
  const std::vector<float> g(95, 1.0f);
  const std::vector<PushItem> items = {{"w", g}};
  const SplitLimits limits = {/*part_bytes=*/200, /*max_message_bytes=*/4096};
  absl::StatusOr<ShardParts<v1::PushRequest>> parts =
      SplitPush(plan, items, v1::PushRequest(), v1::FLOAT32,
                /*answered=*/true, limits);
  ASSERT_TRUE(parts.ok()) << parts.status();
  std::vector<int> covered(95);
  size_t blocks = 0;
  for (Part<v1::PushRequest>& part : (*parts)[0]) {
    part.request.set_seq(kMaxVersion);
    EXPECT_LE(part.request.ByteSizeLong(), limits.part_bytes);
    EXPECT_LE(AnswerTo(part.request.gradients(), v1::FLOAT32).ByteSizeLong(),
              limits.part_bytes);
    for (const v1::Slice& slice : part.request.gradients()) {
      Cover(slice, covered);
      ++blocks;
    }
  }
  EXPECT_EQ(covered, std::vector<int>(95, 1));
  EXPECT_EQ(blocks, 10u);
  // Two blocks per part: a third would exceed 200 bytes of answer.
  EXPECT_EQ((*parts)[0].size(), 5u);

  // part_bytes below one block: one block per part, none refused.
  parts = SplitPush(plan, items, v1::PushRequest(), v1::FLOAT32, true,
                    {/*part_bytes=*/16, /*max_message_bytes=*/4096});
  ASSERT_TRUE(parts.ok()) << parts.status();
  EXPECT_EQ((*parts)[0].size(), 10u);
}

TEST(SplitPullTest, PacksPartsUpToPartBytes) {
  const PartitionPlan plan(1, 10);
  const std::vector<PullItem> items = {{"w", 95}};
  const SplitLimits limits = {/*part_bytes=*/200, /*max_message_bytes=*/4096};
  absl::StatusOr<ShardParts<v1::PullRequest>> parts =
      SplitPull(plan, items, v1::FLOAT32, limits);
  ASSERT_TRUE(parts.ok()) << parts.status();
  std::vector<int> covered(95);
  for (const Part<v1::PullRequest>& part : (*parts)[0]) {
    EXPECT_LE(AnswerTo(part.request.slices(), v1::FLOAT32).ByteSizeLong(),
              limits.part_bytes);
    for (const v1::Slice& slice : part.request.slices()) {
      EXPECT_EQ(slice.length(), slice.offset() == 90 ? 5u : 10u);
      Cover(slice, covered);
    }
  }
  EXPECT_EQ(covered, std::vector<int>(95, 1));
  EXPECT_EQ((*parts)[0].size(), 5u);

  // part_bytes below one block: whole blocks, one per part.
  parts = SplitPull(plan, items, v1::FLOAT32, {16, 4096});
  ASSERT_TRUE(parts.ok()) << parts.status();
  ASSERT_EQ((*parts)[0].size(), 10u);
  for (const Part<v1::PullRequest>& part : (*parts)[0]) {
    ASSERT_EQ(part.request.slices_size(), 1);
  }
}

TEST(SplitCreateTest, EachShardGetsItsBlocks) {
  const PartitionPlan plan(3, 2);
  std::vector<float> initial(11);
  std::iota(initial.begin(), initial.end(), 0.0f);
  v1::OptimizerConfig sgd;
  sgd.mutable_sgd();
  absl::StatusOr<std::vector<std::vector<v1::CreateVariableRequest>>> requests =
      SplitCreate(plan, "w", {11}, initial, sgd, size_t{1} << 20);
  ASSERT_TRUE(requests.ok());
  ASSERT_EQ(requests->size(), 3u);
  for (uint32_t s = 0; s < 3; ++s) {
    ASSERT_EQ((*requests)[s].size(), 1u);
    const v1::CreateVariableRequest& request = (*requests)[s][0];
    EXPECT_FALSE(request.continued());
    EXPECT_EQ(request.name(), "w");
    EXPECT_TRUE(request.optimizer().has_sgd());
    for (const v1::Slice& slice : request.initial_values()) {
      EXPECT_EQ(plan.ShardOf("w", plan.BlockOf(slice.offset())), s);
      std::vector<float> values(slice.length());
      ASSERT_TRUE(DecodeValues(slice.dtype(), slice.data(), values).ok());
      EXPECT_EQ(values[0], static_cast<float>(slice.offset()));
    }
  }
  EXPECT_EQ(SplitCreate(plan, "w", {10}, initial, std::nullopt, 1 << 20)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      SplitCreate(plan, "w", {11}, initial, std::nullopt, 30).status().code(),
      absl::StatusCode::kInvalidArgument);
  // Without initial values nothing but the shape is sent.
  requests = SplitCreate(plan, "w", {11}, {}, std::nullopt, 100);
  ASSERT_TRUE(requests.ok());
  for (const auto& shard_requests : *requests) {
    ASSERT_EQ(shard_requests.size(), 1u);
    EXPECT_EQ(shard_requests[0].initial_values_size(), 0);
    EXPECT_FALSE(shard_requests[0].has_optimizer());
  }
}

TEST(SplitCreateTest, InitialValuesOverTheLimitGoInContinuedRequests) {
  // 2 shards, blocks of 4 values (16 bytes of data, about 30 bytes a slice);
  // 100-byte messages hold two slices.
  const PartitionPlan plan(2, 4);
  std::vector<float> initial(40);
  std::iota(initial.begin(), initial.end(), 0.0f);
  absl::StatusOr<std::vector<std::vector<v1::CreateVariableRequest>>> requests =
      SplitCreate(plan, "w", {40}, initial, std::nullopt, 100);
  ASSERT_TRUE(requests.ok()) << requests.status();
  std::vector<uint64_t> offsets;
  for (uint32_t s = 0; s < 2; ++s) {
    const auto& shard_requests = (*requests)[s];
    ASSERT_GT(shard_requests.size(), 1u);
    for (size_t r = 0; r < shard_requests.size(); ++r) {
      const v1::CreateVariableRequest& request = shard_requests[r];
      EXPECT_LE(request.ByteSizeLong(), 100u);
      EXPECT_EQ(request.continued(), r > 0);
      EXPECT_EQ(request.name(), "w");
      ASSERT_EQ(request.shape_size(), 1);
      EXPECT_GT(request.initial_values_size(), 0);
      for (const v1::Slice& slice : request.initial_values()) {
        EXPECT_EQ(plan.ShardOf("w", plan.BlockOf(slice.offset())), s);
        offsets.push_back(slice.offset());
      }
    }
  }
  std::sort(offsets.begin(), offsets.end());
  std::vector<uint64_t> every_block;
  for (uint64_t offset = 0; offset < 40; offset += 4) {
    every_block.push_back(offset);
  }
  EXPECT_EQ(offsets, every_block);
}

TEST(NumValuesTest, MultipliesAndRefusesOverflow) {
  EXPECT_EQ(*NumValues({}), 1u);
  EXPECT_EQ(*NumValues({3, 4, 5}), 60u);
  EXPECT_EQ(*NumValues({3, 0}), 0u);
  EXPECT_EQ(NumValues({1ull << 40, 1ull << 40}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

class DecodeAnswerTest : public ::testing::Test {
 protected:
  DecodeAnswerTest() {
    for (uint64_t offset : {0, 4}) {
      v1::Slice* slice = asked_.Add();
      slice->set_variable("w");
      slice->set_offset(offset);
      slice->set_length(4);
    }
  }

  absl::Status Decode(const v1::PullResponse& answer) {
    const std::span<float> outputs[] = {std::span<float>(out_)};
    return DecodeAnswer(asked_, items_, v1::FLOAT32, answer.values(), {},
                        outputs);
  }

  google::protobuf::RepeatedPtrField<v1::Slice> asked_;
  std::vector<size_t> items_ = {0, 0};
  std::vector<float> out_ = std::vector<float>(8);
};

TEST_F(DecodeAnswerTest, AcceptsAnyOrder) {
  v1::PullResponse answer = AnswerTo(asked_, v1::FLOAT32);
  answer.mutable_values()->SwapElements(0, 1);
  ASSERT_TRUE(Decode(answer).ok());
  EXPECT_EQ(out_, std::vector<float>(8, 1.0f));
}

TEST_F(DecodeAnswerTest, RefusesMissingExtraAndMismatchedSlices) {
  v1::PullResponse missing = AnswerTo(asked_, v1::FLOAT32);
  missing.mutable_values()->RemoveLast();
  EXPECT_EQ(Decode(missing).code(), absl::StatusCode::kInternal);

  v1::PullResponse twice = AnswerTo(asked_, v1::FLOAT32);
  *twice.mutable_values(1) = twice.values(0);
  EXPECT_THAT(Decode(twice).message(), HasSubstr("twice"));

  v1::PullResponse other = AnswerTo(asked_, v1::FLOAT32);
  other.mutable_values(1)->set_variable("v");
  EXPECT_THAT(Decode(other).message(), HasSubstr("not asked"));

  v1::PullResponse shorter = AnswerTo(asked_, v1::FLOAT32);
  shorter.mutable_values(0)->set_length(3);
  EXPECT_EQ(Decode(shorter).code(), absl::StatusCode::kInternal);

  v1::PullResponse half = AnswerTo(asked_, v1::BFLOAT16);
  EXPECT_THAT(Decode(half).message(), HasSubstr("BFLOAT16"));

  v1::PullResponse truncated = AnswerTo(asked_, v1::FLOAT32);
  truncated.mutable_values(0)->mutable_data()->resize(15);
  EXPECT_EQ(Decode(truncated).code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace ps::client_internal
