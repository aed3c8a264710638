#include "server/stats.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace ps {
namespace {

using ::testing::IsEmpty;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

// The width of one latency bucket: its upper edge over its lower.
const double kBucketRatio = std::exp2(0.25);

TEST(ServerStatsTest, StartsAtZero) {
  ServerStats stats;
  v1::Stats filled;
  stats.Fill(&filled);
  EXPECT_EQ(filled.pushes(), 0u);
  EXPECT_EQ(filled.pulls(), 0u);
  EXPECT_EQ(filled.bytes_in(), 0u);
  EXPECT_EQ(filled.bytes_out(), 0u);
  EXPECT_EQ(filled.updates(), 0u);
  EXPECT_EQ(filled.checkpoints(), 0u);
  EXPECT_EQ(filled.checkpoint_failures(), 0u);
  EXPECT_THAT(filled.refusals(), IsEmpty());
  EXPECT_EQ(filled.update_latency_p50_us(), 0.0);
  EXPECT_EQ(filled.update_latency_p90_us(), 0.0);
  EXPECT_EQ(filled.update_latency_p99_us(), 0.0);
  EXPECT_GE(filled.uptime_s(), 0.0);
}

TEST(ServerStatsTest, CountsPushesPullsAndTheirBytes) {
  ServerStats stats;
  stats.RecordPush(100, 8);
  stats.RecordPush(50, 0);
  stats.RecordPull(10, 4000);
  v1::Stats filled;
  stats.Fill(&filled);
  EXPECT_EQ(filled.pushes(), 2u);
  EXPECT_EQ(filled.pulls(), 1u);
  EXPECT_EQ(filled.bytes_in(), 160u);
  EXPECT_EQ(filled.bytes_out(), 4008u);
}

TEST(ServerStatsTest, CountsCheckpointsAndFailures) {
  ServerStats stats;
  stats.RecordCheckpoint(true);
  stats.RecordCheckpoint(false);
  stats.RecordCheckpoint(true);
  v1::Stats filled;
  stats.Fill(&filled);
  EXPECT_EQ(filled.checkpoints(), 2u);
  EXPECT_EQ(filled.checkpoint_failures(), 1u);
}

TEST(ServerStatsTest, CountsRefusalsByCodeName) {
  ServerStats stats;
  stats.RecordRefusal(absl::StatusCode::kUnauthenticated);
  stats.RecordRefusal(absl::StatusCode::kResourceExhausted);
  stats.RecordRefusal(absl::StatusCode::kUnauthenticated);
  // The lowest and highest codes are kept too.
  stats.RecordRefusal(absl::StatusCode::kCancelled);
  stats.RecordRefusal(absl::StatusCode::kUnauthenticated);
  // OK is no refusal, and codes outside gRPC's are dropped.
  stats.RecordRefusal(absl::StatusCode::kOk);
  stats.RecordRefusal(static_cast<absl::StatusCode>(17));
  stats.RecordRefusal(static_cast<absl::StatusCode>(-1));
  stats.RecordRefusal(
      absl::StatusCode::
          kDoNotUseReservedForFutureExpansionUseDefaultInSwitchInstead_);
  v1::Stats filled;
  stats.Fill(&filled);
  EXPECT_THAT(filled.refusals(),
              UnorderedElementsAre(Pair("UNAUTHENTICATED", 3u),
                                   Pair("RESOURCE_EXHAUSTED", 1u),
                                   Pair("CANCELLED", 1u)));
}

TEST(ServerStatsTest, LatencyPercentileIsTheUpperEdgeOfItsBucket) {
  for (double us : {0.3, 1.0, 1.1, 7.5, 100.0, 12345.0, 2.5e6}) {
    ServerStats stats;
    stats.RecordUpdate(absl::Microseconds(us));
    const double p50 = stats.UpdateLatencyPercentileUs(0.5);
    EXPECT_GE(p50, us * (1 - 1e-12)) << us;
    EXPECT_LT(p50, us * kBucketRatio * (1 + 1e-12)) << us;
  }
}

TEST(ServerStatsTest, LatenciesAtBucketEdgesFallInTheirOwnBucket) {
  // Powers of two times 0.25 us are bucket edges, exact in floating point.
  for (double us : {0.5, 1.0, 4.0, 1024.0}) {
    ServerStats stats;
    stats.RecordUpdate(absl::Microseconds(us));
    EXPECT_EQ(stats.UpdateLatencyPercentileUs(0.5), us);
  }
}

TEST(ServerStatsTest, TinyAndHugeLatenciesLandInTheEndBuckets) {
  ServerStats tiny;
  tiny.RecordUpdate(absl::ZeroDuration());
  tiny.RecordUpdate(absl::Nanoseconds(100));
  tiny.RecordUpdate(-absl::Seconds(1));
  EXPECT_EQ(tiny.UpdateLatencyPercentileUs(1.0), 0.25);

  ServerStats huge;
  huge.RecordUpdate(absl::Hours(24 * 365));
  // The last bucket is open; its upper edge is 0.25 us * 2^(127/4).
  EXPECT_EQ(huge.UpdateLatencyPercentileUs(0.5), 0.25 * std::exp2(127 / 4.0));
}

TEST(ServerStatsTest, PercentilesSplitTheUpdates) {
  ServerStats stats;
  for (int i = 0; i < 90; ++i) stats.RecordUpdate(absl::Microseconds(1));
  for (int i = 0; i < 9; ++i) stats.RecordUpdate(absl::Microseconds(64));
  stats.RecordUpdate(absl::Milliseconds(1));
  v1::Stats filled;
  stats.Fill(&filled);
  EXPECT_EQ(filled.updates(), 100u);
  EXPECT_EQ(filled.update_latency_p50_us(), 1.0);
  EXPECT_EQ(filled.update_latency_p90_us(), 1.0);
  EXPECT_EQ(filled.update_latency_p99_us(), 64.0);
  EXPECT_EQ(stats.UpdateLatencyPercentileUs(0.91), 64.0);
  // 1000 us is in the bucket that ends at 0.25 * 2^12 = 1024 us.
  EXPECT_EQ(stats.UpdateLatencyPercentileUs(1.0), 1024.0);
}

TEST(ServerStatsTest, ConcurrentRecordsAreAllCounted) {
  ServerStats stats;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&stats] {
      for (int i = 0; i < 1000; ++i) {
        stats.RecordPush(2, 1);
        stats.RecordUpdate(absl::Microseconds(3));
        stats.RecordRefusal(absl::StatusCode::kAborted);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  v1::Stats filled;
  stats.Fill(&filled);
  EXPECT_EQ(filled.pushes(), 4000u);
  EXPECT_EQ(filled.bytes_in(), 8000u);
  EXPECT_EQ(filled.bytes_out(), 4000u);
  EXPECT_EQ(filled.updates(), 4000u);
  EXPECT_THAT(filled.refusals(), UnorderedElementsAre(Pair("ABORTED", 4000u)));
}

TEST(ServerStatsTest, FillLeavesThePerVariablePartAlone) {
  ServerStats stats;
  v1::Stats filled;
  filled.set_shard_index(3);
  filled.add_variables()->set_name("w");
  stats.Fill(&filled);
  EXPECT_EQ(filled.shard_index(), 3u);
  ASSERT_EQ(filled.variables_size(), 1);
  EXPECT_EQ(filled.variables(0).name(), "w");
}

}  // namespace
}  // namespace ps
