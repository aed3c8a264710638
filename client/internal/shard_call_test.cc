#include "client/internal/shard_call.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "client/internal/core_for_test.h"
#include "common/wire.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ps::client_internal {
namespace {

using ::testing::Each;
using ::testing::Property;

class ShardCallTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fakes_ = StartFakes(1, 4);
    ClientOptions options;
    options.retry.max_attempts = 3;
    options.retry.initial_backoff = absl::Milliseconds(1);
    options.retry.max_backoff = absl::Milliseconds(5);
    core_ = CoreForTest(fakes_, 4, options);
    ASSERT_NE(core_, nullptr);
    v1::CreateVariableRequest create;
    create.set_name("x");
    create.add_shape(4);
    absl::Notification created;
    ShardCall<v1::CreateVariableRequest, v1::CreateVariableResponse>::Start(
        core_.get(), 0, create, &CallCreateVariable,
        [&](const grpc::Status& status, const v1::CreateVariableRequest&,
            v1::CreateVariableResponse& response) {
          EXPECT_TRUE(status.ok()) << status.error_message();
          EXPECT_TRUE(response.created());
          created.Notify();
        });
    created.WaitForNotification();
    // The call ends after its callback: a test that tears down at once
    // (ByDefaultRetriesForTwoMinutes) must not free the core and the
    // shard under it.
    core_->WaitIdle();
  }

  ::ps::testing::FakeShard& fake() { return *fakes_[0]->service; }

  // Pushes a gradient of ones with `seq` and returns the final status.
  grpc::Status Push(uint64_t seq) {
    v1::PushRequest request;
    request.set_worker_id("w");
    request.set_seq(seq);
    v1::Slice* slice = request.add_gradients();
    slice->set_variable("x");
    slice->set_length(4);
    const std::vector<float> ones(4, 1.0f);
    EncodeValues(v1::FLOAT32, ones, slice->mutable_data());
    absl::Notification done;
    grpc::Status result;
    ShardCall<EncodedPush, grpc::ByteBuffer>::Start(
        core_.get(), 0, EncodePush(std::move(request)), &CallPush,
        [&](const grpc::Status& status, const EncodedPush& sent,
            grpc::ByteBuffer&) {
          EXPECT_EQ(sent.head.seq(), seq);
          result = status;
          done.Notify();
        });
    done.WaitForNotification();
    core_->WaitIdle();
    return result;
  }

  std::vector<std::unique_ptr<::ps::testing::RunningFakeShard>> fakes_;
  std::unique_ptr<ClientCore> core_;
};

TEST_F(ShardCallTest, RetriesUnavailableWithTheSameRequest) {
  {
    absl::MutexLock lock(&fake().mu);
    fake().unavailable_pushes = 2;
  }
  EXPECT_TRUE(Push(5).ok());
  absl::MutexLock lock(&fake().mu);
  ASSERT_EQ(fake().pushes.size(), 3u);
  EXPECT_THAT(fake().pushes, Each(Property(&v1::PushRequest::seq, 5u)));
  EXPECT_EQ(fake().applied, 1);
}

TEST_F(ShardCallTest, GivesUpAfterMaxAttempts) {
  {
    absl::MutexLock lock(&fake().mu);
    fake().unavailable_pushes = 10;
  }
  const grpc::Status status = Push(1);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  absl::MutexLock lock(&fake().mu);
  EXPECT_EQ(fake().pushes.size(), 3u);
  EXPECT_EQ(fake().applied, 0);
}

TEST_F(ShardCallTest, OtherErrorsAreNotRetried) {
  {
    absl::MutexLock lock(&fake().mu);
    fake().error = grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "no");
  }
  const grpc::Status status = Push(1);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  absl::MutexLock lock(&fake().mu);
  EXPECT_EQ(fake().pushes.size(), 1u);
}

TEST_F(ShardCallTest, EachAttemptHasItsOwnDeadline) {
  // Two slow answers, each longer than one attempt may take: the third
  // attempt, with a fresh deadline, is answered in time.
  ClientOptions options;
  options.call_timeout = absl::Milliseconds(300);
  options.retry.max_attempts = 3;
  options.retry.initial_backoff = absl::Milliseconds(1);
  options.retry.max_backoff = absl::Milliseconds(1);
  core_ = CoreForTest(fakes_, 4, options);
  ASSERT_NE(core_, nullptr);
  {
    absl::MutexLock lock(&fake().mu);
    fake().slow_pushes = 2;
    fake().slow_push_delay = absl::Seconds(1);
  }
  EXPECT_TRUE(Push(1).ok());
  absl::MutexLock lock(&fake().mu);
  EXPECT_EQ(fake().pushes.size(), 3u);
  EXPECT_EQ(fake().applied, 1) << "a retry was applied twice";
}

TEST_F(ShardCallTest, WithoutAnAttemptLimitRetriesUntilTheDeadline) {
  ClientOptions options;
  options.retry.max_attempts = 0;  // no limit: the deadline bounds retries
  options.retry.deadline = absl::Milliseconds(300);
  options.retry.initial_backoff = absl::Milliseconds(20);
  options.retry.max_backoff = absl::Milliseconds(20);
  options.retry.jitter = 0;
  core_ = CoreForTest(fakes_, 4, options);
  ASSERT_NE(core_, nullptr);
  {
    absl::MutexLock lock(&fake().mu);
    fake().unavailable_pushes = 1000;
  }
  const absl::Time start = absl::Now();
  const grpc::Status status = Push(1);
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_GE(took, absl::Milliseconds(250));
  EXPECT_LT(took, absl::Seconds(5));
  absl::MutexLock lock(&fake().mu);
  // About one attempt per 20 ms wait within 300 ms: far more than the
  // old default of 5, and none past the deadline.
  EXPECT_GT(fake().pushes.size(), 5u);
  EXPECT_LE(fake().pushes.size(), 16u);
  EXPECT_EQ(fake().applied, 0);
}

TEST_F(ShardCallTest, ByDefaultRetriesForTwoMinutes) {
  const RetryPolicy policy;
  EXPECT_EQ(policy.deadline, absl::Seconds(120));
  EXPECT_EQ(policy.max_attempts, 0);
}

}  // namespace
}  // namespace ps::client_internal
