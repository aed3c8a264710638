#include "client/internal/core.h"

#include <algorithm>
#include <future>
#include <memory>
#include <numeric>
#include <span>
#include <vector>

#include "client/internal/core_for_test.h"
#include "client/internal/fanout.h"
#include "client/internal/session.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ps::client_internal {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

TEST(ClientCoreSizesTest, RefusesASizeOtherThanTheOneRemembered) {
  ClientCore core{ClientOptions()};
  EXPECT_TRUE(core.CheckSize("w", 10, "gradient").ok()) << "unknown: any";
  core.RememberSize("w", 12);
  EXPECT_TRUE(core.CheckSize("w", 12, "gradient").ok());
  const absl::Status status = core.CheckSize("w", 10, "output");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "variable w has 12 values but the output has 10");
  core.RememberSize("w", 10);
  EXPECT_TRUE(core.CheckSize("w", 10, "gradient").ok());
}

class ClientCoreCallTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fakes_ = StartFakes(2, 4);
    ClientOptions options;
    options.part_bytes = 16;  // one block of 4 float32 per part
    core_ = CoreForTest(fakes_, 4, options);
    ASSERT_NE(core_, nullptr);
    ASSERT_TRUE(OpenSession(core_.get()).ok());
    // "x" has 10 values: blocks of 4, 4 and 2 over the two shards.
    for (const auto& fake : fakes_) {
      v1::CreateVariableRequest create;
      create.set_name("x");
      create.add_shape(10);
      grpc::ServerContext context;
      v1::CreateVariableResponse response;
      ASSERT_TRUE(
          fake->service->CreateVariable(&context, &create, &response).ok());
    }
  }

  absl::Status Push(const std::vector<float>& gradient,
                    std::vector<float>* values = nullptr) {
    std::vector<PushItem> items = {{"x", gradient}};
    Outputs outputs;
    if (values != nullptr) {
      outputs = std::make_shared<const std::vector<std::span<float>>>(
          std::vector<std::span<float>>{*values});
    }
    auto [done, future] = MakePromise();
    core_->StartPush(std::move(items), {}, outputs, PushOptions(),
                     std::move(done));
    return future.get();
  }

  absl::Status Pull(std::vector<float>& values) {
    std::vector<PullItem> items = {{"x", values.size()}};
    auto outputs = std::make_shared<const std::vector<std::span<float>>>(
        std::vector<std::span<float>>{values});
    auto [done, future] = MakePromise();
    core_->StartPull(std::move(items), outputs, PullOptions(), std::move(done));
    return future.get();
  }

  // A call's last steps (its shard calls ending) may run after its callback
  // has answered; the core must outlive them, as Client's destructor waits.
  void TearDown() override {
    if (core_ != nullptr) core_->WaitIdle();
  }

  std::vector<std::unique_ptr<::ps::testing::RunningFakeShard>> fakes_;
  std::unique_ptr<ClientCore> core_;
};

TEST_F(ClientCoreCallTest, APushReachesEveryBlockAndAPullReadsThemBack) {
  std::vector<float> gradient(10);
  std::iota(gradient.begin(), gradient.end(), 1.0f);
  ASSERT_TRUE(Push(gradient).ok());
  std::vector<float> values(10);
  ASSERT_TRUE(Pull(values).ok());
  // SGD with lr = 1 from zeros.
  EXPECT_THAT(values, ElementsAre(-1, -2, -3, -4, -5, -6, -7, -8, -9, -10));
  for (const auto& fake : fakes_) {
    absl::MutexLock lock(&fake->service->mu);
    EXPECT_THAT(fake->service->violations, ::testing::IsEmpty());
  }
}

TEST_F(ClientCoreCallTest, APushPullAnswersTheValuesAfterIt) {
  std::vector<float> values(10);
  ASSERT_TRUE(Push(std::vector<float>(10, 1.0f)).ok());
  ASSERT_TRUE(Push(std::vector<float>(10, 2.0f), &values).ok());
  EXPECT_THAT(values, ElementsAreArray(std::vector<float>(10, -3.0f)));
}

TEST_F(ClientCoreCallTest, EachShardNumbersItsRequestsFromOne) {
  ASSERT_TRUE(Push(std::vector<float>(10, 1.0f)).ok());
  ASSERT_TRUE(Push(std::vector<float>(10, 1.0f)).ok());
  // Blocks 0 and 2 are on one shard, block 1 on the other: one part each.
  std::vector<std::vector<uint64_t>> seqs;
  for (const auto& fake : fakes_) {
    absl::MutexLock lock(&fake->service->mu);
    std::vector<uint64_t> shard_seqs;
    for (const v1::PushRequest& push : fake->service->pushes) {
      EXPECT_EQ(push.worker_id(), "w");
      EXPECT_EQ(push.epoch(), core_->epoch);
      shard_seqs.push_back(push.seq());
    }
    // One call's requests to a shard are in flight together, so they may
    // arrive in any order; the numbers they carry are what counts.
    std::sort(shard_seqs.begin(), shard_seqs.end());
    seqs.push_back(shard_seqs);
  }
  std::sort(seqs.begin(), seqs.end(),
            [](const auto& a, const auto& b) { return a.size() < b.size(); });
  EXPECT_THAT(seqs[0], ElementsAre(1, 2));
  EXPECT_THAT(seqs[1], ElementsAre(1, 2, 3, 4));
}

TEST_F(ClientCoreCallTest, ACallThatCannotBeSplitEndsAtOnce) {
  // Blocks of 1000 float32 values do not fit in messages of 1 KiB.
  ClientOptions options;
  options.max_message_bytes = 1024;
  std::unique_ptr<ClientCore> small = CoreForTest(fakes_, 1000, options);
  ASSERT_NE(small, nullptr);
  const std::vector<float> gradient(1000);
  bool called = false;
  small->StartPush(
      {{"x", gradient}}, {}, nullptr, PushOptions(), [&](absl::Status status) {
        called = true;
        EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
        EXPECT_THAT(status.message(), HasSubstr("does not fit in one message"));
      });
  EXPECT_TRUE(called) << "done must run before StartPush returns";

  called = false;
  core_->StartPull({}, std::make_shared<const std::vector<std::span<float>>>(),
                   PullOptions(), [&](absl::Status status) {
                     called = true;
                     EXPECT_TRUE(status.ok()) << status;
                   });
  EXPECT_TRUE(called) << "an empty call ends at once";
  for (const auto& fake : fakes_) {
    absl::MutexLock lock(&fake->service->mu);
    EXPECT_TRUE(fake->service->pushes.empty());
    EXPECT_TRUE(fake->service->pulls.empty());
  }
}

}  // namespace
}  // namespace ps::client_internal
