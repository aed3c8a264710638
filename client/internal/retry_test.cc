#include "client/internal/retry.h"

#include "gtest/gtest.h"

namespace ps::client_internal {
namespace {

TEST(RetryableTest, OnlyUnavailableAndDeadlineExceeded) {
  EXPECT_TRUE(Retryable(grpc::Status(grpc::StatusCode::UNAVAILABLE, "")));
  EXPECT_TRUE(Retryable(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "")));
  EXPECT_FALSE(Retryable(grpc::Status::OK));
  for (grpc::StatusCode code :
       {grpc::StatusCode::ABORTED, grpc::StatusCode::INVALID_ARGUMENT,
        grpc::StatusCode::FAILED_PRECONDITION, grpc::StatusCode::INTERNAL,
        grpc::StatusCode::UNAUTHENTICATED,
        grpc::StatusCode::RESOURCE_EXHAUSTED}) {
    EXPECT_FALSE(Retryable(grpc::Status(code, ""))) << code;
  }
}

TEST(BackoffTest, GrowsByTheMultiplierUpToTheLongestWait) {
  RetryPolicy policy;
  policy.initial_backoff = absl::Milliseconds(100);
  policy.max_backoff = absl::Milliseconds(500);
  policy.backoff_multiplier = 2;
  policy.jitter = 0;
  Backoff backoff(policy);
  EXPECT_EQ(backoff.Wait(1), absl::Milliseconds(100));
  EXPECT_EQ(backoff.Wait(2), absl::Milliseconds(200));
  EXPECT_EQ(backoff.Wait(3), absl::Milliseconds(400));
  EXPECT_EQ(backoff.Wait(4), absl::Milliseconds(500));
  EXPECT_EQ(backoff.Wait(1000), absl::Milliseconds(500));
}

TEST(BackoffTest, AMultiplierOfOneWaitsTheSameEachTime) {
  RetryPolicy policy;
  policy.initial_backoff = absl::Milliseconds(30);
  policy.backoff_multiplier = 1;
  policy.jitter = 0;
  Backoff backoff(policy);
  EXPECT_EQ(backoff.Wait(1), absl::Milliseconds(30));
  EXPECT_EQ(backoff.Wait(50), absl::Milliseconds(30));
}

TEST(BackoffTest, JitterScalesEachWaitWithinItsBounds) {
  RetryPolicy policy;
  policy.initial_backoff = absl::Milliseconds(100);
  policy.max_backoff = absl::Seconds(10);
  policy.backoff_multiplier = 3;
  policy.jitter = 0.25;
  Backoff backoff(policy);
  bool varied = false;
  absl::Duration first = backoff.Wait(2);
  for (int i = 0; i < 200; ++i) {
    const absl::Duration wait = backoff.Wait(2);
    EXPECT_GE(wait, absl::Milliseconds(225));
    EXPECT_LE(wait, absl::Milliseconds(375));
    varied = varied || wait != first;
  }
  EXPECT_TRUE(varied) << "every wait was " << first;
}

}  // namespace
}  // namespace ps::client_internal
