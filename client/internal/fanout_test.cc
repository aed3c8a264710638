#include "client/internal/fanout.h"

#include <atomic>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ps::client_internal {
namespace {

// A core with `n` shards named "shard s (host-s:1)"; nothing is sent.
std::unique_ptr<ClientCore> CoreWithShards(int n) {
  auto core = std::make_unique<ClientCore>(ClientOptions());
  for (int s = 0; s < n; ++s) {
    auto shard = std::make_unique<Shard>();
    shard->address = absl::StrCat("host-", s, ":1");
    shard->index = s;
    core->shards.push_back(std::move(shard));
  }
  return core;
}

// Records the outcome of a call.
struct Outcome {
  Client::DoneCallback Callback() {
    return [this](absl::Status status) {
      ++calls;
      result = std::move(status);
    };
  }
  int calls = 0;
  std::optional<absl::Status> result;
};

TEST(FanoutTest, EndsOnceWhenTheLastRequestHasEnded) {
  auto core = CoreWithShards(3);
  Outcome outcome;
  auto* fanout = new Fanout(core.get(), 3, outcome.Callback());
  fanout->Finish(0, absl::OkStatus());
  fanout->Finish(2, absl::OkStatus());
  EXPECT_EQ(outcome.calls, 0);
  fanout->Finish(1, absl::OkStatus());
  EXPECT_EQ(outcome.calls, 1);
  EXPECT_TRUE(outcome.result->ok()) << *outcome.result;
  core->WaitIdle();
}

TEST(FanoutTest, NamesEveryFailedShardInIndexOrderWithItsFirstError) {
  auto core = CoreWithShards(3);
  Outcome outcome;
  auto* fanout = new Fanout(core.get(), 4, outcome.Callback());
  fanout->Finish(2, absl::UnavailableError("gone"));
  fanout->Finish(0, absl::OkStatus());
  fanout->Finish(1, absl::NotFoundError("no w"));
  fanout->Finish(2, absl::InternalError("later"));
  ASSERT_EQ(outcome.calls, 1);
  // The code is that of the lowest failed shard.
  EXPECT_EQ(outcome.result->code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(outcome.result->message(),
            "shard 1 (host-1:1): NOT_FOUND: no w; "
            "shard 2 (host-2:1): UNAVAILABLE: gone");
}

TEST(FanoutTest, CountsAsACallInFlightUntilItEnds) {
  auto core = CoreWithShards(1);
  Outcome outcome;
  auto* fanout = new Fanout(core.get(), 1, outcome.Callback());
  absl::Notification idle;
  std::thread waiter([&] {
    core->WaitIdle();
    idle.Notify();
  });
  EXPECT_FALSE(idle.WaitForNotificationWithTimeout(absl::Milliseconds(50)));
  fanout->Finish(0, absl::OkStatus());
  EXPECT_TRUE(idle.WaitForNotificationWithTimeout(absl::Seconds(10)));
  waiter.join();
}

TEST(FanoutTest, RequestsMayEndOnManyThreads) {
  auto core = CoreWithShards(4);
  std::atomic<int> calls{0};
  absl::Notification done;
  constexpr int kRequests = 400;
  auto* fanout = new Fanout(core.get(), kRequests, [&](absl::Status status) {
    EXPECT_EQ(status.code(), absl::StatusCode::kAborted);
    ++calls;
    done.Notify();
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([fanout, t] {
      for (int i = 0; i < kRequests / 4; ++i) {
        fanout->Finish(
            t, t == 3 && i == 7 ? absl::AbortedError("x") : absl::OkStatus());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  done.WaitForNotification();
  EXPECT_EQ(calls.load(), 1);
  core->WaitIdle();
}

TEST(StartFanoutTest, ASplitErrorOrNothingToSendEndsTheCallAtOnce) {
  auto core = CoreWithShards(2);
  Outcome failed;
  Client::DoneCallback done = failed.Callback();
  absl::StatusOr<ShardParts<v1::PullRequest>> error =
      absl::InvalidArgumentError("too large");
  EXPECT_EQ(StartFanout(core.get(), error, done), nullptr);
  ASSERT_EQ(failed.calls, 1);
  EXPECT_EQ(failed.result->code(), absl::StatusCode::kInvalidArgument);

  Outcome empty;
  done = empty.Callback();
  absl::StatusOr<ShardParts<v1::PullRequest>> nothing =
      ShardParts<v1::PullRequest>(2);
  EXPECT_EQ(StartFanout(core.get(), nothing, done), nullptr);
  ASSERT_EQ(empty.calls, 1);
  EXPECT_TRUE(empty.result->ok());
}

TEST(StartFanoutTest, WaitsForEveryPartOfEveryShard) {
  auto core = CoreWithShards(2);
  Outcome outcome;
  Client::DoneCallback done = outcome.Callback();
  ShardParts<v1::PullRequest> parts(2);
  parts[0].resize(2);
  parts[1].resize(1);
  absl::StatusOr<ShardParts<v1::PullRequest>> split = std::move(parts);
  Fanout* fanout = StartFanout(core.get(), split, done);
  ASSERT_NE(fanout, nullptr);
  fanout->Finish(0, absl::OkStatus());
  fanout->Finish(1, absl::OkStatus());
  EXPECT_EQ(outcome.calls, 0);
  fanout->Finish(0, absl::OkStatus());
  EXPECT_EQ(outcome.calls, 1);
}

TEST(MakePromiseTest, TheCallbackFulfilsTheFuture) {
  auto [done, future] = MakePromise();
  done(absl::DataLossError("x"));
  EXPECT_EQ(future.get().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace ps::client_internal
