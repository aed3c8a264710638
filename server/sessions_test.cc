#include "server/sessions.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace ps {
namespace {

using ::testing::HasSubstr;

// A clock reading in microseconds, about 2024.
constexpr uint64_t kNow = uint64_t{1'700'000'000} * 1'000'000;
constexpr uint64_t kDay = WorkerSessions::kMaxEpochAheadMicros;

TEST(WorkerSessionsTest, OpenPicksTheClockForANewWorker) {
  WorkerSessions sessions(0, 0);
  absl::StatusOr<uint64_t> epoch = sessions.Open("w", 0, kNow);
  ASSERT_TRUE(epoch.ok()) << epoch.status();
  EXPECT_EQ(*epoch, kNow);
  EXPECT_EQ(sessions.EpochOf("w"), kNow);
  EXPECT_EQ(sessions.size(), 1u);
}

TEST(WorkerSessionsTest, OpenPicksAboveTheKnownEpochWhenTheClockIsBehind) {
  WorkerSessions sessions(0, 0);
  ASSERT_TRUE(sessions.Open("w", 0, kNow).ok());
  // The clock has not moved (or went back): the next epoch is still newer.
  EXPECT_EQ(*sessions.Open("w", 0, kNow), kNow + 1);
  EXPECT_EQ(*sessions.Open("w", 0, kNow - 5), kNow + 2);
  // The clock moved on: it is taken.
  EXPECT_EQ(*sessions.Open("w", 0, kNow + 100), kNow + 100);
}

TEST(WorkerSessionsTest, OpenWithAClockAtZeroStillPicksANonZeroEpoch) {
  WorkerSessions sessions(0, 0);
  EXPECT_EQ(*sessions.Open("w", 0, 0), 1u);
  EXPECT_EQ(*sessions.Open("w", 0, 0), 2u);
}

TEST(WorkerSessionsTest, WorkersHaveEpochsOfTheirOwn) {
  WorkerSessions sessions(0, 0);
  ASSERT_TRUE(sessions.Open("a", 0, kNow).ok());
  ASSERT_TRUE(sessions.Open("a", 0, kNow).ok());
  EXPECT_EQ(*sessions.Open("b", 0, kNow), kNow);
  EXPECT_EQ(sessions.EpochOf("a"), kNow + 1);
  EXPECT_EQ(sessions.EpochOf("unknown"), 0u);
}

TEST(WorkerSessionsTest, OpenTakesAnExplicitNewerEpoch) {
  WorkerSessions sessions(0, 0);
  ASSERT_TRUE(sessions.Open("w", 0, kNow).ok());
  EXPECT_EQ(*sessions.Open("w", kNow + 7, kNow), kNow + 7);
  EXPECT_EQ(sessions.EpochOf("w"), kNow + 7);
}

TEST(WorkerSessionsTest, OpenOfAnOlderEpochIsAborted) {
  WorkerSessions sessions(3, 0);
  ASSERT_TRUE(sessions.Open("w", kNow + 10, kNow).ok());
  absl::StatusOr<uint64_t> older = sessions.Open("w", kNow + 9, kNow);
  EXPECT_EQ(older.status().code(), absl::StatusCode::kAborted);
  EXPECT_THAT(older.status().message(), HasSubstr("newer session on shard 3"));
  EXPECT_EQ(sessions.EpochOf("w"), kNow + 10);
}

TEST(WorkerSessionsTest, RepeatedOpenOfTheSameEpochKeepsItsSeqs) {
  WorkerSessions sessions(0, 0);
  ASSERT_TRUE(sessions.Open("w", kNow, kNow).ok());
  ASSERT_TRUE(sessions.Admit("w", kNow, 5, kNow).ok());
  // A retried open answers the same epoch and does not start the seqs
  // again: seq 5 is still the highest, so 5 + kMaxSeqAhead is admitted and
  // one past it is not.
  EXPECT_EQ(*sessions.Open("w", kNow, kNow), kNow);
  EXPECT_TRUE(
      sessions.Admit("w", kNow, 5 + WorkerSessions::kMaxSeqAhead, kNow).ok());
  EXPECT_EQ(
      sessions.Admit("w", kNow, 5 + 2 * WorkerSessions::kMaxSeqAhead + 1, kNow)
          .code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(WorkerSessionsTest, OpenOfANewEpochStartsTheSeqsAgain) {
  WorkerSessions sessions(0, 0);
  ASSERT_TRUE(sessions.Open("w", kNow, kNow).ok());
  ASSERT_TRUE(sessions.Admit("w", kNow, 1000, kNow).ok());
  ASSERT_TRUE(sessions.Open("w", kNow + 1, kNow).ok());
  // Highest seq 0 again: kMaxSeqAhead + 1 is too far ahead (it would not be
  // after seq 1000).
  EXPECT_EQ(
      sessions.Admit("w", kNow + 1, WorkerSessions::kMaxSeqAhead + 1, kNow)
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(sessions.Admit("w", kNow + 1, 1, kNow).ok());
}

TEST(WorkerSessionsTest, OpenRefusesAnEmptyWorkerId) {
  WorkerSessions sessions(0, 0);
  EXPECT_EQ(sessions.Open("", 0, kNow).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sessions.size(), 0u);
}

TEST(WorkerSessionsTest, OpenRefusesAnEpochMoreThanADayAhead) {
  WorkerSessions sessions(0, 0);
  EXPECT_TRUE(sessions.Open("w", kNow + kDay, kNow).ok());
  absl::StatusOr<uint64_t> far = sessions.Open("v", kNow + kDay + 1, kNow);
  EXPECT_EQ(far.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(far.status().message(), HasSubstr("more than a day past"));
  EXPECT_EQ(sessions.EpochOf("v"), 0u);
  // Epochs below the clock are fine (another shard's clock may be behind).
  EXPECT_TRUE(sessions.Open("u", 5, kNow).ok());
}

TEST(WorkerSessionsTest, AdmitAdoptsANewerEpoch) {
  WorkerSessions sessions(0, 0);
  ASSERT_TRUE(sessions.Open("w", kNow, kNow).ok());
  // The worker reopened on the other shards while this one was away.
  EXPECT_TRUE(sessions.Admit("w", kNow + 3, 1, kNow).ok());
  EXPECT_EQ(sessions.EpochOf("w"), kNow + 3);
}

TEST(WorkerSessionsTest, AdmitOfAnUnknownWorkerOpensItsSession) {
  WorkerSessions sessions(0, 0);
  EXPECT_TRUE(sessions.Admit("w", kNow, 1, kNow).ok());
  EXPECT_EQ(sessions.EpochOf("w"), kNow);
  EXPECT_EQ(sessions.size(), 1u);
}

TEST(WorkerSessionsTest, AdmitFencesAnOlderEpoch) {
  WorkerSessions sessions(2, 0);
  ASSERT_TRUE(sessions.Open("w", kNow + 1, kNow).ok());
  absl::Status fenced = sessions.Admit("w", kNow, 1, kNow);
  EXPECT_EQ(fenced.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(fenced.message(), HasSubstr("fenced"));
  EXPECT_THAT(fenced.message(), HasSubstr("shard 2"));
  EXPECT_EQ(sessions.EpochOf("w"), kNow + 1);
}

TEST(WorkerSessionsTest, AdmitRefusesEpochZero) {
  WorkerSessions sessions(0, 0);
  absl::Status status = sessions.Admit("w", 0, 1, kNow);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("OpenSession"));
  EXPECT_EQ(sessions.size(), 0u);
}

TEST(WorkerSessionsTest, AdmitRefusesAnEpochMoreThanADayAhead) {
  WorkerSessions sessions(0, 0);
  EXPECT_EQ(sessions.Admit("w", kNow + kDay + 1, 1, kNow).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sessions.EpochOf("w"), 0u);
  EXPECT_TRUE(sessions.Admit("w", kNow + kDay, 1, kNow).ok());
}

TEST(WorkerSessionsTest, AdmitRefusesASeqTooFarAhead) {
  WorkerSessions sessions(1, 0);
  ASSERT_TRUE(sessions.Open("w", kNow, kNow).ok());
  EXPECT_TRUE(
      sessions.Admit("w", kNow, WorkerSessions::kMaxSeqAhead, kNow).ok());
  const uint64_t far = 2 * WorkerSessions::kMaxSeqAhead + 1;
  absl::Status status = sessions.Admit("w", kNow, far, kNow);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("seqs count from 1"));
  // A refused seq is not recorded: the highest is still kMaxSeqAhead.
  EXPECT_EQ(sessions.Admit("w", kNow, far, kNow).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sessions.Admit("w", kNow, UINT64_MAX, kNow).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(sessions.Admit("w", kNow, far - 1, kNow).ok());
}

TEST(WorkerSessionsTest, AdmitTakesSeqsOutOfOrderAndRepeated) {
  WorkerSessions sessions(0, 0);
  ASSERT_TRUE(sessions.Open("w", kNow, kNow).ok());
  EXPECT_TRUE(sessions.Admit("w", kNow, 3, kNow).ok());
  EXPECT_TRUE(sessions.Admit("w", kNow, 1, kNow).ok());
  EXPECT_TRUE(sessions.Admit("w", kNow, 3, kNow).ok());
  // The highest stayed 3: 3 + kMaxSeqAhead is within reach.
  EXPECT_TRUE(
      sessions.Admit("w", kNow, 3 + WorkerSessions::kMaxSeqAhead, kNow).ok());
}

TEST(WorkerSessionsTest, MaxWorkersBoundsTheWorkerIds) {
  WorkerSessions sessions(4, 2);
  ASSERT_TRUE(sessions.Open("a", 0, kNow).ok());
  ASSERT_TRUE(sessions.Admit("b", kNow, 1, kNow).ok());
  absl::StatusOr<uint64_t> third = sessions.Open("c", 0, kNow);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.status().message(), HasSubstr("--max_workers"));
  EXPECT_EQ(sessions.Admit("c", kNow, 1, kNow).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(sessions.size(), 2u);
  // Those it holds go on.
  EXPECT_TRUE(sessions.Open("a", 0, kNow).ok());
  EXPECT_TRUE(sessions.Admit("b", kNow, 2, kNow).ok());
}

TEST(WorkerSessionsTest, SnapshotAndRestoreRoundTrip) {
  WorkerSessions sessions(0, 0);
  ASSERT_TRUE(sessions.Open("a", kNow + 4, kNow).ok());
  ASSERT_TRUE(sessions.Admit("a", kNow + 4, 9, kNow).ok());
  ASSERT_TRUE(sessions.Open("b", 0, kNow).ok());
  google::protobuf::RepeatedPtrField<storage::v1::SessionRecord> records;
  sessions.Snapshot(&records);
  ASSERT_EQ(records.size(), 2);
  for (const storage::v1::SessionRecord& record : records) {
    if (record.worker_id() == "a") {
      EXPECT_EQ(record.epoch(), kNow + 4);
      EXPECT_EQ(record.highest_seq(), 9u);
    } else {
      EXPECT_EQ(record.worker_id(), "b");
      EXPECT_EQ(record.epoch(), kNow);
      EXPECT_EQ(record.highest_seq(), 0u);
    }
  }

  WorkerSessions restored(0, 0);
  ASSERT_TRUE(restored.Open("gone", 0, kNow).ok());
  restored.Restore(records);
  EXPECT_EQ(restored.size(), 2u);
  EXPECT_EQ(restored.EpochOf("gone"), 0u);
  EXPECT_EQ(restored.EpochOf("a"), kNow + 4);
  EXPECT_EQ(restored.EpochOf("b"), kNow);
  // The restored highest seq bounds the next one as before.
  EXPECT_TRUE(
      restored.Admit("a", kNow + 4, 9 + WorkerSessions::kMaxSeqAhead, kNow)
          .ok());
  EXPECT_EQ(restored.Admit("a", kNow + 3, 1, kNow).code(),
            absl::StatusCode::kFailedPrecondition);
  // A new session picks above the restored epoch.
  EXPECT_EQ(*restored.Open("a", 0, kNow), kNow + 5);
}

}  // namespace
}  // namespace ps
