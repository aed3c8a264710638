#include "client/internal/session.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/internal/fanout.h"
#include "client/internal/shard_call.h"
#include "client/internal/transport.h"
#include "common/status.h"

namespace ps::client_internal {
namespace {

// Sends OpenSession(worker, epochs[s]) to every shard s with a wanted epoch
// (nullopt: none) and collects the answers.
absl::Status OpenOn(ClientCore* core,
                    const std::vector<std::optional<uint64_t>>& epochs,
                    std::vector<v1::OpenSessionResponse>& answers) {
  size_t calls = 0;
  for (const auto& epoch : epochs) calls += epoch.has_value() ? 1 : 0;
  if (calls == 0) return absl::OkStatus();
  auto [done, future] = MakePromise();
  auto* fanout = new Fanout(core, calls, std::move(done));
  for (size_t s = 0; s < epochs.size(); ++s) {
    if (!epochs[s].has_value()) continue;
    v1::OpenSessionRequest request;
    request.set_worker_id(core->worker_id);
    request.set_epoch(*epochs[s]);
    ShardCall<v1::OpenSessionRequest, v1::OpenSessionResponse>::Start(
        core, s, std::move(request), &CallOpenSession,
        [fanout, s, &answers](const grpc::Status& status,
                              const v1::OpenSessionRequest&,
                              v1::OpenSessionResponse& answer) {
          if (status.ok()) answers[s] = std::move(answer);
          fanout->Finish(s, FromGrpcStatus(status));
        });
  }
  const absl::Status status = future.get();
  core->WaitIdle();
  return status;
}

}  // namespace

absl::Status OpenSession(ClientCore* core) {
  const size_t n = core->shards.size();
  absl::Status status;
  for (int attempt = 0; attempt < 3; ++attempt) {
    std::vector<v1::OpenSessionResponse> answers(n);
    status = OpenOn(core, std::vector<std::optional<uint64_t>>(n, 0), answers);
    if (!status.ok()) return status;
    uint64_t epoch = 0;
    uint64_t step = 0;
    for (const auto& answer : answers) {
      epoch = std::max(epoch, answer.epoch());
      step = std::max(step, answer.sync_step());
    }
    std::vector<std::optional<uint64_t>> behind(n);
    for (size_t s = 0; s < n; ++s) {
      if (answers[s].epoch() != epoch) behind[s] = epoch;
    }
    status = OpenOn(core, behind, answers);
    if (status.code() == absl::StatusCode::kAborted) continue;
    if (!status.ok()) return status;
    core->epoch = epoch;
    core->sync_step = step;
    for (size_t s = 0; s < n; ++s) {
      // A shard that went back to a checkpoint alone holds an older part
      // of the model than the others: said once per shard and checkpoint.
      if (!answers[s].rolled_back()) continue;
      const auto warned = std::make_pair(s, answers[s].restored_checkpoint());
      if (!core->rolled_back_warned.insert(warned).second) continue;
      spdlog::warn(
          "shard {} ({}) went back to checkpoint {} alone: its part of the "
          "model is older than the other shards' (training goes on)",
          s, core->shards[s]->address, answers[s].restored_checkpoint());
    }
    return absl::OkStatus();
  }
  return status;
}

namespace {

// One attempt of `Request` to every shard, in parallel.
template <typename Request, typename Response>
absl::Status SendToAll(
    ClientCore* core, absl::Duration timeout,
    void (v1::ParameterService::Stub::async_interface::*method)(
        grpc::ClientContext*, const Request*, Response*,
        std::function<void(grpc::Status)>)) {
  struct Call {
    grpc::ClientContext context;
    Request request;
    Response response;
    std::promise<grpc::Status> done;
  };
  const size_t n = core->shards.size();
  std::vector<std::unique_ptr<Call>> calls;
  std::vector<std::future<grpc::Status>> answers;
  for (size_t s = 0; s < n; ++s) {
    auto call = std::make_unique<Call>();
    PrepareContext(core->options, &call->context);
    call->context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    call->request.set_worker_id(core->worker_id);
    call->request.set_epoch(core->epoch);
    answers.push_back(call->done.get_future());
    Call* raw = call.get();
    (core->shards[s]->stub()->typed->async()->*method)(
        &raw->context, &raw->request, &raw->response,
        [raw](grpc::Status status) { raw->done.set_value(std::move(status)); });
    calls.push_back(std::move(call));
  }
  std::string failed;
  absl::StatusCode code = absl::StatusCode::kOk;
  for (size_t s = 0; s < n; ++s) {
    const absl::Status status = FromGrpcStatus(answers[s].get());
    if (status.ok()) continue;
    if (code == absl::StatusCode::kOk) code = status.code();
    absl::StrAppend(&failed, failed.empty() ? "" : "; ",
                    core->shards[s]->Name(), ": ", status.message());
  }
  if (code == absl::StatusCode::kOk) return absl::OkStatus();
  return absl::Status(code, failed);
}

}  // namespace

absl::Status HeartbeatAll(ClientCore* core, absl::Duration timeout) {
  return SendToAll<v1::HeartbeatRequest, v1::HeartbeatResponse>(
      core, timeout, &v1::ParameterService::Stub::async_interface::Heartbeat);
}

absl::Status LeaveAll(ClientCore* core, absl::Duration timeout) {
  return SendToAll<v1::LeaveRequest, v1::LeaveResponse>(
      core, timeout, &v1::ParameterService::Stub::async_interface::Leave);
}

LeaseKeeper::LeaseKeeper(ClientCore* core, absl::Duration interval)
    : core_(core), interval_(interval), thread_([this] { Run(); }) {}

void LeaseKeeper::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void LeaseKeeper::Run() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_;
      };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping), interval_)) return;
    }
    // Each heartbeat may take up to an interval: a slow shard delays the
    // next one, it never piles them up.
    const absl::Status status = HeartbeatAll(core_, interval_);
    if (!status.ok()) {
      spdlog::warn("worker {}: heartbeat failed ({}); retrying in {}",
                   core_->worker_id, status.ToString(),
                   absl::FormatDuration(interval_));
    }
  }
}

}  // namespace ps::client_internal
