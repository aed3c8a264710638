#include "server/membership.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/time/time.h"
#include "server/sync_steps.h"

namespace ps {
namespace {

using Set = absl::flat_hash_set<std::string>;

const absl::Time kStart = absl::FromUnixSeconds(1000);
constexpr absl::Duration kLease = absl::Seconds(10);

MembershipOptions Options(uint32_t expected, uint32_t quorum) {
  return {.shard_index = 0,
          .expected = expected,
          .quorum = quorum,
          .lease_timeout = kLease};
}

TEST(MembershipTest, FormingWaitsForTheExpectedSizeThenForTheMembers) {
  Membership members(Options(3, 0));
  members.Join("a", kStart);
  members.Join("b", kStart);
  // Two of three have arrived: the first steps wait for the third.
  EXPECT_FALSE(members.Completes(Set{"a", "b"}, kStart + absl::Seconds(1)));
  EXPECT_EQ(members.Needed(kStart), 3u);
  // A lease timeout later the job goes on with those that came.
  EXPECT_TRUE(members.Completes(Set{"a", "b"}, kStart + kLease));
  EXPECT_FALSE(members.Completes(Set{"a"}, kStart + kLease));
  // More than expected: every member counts.
  members.Join("c", kStart + kLease);
  members.Join("d", kStart + kLease);
  EXPECT_EQ(members.size(), 4u);
  EXPECT_FALSE(members.Completes(Set{"a", "b", "c"}, kStart + kLease));
  EXPECT_TRUE(members.Completes(Set{"a", "b", "c", "d"}, kStart + kLease));
}

TEST(MembershipTest, QuorumIsCappedByTheMembers) {
  Membership members(Options(3, 2));
  for (const char* id : {"a", "b", "c"}) members.Join(id, kStart);
  EXPECT_TRUE(members.Completes(Set{"a", "b"}, kStart));
  EXPECT_FALSE(members.Completes(Set{"a"}, kStart));
  EXPECT_TRUE(members.Leave("a"));
  EXPECT_TRUE(members.Leave("b"));
  EXPECT_FALSE(members.Leave("b"));
  EXPECT_EQ(members.Needed(kStart), 1u);
  EXPECT_TRUE(members.Completes(Set{"c"}, kStart));
  // Pushes of a worker that left still complete a step nobody else holds.
  EXPECT_TRUE(members.Leave("c"));
  EXPECT_TRUE(members.Completes(Set{"a"}, kStart));
  EXPECT_FALSE(members.Completes(Set{}, kStart));
}

TEST(MembershipTest, LeasesRunOutUnlessRenewedOrHeldByAWait) {
  Membership members(Options(3, 0));
  for (const char* id : {"a", "b", "c"}) members.Join(id, kStart);
  members.Renew("a", kStart + absl::Seconds(8));
  members.BeginWait("b", kStart + absl::Seconds(1));
  const uint64_t before = members.generation(kStart + absl::Seconds(11));
  EXPECT_THAT(members.Expire(kStart + absl::Seconds(11)),
              ::testing::ElementsAre("c"));
  EXPECT_NE(members.generation(kStart + absl::Seconds(11)), before);
  EXPECT_EQ(members.size(), 2u);
  EXPECT_EQ(members.drops(), 1u);
  EXPECT_TRUE(members.Completes(Set{"a", "b"}, kStart + absl::Seconds(11)));
  // c comes back with a push: a member again, and counted.
  members.RecordPush("c", 4, 0.5, kStart + absl::Seconds(12));
  EXPECT_EQ(members.size(), 3u);
  v1::Stats stats;
  members.Fill(&stats, kStart + absl::Seconds(12));
  ASSERT_EQ(stats.workers_size(), 3);
  EXPECT_EQ(stats.members(), 3u);
  EXPECT_EQ(stats.lease_drops(), 1u);
  EXPECT_EQ(stats.waiting_pushes(), 1u);
  EXPECT_EQ(stats.workers(1).worker_id(), "b");
  EXPECT_EQ(stats.workers(1).waiting(), 1u);
  EXPECT_DOUBLE_EQ(stats.workers(1).waiting_s(), 11.0);
  EXPECT_EQ(stats.workers(2).worker_id(), "c");
  EXPECT_EQ(stats.workers(2).step(), 4u);
  EXPECT_DOUBLE_EQ(stats.workers(2).loss(), 0.5);
  EXPECT_EQ(stats.workers(0).steps_behind(), 5);
}

TEST(MembershipTest, ClocksOfTheSlowestMember) {
  Membership members(Options(0, 0));
  EXPECT_FALSE(members.MinClock().has_value());
  members.Join("a", kStart);
  members.Join("b", kStart);
  members.RecordPush("a", 0, std::nullopt, kStart);
  members.RecordPush("a", 1, std::nullopt, kStart);
  EXPECT_EQ(members.MinClock(), 0u);
  members.RecordPush("b", 0, std::nullopt, kStart);
  EXPECT_EQ(members.MinClock(), 1u);
  // A late member starts at the slowest clock, holding nobody back more.
  members.Join("c", kStart);
  EXPECT_EQ(members.MinClock(), 1u);
  members.Leave("b");
  members.Leave("c");
  EXPECT_EQ(members.MinClock(), 2u);
  // A hostile step does not overflow the clock.
  members.RecordPush("a", UINT64_MAX, std::nullopt, kStart);
  EXPECT_EQ(members.MinClock(), UINT64_MAX);
}

TEST(StalenessGateTest, ReleasesByClockAndExpiresByDeadline) {
  StalenessGate gate(1);
  int ok = 0;
  int expired = 0;
  auto done = [&](absl::Status status) {
    if (status.ok()) ++ok;
    if (status.code() == absl::StatusCode::kDeadlineExceeded) ++expired;
  };
  gate.Await("a", 1, 0, kStart, done);  // within 1 of clock 0: at once
  EXPECT_EQ(ok, 1);
  gate.Await("a", 3, 0, kStart + absl::Seconds(5), done);
  gate.Await("a", 5, 0, kStart + absl::Seconds(1), done);
  EXPECT_EQ(gate.waiting(), 2u);
  gate.Release(1);
  EXPECT_EQ(ok, 1);
  gate.Release(2);
  EXPECT_EQ(ok, 2);
  gate.Expire(kStart + absl::Seconds(2), 2);
  EXPECT_EQ(expired, 1);
  EXPECT_EQ(gate.waiting(), 0u);
  gate.Await("a", 9, 0, kStart + absl::Seconds(5), done);
  gate.Close();
  EXPECT_EQ(gate.waiting(), 0u);
}

}  // namespace
}  // namespace ps
