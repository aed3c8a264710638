// Test helpers that drive a VariableStore directly, as the service does: a
// push through PreparePush and ApplyPush, with its completion recorded.
#ifndef PS_TESTS_SERVER_STORE_DRIVER_H_
#define PS_TESTS_SERVER_STORE_DRIVER_H_

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "proto/ps/v1/ps.pb.h"
#include "server/store_impl.h"

namespace ps::testutil {

// The outcome of one push through PreparePush and ApplyPush.
struct PushResult {
  absl::Notification done;
  absl::Status status;
  v1::PullResponse answer;
  int calls = 0;  // how often the completion reported

  bool WaitFor(absl::Duration timeout = absl::Seconds(10)) {
    return done.WaitForNotificationWithTimeout(timeout);
  }
};

inline std::shared_ptr<PushResult> StartPush(VariableStore& store,
                                             const v1::PushRequest& request,
                                             bool with_values = true) {
  auto result = std::make_shared<PushResult>();
  absl::StatusOr<PreparedPush> prepared =
      store.PreparePush(request, with_values);
  if (!prepared.ok()) {
    result->status = prepared.status();
    result->done.Notify();
    return result;
  }
  auto completion = std::make_shared<PushCompletion>(
      prepared->gradients.size(), with_values, request.pull_dtype(),
      [result](absl::Status status, v1::PullResponse answer) {
        result->status = std::move(status);
        result->answer = std::move(answer);
        ++result->calls;
        result->done.Notify();
      });
  store.ApplyPush(*std::move(prepared), std::move(completion));
  return result;
}

// A push that must finish without waiting for others (async, or a refusal).
inline std::shared_ptr<PushResult> PushNow(VariableStore& store,
                                           const v1::PushRequest& request,
                                           bool with_values = true) {
  auto result = StartPush(store, request, with_values);
  EXPECT_TRUE(result->done.HasBeenNotified())
      << "the push did not finish at once";
  return result;
}

// A push of `worker` with `seq` in session `epoch` (a shard takes an epoch
// above the worker's known one from a push, as after OpenSession).
inline v1::PushRequest PushRequest(const std::string& worker, uint64_t seq,
                                   std::vector<v1::Slice> gradients,
                                   uint64_t step = 0, uint64_t epoch = 1) {
  v1::PushRequest request;
  request.set_worker_id(worker);
  request.set_seq(seq);
  request.set_epoch(epoch);
  request.set_step(step);
  for (v1::Slice& slice : gradients) *request.add_gradients() = slice;
  return request;
}

}  // namespace ps::testutil

#endif  // PS_TESTS_SERVER_STORE_DRIVER_H_
