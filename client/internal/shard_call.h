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
#include <optional>
#include <string>
#include <utility>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/internal/core.h"
#include "client/internal/retry.h"
#include "client/internal/transport.h"
#include "spdlog/spdlog.h"

namespace ps::client_internal {

// A request that fails with a retryable error is tried again after the
// policy's backoff while attempts are left (max_attempts, 0 = no limit) and
// the wait ends within the policy's deadline from its first attempt. An
// outage of a shard is logged when it starts, when it ends and when a
// request gives up on it, not at every attempt.
//
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
  static std::string CodeName(const grpc::Status& status) {
    return absl::StatusCodeToString(
        static_cast<absl::StatusCode>(status.error_code()));
  }

  ShardCall(ClientCore* core, size_t shard, Request request, Method method,
            Done done)
      : core_(core),
        shard_(shard),
        request_(std::move(request)),
        method_(method),
        done_(std::move(done)),
        first_attempt_(absl::Now()) {
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
    Shard& shard = *core_->shards[shard_];
    const absl::Time now = absl::Now();
    if (Retryable(status)) {
      const RetryPolicy& policy = core_->options.retry;
      const absl::Duration wait = core_->backoff.Wait(attempts_);
      const bool attempts_left =
          policy.max_attempts == 0 || attempts_ < policy.max_attempts;
      if (attempts_left && now + wait - first_attempt_ <= policy.deadline) {
        if (shard.MarkDown(now)) {
          spdlog::warn("{} is unreachable ({}: {}); retrying for up to {}",
                       shard.Name(), CodeName(status), status.error_message(),
                       absl::FormatDuration(policy.deadline));
        }
        // The previous alarm, if any, has fired: it started this attempt.
        retry_alarm_ = std::make_unique<grpc::Alarm>();
        retry_alarm_->Set(absl::ToChronoTime(now + wait),
                          [this](bool) { Attempt(); });
        return;
      }
      shard.MarkDown(now);
      spdlog::warn(
          "{} gave no answer ({}: {}); down for {}, giving up after {}",
          shard.Name(), CodeName(status), status.error_message(),
          absl::FormatDuration(shard.DownFor(now)),
          attempts_ == 1 ? std::string("1 attempt")
                         : absl::StrCat(attempts_, " attempts"));
    } else if (std::optional<absl::Duration> down = shard.MarkUp(now)) {
      spdlog::info("{} answers again after {} down", shard.Name(),
                   absl::FormatDuration(*down));
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
  const absl::Time first_attempt_;
  int attempts_ = 0;
  std::unique_ptr<grpc::ClientContext> context_;
  Response response_;
  std::unique_ptr<grpc::Alarm> retry_alarm_;
};

}  // namespace ps::client_internal

#endif  // PS_CLIENT_INTERNAL_SHARD_CALL_H_
