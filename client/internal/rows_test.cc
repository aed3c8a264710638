#include "client/internal/rows.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/partition.h"

namespace ps::client_internal {
namespace {

using ::testing::ElementsAre;

TEST(RowsTest, CoalesceKeepsFirstAppearanceAndSumsRepeats) {
  const std::vector<uint64_t> ids = {9, 4, 9, 7, 4, 9};
  const CoalescedIds coalesced = Coalesce(ids);
  EXPECT_THAT(coalesced.unique, ElementsAre(9, 4, 7));
  EXPECT_THAT(coalesced.position, ElementsAre(0, 1, 0, 2, 1, 0));
  const std::vector<float> grads = {1, 10, 2, 20, 3, 30, 4, 40, 5, 50, 6, 60};
  EXPECT_THAT(SumRows(coalesced, grads, 2),
              ElementsAre(1 + 3 + 6, 10 + 30 + 60, 2 + 5, 20 + 50, 4, 40));
}

TEST(RowsTest, SplitRoutesByRowShardAndCutsParts) {
  std::vector<uint64_t> ids;
  for (uint64_t id = 0; id < 100; ++id) ids.push_back(id);
  const CoalescedIds coalesced = Coalesce(ids);
  const std::vector<float> sums(100 * 4, 1.0f);
  v1::PushRequest header;
  header.set_worker_id("w");
  SplitLimits limits{/*part_bytes=*/200 + 10 * (8 + 16),
                     /*max_message_bytes=*/1 << 20};
  auto parts = SplitPushRows(3, "t", 4, coalesced, sums, header, v1::FLOAT32,
                             /*answered=*/false, /*every_shard=*/false, limits);
  ASSERT_TRUE(parts.ok()) << parts.status();
  ASSERT_EQ(parts->size(), 3u);
  size_t total = 0;
  const uint64_t hash = Fnv1a64("t");
  for (uint32_t s = 0; s < 3; ++s) {
    for (const auto& part : (*parts)[s]) {
      ASSERT_EQ(part.request.rows_size(), 1);
      const v1::RowSlice& slice = part.request.rows(0);
      EXPECT_EQ(part.request.worker_id(), "w");
      EXPECT_LE(part.request.ByteSizeLong(), limits.part_bytes + 64);
      EXPECT_EQ(slice.data().size(), slice.ids_size() * 4 * sizeof(float));
      for (uint64_t id : slice.ids()) EXPECT_EQ(RowShard(hash, id, 3), s);
      total += slice.ids_size();
    }
    EXPECT_GT((*parts)[s].size(), 1u) << "cut into several parts";
  }
  EXPECT_EQ(total, 100u);
}

TEST(RowsTest, EveryShardGetsAPushWhenAsked) {
  const std::vector<uint64_t> ids = {5};
  const CoalescedIds coalesced = Coalesce(ids);
  const std::vector<float> sums = {1};
  auto parts =
      SplitPushRows(4, "t", 1, coalesced, sums, v1::PushRequest(), v1::FLOAT32,
                    false, /*every_shard=*/true, SplitLimits{1 << 20, 1 << 20});
  ASSERT_TRUE(parts.ok());
  for (const auto& shard : *parts) {
    ASSERT_EQ(shard.size(), 1u);
    EXPECT_EQ(shard[0].request.rows(0).table(), "t");
  }
}

TEST(RowsTest, ARowTooLargeForAMessageIsRefused) {
  const std::vector<uint64_t> ids = {1};
  const CoalescedIds coalesced = Coalesce(ids);
  const std::vector<float> sums(1000);
  auto parts =
      SplitPushRows(1, "t", 1000, coalesced, sums, v1::PushRequest(),
                    v1::FLOAT32, false, false, SplitLimits{1024, 1024});
  EXPECT_EQ(parts.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RowsTest, DecodeWritesEveryCallerPositionAndRefusesMismatches) {
  const std::vector<uint64_t> ids = {3, 8, 3};
  const CoalescedIds coalesced = Coalesce(ids);
  const auto callers = CallersOf(coalesced);
  v1::RowSlice asked;
  asked.set_table("t");
  asked.add_ids(3);
  asked.add_ids(8);
  v1::RowSlice answer = asked;
  v1::RowSlice* rows = &answer;
  const std::vector<float> values = {1.5f, 2.5f};
  rows->set_data(std::string(reinterpret_cast<const char*>(values.data()), 8));
  std::vector<float> out(3);
  const std::vector<size_t> unique_rows = {0, 1};
  ASSERT_TRUE(
      DecodeRows(asked, unique_rows, 1, v1::FLOAT32, answer, callers, out)
          .ok());
  EXPECT_THAT(out, ElementsAre(1.5f, 2.5f, 1.5f));
  rows->set_ids(1, 9);
  EXPECT_EQ(DecodeRows(asked, unique_rows, 1, v1::FLOAT32, answer, callers, out)
                .code(),
            absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace ps::client_internal
