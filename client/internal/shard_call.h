// Private to ps::Client (see client/internal/transport.h).
//
// ShardCall: one request to one shard, retried per the client's
// RetryPolicy (retry.h), each attempt with a fresh deadline and the token
// (transport.h). The request is made once and sent by every attempt, so a
// retried push carries the same seq.
#ifndef PS_CLIENT_INTERNAL_SHARD_CALL_H_
#define PS_CLIENT_INTERNAL_SHARD_CALL_H_

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <utility>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/internal/core.h"
#include "client/internal/retry.h"
#include "client/internal/transport.h"
#include "spdlog/spdlog.h"

namespace ps::client_internal {

// Counts as a call in flight of its core from Start until `done` has
// returned; deletes itself after calling `done` once, on a gRPC thread,
// with the final status, the request and the (last) response.
//
// Thread safety: each attempt runs after the previous one has ended; no
// two threads touch one ShardCall at once.
template <typename Request, typename Response>
class ShardCall {
 public:
  // One of the Call* functions of transport.h.
  using Method = void (*)(ShardStub*, grpc::ClientContext*, const Request*,
                          Response*, std::function<void(grpc::Status)>);
  using Done =
      absl::AnyInvocable<void(const grpc::Status&, const Request&, Response&)>;

  // Sends `request` to shard `shard` of `core` with `method`.
  // REQUIRES: shard < core->shards.size(); `core` outlives the call (a
  // Client waits for its calls before it goes).
  static void Start(ClientCore* core, size_t shard, Request request,
                    Method method, Done done) {
    (new ShardCall(core, shard, std::move(request), method, std::move(done)))
        ->Attempt();
  }

 private:
  ShardCall(ClientCore* core, size_t shard, Request request, Method method,
            Done done)
      : core_(core),
        shard_(shard),
        request_(std::move(request)),
        method_(method),
        done_(std::move(done)) {
    core_->CallStarted();
  }

  void Attempt() {
    ++attempts_;
    context_ = std::make_unique<grpc::ClientContext>();
    PrepareContext(core_->options, context_.get());
    response_.Clear();
    method_(core_->shards[shard_]->stub(), context_.get(), &request_,
            &response_,
            [this](grpc::Status status) { OnDone(std::move(status)); });
  }

  void OnDone(grpc::Status status) {
    if (Retryable(status) && attempts_ < core_->options.retry.max_attempts) {
      const absl::Duration wait = core_->backoff.Wait(attempts_);
      spdlog::debug("{} answered {} ({}); attempt {} in {}",
                    core_->shards[shard_]->Name(),
                    absl::StatusCodeToString(
                        static_cast<absl::StatusCode>(status.error_code())),
                    status.error_message(), attempts_ + 1,
                    absl::FormatDuration(wait));
      // The previous alarm, if any, has fired: it started this attempt.
      retry_alarm_ = std::make_unique<grpc::Alarm>();
      retry_alarm_->Set(absl::ToChronoTime(absl::Now() + wait),
                        [this](bool) { Attempt(); });
      return;
    }
    ClientCore* core = core_;
    done_(status, request_, response_);
    delete this;
    core->CallEnded();
  }

  ClientCore* const core_;
  const size_t shard_;
  const Request request_;
  const Method method_;
  Done done_;
  int attempts_ = 0;
  std::unique_ptr<grpc::ClientContext> context_;
  Response response_;
  std::unique_ptr<grpc::Alarm> retry_alarm_;
};

}  // namespace ps::client_internal

#endif  // PS_CLIENT_INTERNAL_SHARD_CALL_H_
