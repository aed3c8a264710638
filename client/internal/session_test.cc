#include "client/internal/session.h"

#include <memory>
#include <vector>

#include "absl/synchronization/notification.h"
#include "client/internal/core_for_test.h"
#include "client/internal/shard_call.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ps::client_internal {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

using Fakes = std::vector<std::unique_ptr<::ps::testing::RunningFakeShard>>;

std::vector<uint64_t> EpochsAsked(::ps::testing::FakeShard& fake) {
  absl::MutexLock lock(&fake.mu);
  std::vector<uint64_t> epochs;
  for (const v1::OpenSessionRequest& open : fake.opens) {
    EXPECT_EQ(open.worker_id(), "w");
    epochs.push_back(open.epoch());
  }
  return epochs;
}

TEST(OpenSessionTest, EveryShardHoldsTheSameEpoch) {
  Fakes fakes = StartFakes(3, 4);
  std::unique_ptr<ClientCore> core = CoreForTest(fakes, 4);
  ASSERT_NE(core, nullptr);
  ASSERT_TRUE(OpenSession(core.get()).ok());
  EXPECT_EQ(core->epoch, 1u);
  for (const auto& fake : fakes) {
    EXPECT_THAT(EpochsAsked(*fake->service), ElementsAre(0));
  }
}

TEST(OpenSessionTest, ShardsThatPickedALowerEpochAreMovedToTheHighest) {
  Fakes fakes = StartFakes(3, 4);
  std::unique_ptr<ClientCore> core = CoreForTest(fakes, 4);
  ASSERT_NE(core, nullptr);
  // An earlier process with this worker id opened a session on shard 1
  // only: shard 1 picks epoch 2, the others 1.
  absl::Notification opened;
  v1::OpenSessionRequest earlier;
  earlier.set_worker_id("w");
  ShardCall<v1::OpenSessionRequest, v1::OpenSessionResponse>::Start(
      core.get(), 1, earlier, &CallOpenSession,
      [&](const grpc::Status& status, const v1::OpenSessionRequest&,
          v1::OpenSessionResponse&) {
        EXPECT_TRUE(status.ok());
        opened.Notify();
      });
  opened.WaitForNotification();
  core->WaitIdle();

  ASSERT_TRUE(OpenSession(core.get()).ok());
  EXPECT_EQ(core->epoch, 2u);
  EXPECT_THAT(EpochsAsked(*fakes[0]->service), ElementsAre(0, 2));
  EXPECT_THAT(EpochsAsked(*fakes[1]->service), ElementsAre(0, 0));
  EXPECT_THAT(EpochsAsked(*fakes[2]->service), ElementsAre(0, 2));
}

TEST(OpenSessionTest, AShardThatDoesNotAnswerIsNamed) {
  Fakes fakes = StartFakes(2, 4);
  ClientOptions options;
  options.retry.max_attempts = 1;
  options.call_timeout = absl::Seconds(5);
  std::unique_ptr<ClientCore> core = CoreForTest(fakes, 4, options);
  ASSERT_NE(core, nullptr);
  fakes[1]->server->Shutdown();
  const absl::Status status = OpenSession(core.get());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), HasSubstr("shard 1 ("));
  EXPECT_THAT(status.message(), ::testing::Not(HasSubstr("shard 0")));
}

}  // namespace
}  // namespace ps::client_internal
