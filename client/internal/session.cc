#include "client/internal/session.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <optional>
#include <vector>

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

}  // namespace ps::client_internal
