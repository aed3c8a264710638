#include "client/internal/core.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "client/internal/fanout.h"
#include "client/internal/shard_call.h"
#include "common/status.h"

namespace ps::client_internal {

void ClientCore::CallStarted() {
  absl::MutexLock lock(&mu_);
  ++in_flight_;
}

void ClientCore::CallEnded() {
  absl::MutexLock lock(&mu_);
  --in_flight_;
}

void ClientCore::WaitIdle() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* in_flight) { return *in_flight == 0; }, &in_flight_));
}

void ClientCore::RememberSize(const std::string& name, uint64_t size) {
  absl::MutexLock lock(&sizes_mu_);
  sizes_[name] = size;
}

absl::Status ClientCore::CheckSize(std::string_view name, uint64_t size,
                                   std::string_view what) {
  absl::ReaderMutexLock lock(&sizes_mu_);
  auto it = sizes_.find(absl::string_view(name.data(), name.size()));
  if (it == sizes_.end() || it->second == size) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "variable ", it->first, " has ", it->second, " values but the ",
      absl::string_view(what.data(), what.size()), " has ", size));
}

void ClientCore::StartPush(std::vector<PushItem> items, Outputs outputs,
                           const PushOptions& push_options, DoneCallback done) {
  const bool answered = outputs != nullptr;
  v1::PushRequest header;
  header.set_worker_id(worker_id);
  header.set_epoch(epoch);
  header.set_step(push_options.step);
  if (push_options.loss.has_value()) header.set_loss(*push_options.loss);
  if (answered) header.set_pull_dtype(push_options.pull_dtype);
  absl::StatusOr<ShardParts<v1::PushRequest>> parts = SplitPush(
      *plan, items, header, push_options.dtype, answered, split_limits());
  Fanout* fanout = StartFanout(this, parts, done);
  if (fanout == nullptr) return;
  const v1::DType pull_dtype = push_options.pull_dtype;
  for (size_t s = 0; s < parts->size(); ++s) {
    std::vector<PushLane::Send> sends;
    for (Part<v1::PushRequest>& part : (*parts)[s]) {
      sends.push_back([this, fanout, s, part = std::move(part), outputs,
                       pull_dtype](uint64_t seq) mutable {
        part.request.set_seq(seq);
        EncodedPush request = EncodePush(std::move(part.request));
        if (outputs == nullptr) {
          ShardCall<EncodedPush, grpc::ByteBuffer>::Start(
              this, s, std::move(request), &CallPush,
              [this, fanout, s](const grpc::Status& status, const EncodedPush&,
                                grpc::ByteBuffer&) {
                lanes[s]->Release();
                fanout->Finish(s, FromGrpcStatus(status));
              });
          return;
        }
        ShardCall<EncodedPush, ReceivedSlices>::Start(
            this, s, std::move(request), &CallPushPull,
            [this, fanout, s, items = std::move(part.items), outputs,
             pull_dtype](const grpc::Status& status, const EncodedPush& request,
                         ReceivedSlices& response) {
              absl::Status result = FromGrpcStatus(status);
              if (result.ok()) {
                result = DecodeAnswer(request.head.gradients(), items,
                                      pull_dtype, response.message.values(),
                                      response.data, *outputs);
              }
              lanes[s]->Release();
              fanout->Finish(s, std::move(result));
            });
      });
    }
    if (!sends.empty()) lanes[s]->Enqueue(std::move(sends));
  }
}

void ClientCore::StartPull(std::vector<PullItem> items, Outputs outputs,
                           const PullOptions& pull_options, DoneCallback done) {
  absl::StatusOr<ShardParts<v1::PullRequest>> parts =
      SplitPull(*plan, items, pull_options.dtype, split_limits());
  Fanout* fanout = StartFanout(this, parts, done);
  if (fanout == nullptr) return;
  const v1::DType dtype = pull_options.dtype;
  for (size_t s = 0; s < parts->size(); ++s) {
    for (Part<v1::PullRequest>& part : (*parts)[s]) {
      if (pull_options.step.has_value()) {
        part.request.set_worker_id(worker_id);
        part.request.set_step(*pull_options.step);
      }
      ShardCall<EncodedPull, ReceivedSlices>::Start(
          this, s, EncodePull(std::move(part.request)), &CallPull,
          [fanout, s, items = std::move(part.items), outputs, dtype](
              const grpc::Status& status, const EncodedPull& request,
              ReceivedSlices& response) {
            absl::Status result = FromGrpcStatus(status);
            if (result.ok()) {
              result = DecodeAnswer(request.head.slices(), items, dtype,
                                    response.message.values(), response.data,
                                    *outputs);
            }
            fanout->Finish(s, std::move(result));
          });
    }
  }
}

}  // namespace ps::client_internal
