#include "server/admin_service.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "common/optimizer_config.h"
#include "common/status.h"

namespace ps {

grpc::ServerUnaryReactor* AdminServiceImpl::GetOptimizer(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return gate_->Serve<v1::GetOptimizerRequest, v1::OptimizerConfig>(
      context, Role::kAdmin, request, response,
      [&](const Caller&, const v1::GetOptimizerRequest& get,
          v1::OptimizerConfig* answer) {
        auto config = store_->GetOptimizer(get.variable());
        if (config.ok()) *answer = *std::move(config);
        return config.status();
      });
}

grpc::ServerUnaryReactor* AdminServiceImpl::SetOptimizer(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return gate_->Serve<v1::SetOptimizerRequest, v1::SetOptimizerResponse>(
      context, Role::kAdmin, request, response,
      [&](const Caller& caller, const v1::SetOptimizerRequest& set,
          v1::SetOptimizerResponse* answer) {
        const std::string target = set.variable().empty()
                                       ? "the default optimizer"
                                       : "variable '" + set.variable() + "'";
        auto change =
            store_->SetOptimizer(set.variable(), set.config(),
                                 set.reset_state(), set.validate_only());
        if (!change.ok()) {
          spdlog::warn("{} asked to {} {} to '{}': refused: {}", caller.label,
                       set.validate_only() ? "check setting" : "set", target,
                       OptimizerConfigToText(set.config()),
                       std::string(change.status().message()));
          return change.status();
        }
        if (!set.validate_only()) {
          spdlog::info("{} set {} to '{}'{}; config version {} -> {}{}",
                       caller.label, target,
                       OptimizerConfigToText(set.config()),
                       set.reset_state() ? " with fresh state" : "",
                       change->previous_version, change->version,
                       set.variable().empty() && change->kept_overrides > 0
                           ? absl::StrCat("; ", change->kept_overrides,
                                          " variables keep their own")
                           : std::string());
        }
        answer->set_config_version(change->version);
        answer->set_previous_config_version(change->previous_version);
        answer->set_kept_overrides(change->kept_overrides);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* AdminServiceImpl::ListVariables(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return gate_->Serve<v1::ListVariablesRequest, v1::ListVariablesResponse>(
      context, Role::kAdmin, request, response,
      [&](const Caller&, const v1::ListVariablesRequest&,
          v1::ListVariablesResponse* answer) {
        *answer = store_->ListVariables();
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetStats(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return gate_->Serve<v1::GetStatsRequest, v1::Stats>(
      context, Role::kAdmin, request, response,
      [&](const Caller&, const v1::GetStatsRequest&, v1::Stats* answer) {
        *answer = stats_();
        return absl::OkStatus();
      });
}

namespace {

constexpr char kNoFolder[] =
    "this shard has no checkpoint folder; start it with --checkpoint_dir";
// Numbers stay far from overflow however many checkpoints follow.
constexpr uint64_t kMaxCheckpointNumber = uint64_t{1} << 62;

}  // namespace

grpc::ServerUnaryReactor* AdminServiceImpl::Checkpoint(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  v1::CheckpointRequest checkpoint;
  absl::StatusOr<Caller> caller =
      gate_->Admit(*context, Role::kAdmin, *request, &checkpoint);
  if (!caller.ok()) {
    gate_->Finish(reactor, caller.status());
    return reactor;
  }
  if (checkpoint_ == nullptr) {
    gate_->Finish(reactor, absl::FailedPreconditionError(kNoFolder));
    return reactor;
  }
  checkpoint_->Checkpoint([this, reactor, response, who = caller->label](
                              absl::StatusOr<v1::CheckpointResponse> written) {
    if (written.ok()) {
      spdlog::info(
          "{} asked for a checkpoint: checkpoint {} ({} parts, {} bytes, "
          "{:.3f} s, parts cut within {:.3f} s)",
          who, written->number(), written->parts_size(), written->bytes(),
          written->seconds(), written->cut_spread_seconds());
      SerializeAnswer(*written, response);
    }
    gate_->Finish(reactor, written.status());
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::WriteCheckpointPart(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  v1::WriteCheckpointPartRequest part;
  absl::StatusOr<Caller> caller =
      gate_->Admit(*context, Role::kAdmin, *request, &part);
  if (!caller.ok()) {
    gate_->Finish(reactor, caller.status());
    return reactor;
  }
  if (checkpoint_ == nullptr) {
    gate_->Finish(reactor, absl::FailedPreconditionError(kNoFolder));
    return reactor;
  }
  if (part.number() == 0 || part.number() > kMaxCheckpointNumber) {
    gate_->Finish(reactor, absl::InvalidArgumentError(absl::StrCat(
                               "checkpoint number ", part.number(),
                               " must be in 1..", kMaxCheckpointNumber)));
    return reactor;
  }
  checkpoint_->WritePart(
      part, [this, reactor, response](absl::StatusOr<v1::CheckpointPart> done) {
        if (done.ok()) SerializeAnswer(*done, response);
        gate_->Finish(reactor, done.status());
      });
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::CommitCheckpoint(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  v1::CommitCheckpointRequest commit;
  absl::StatusOr<Caller> caller =
      gate_->Admit(*context, Role::kAdmin, *request, &commit);
  if (!caller.ok()) {
    gate_->Finish(reactor, caller.status());
    return reactor;
  }
  if (checkpoint_ == nullptr) {
    gate_->Finish(reactor, absl::FailedPreconditionError(kNoFolder));
    return reactor;
  }
  checkpoint_->Commit(commit, [this, reactor, response](absl::Status done) {
    if (done.ok()) {
      v1::CommitCheckpointResponse answer;
      SerializeAnswer(answer, response);
    }
    gate_->Finish(reactor, done);
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::ListCheckpoints(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return gate_->Serve<v1::ListCheckpointsRequest, v1::ListCheckpointsResponse>(
      context, Role::kAdmin, request, response,
      [&](const Caller&, const v1::ListCheckpointsRequest&,
          v1::ListCheckpointsResponse* answer) {
        if (checkpoint_ == nullptr) {
          return absl::FailedPreconditionError(kNoFolder);
        }
        auto listed = checkpoint_->List();
        if (listed.ok()) *answer = *std::move(listed);
        return listed.status();
      });
}

grpc::ServerUnaryReactor* AdminServiceImpl::HoldSyncSteps(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return gate_->Serve<v1::HoldSyncStepsRequest, v1::HoldSyncStepsResponse>(
      context, Role::kAdmin, request, response,
      [&](const Caller&, const v1::HoldSyncStepsRequest& hold,
          v1::HoldSyncStepsResponse* answer) {
        if (!store_->options().sync) {
          return absl::FailedPreconditionError(
              "HoldSyncSteps needs --consistency=sync");
        }
        if (hold.release()) {
          store_->ReleaseSteps();
          return absl::OkStatus();
        }
        const double seconds =
            hold.hold_seconds() == 0 ? 60 : hold.hold_seconds();
        if (!(seconds >= 1 && seconds <= 600)) {
          return absl::InvalidArgumentError(
              absl::StrCat("hold_seconds ", hold.hold_seconds(),
                           " must be in 1..600 (0: 60)"));
        }
        answer->set_sync_step(store_->HoldSteps(absl::Seconds(seconds)));
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* AdminServiceImpl::RollBack(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  v1::RollBackRequest rollback;
  absl::StatusOr<Caller> caller =
      gate_->Admit(*context, Role::kAdmin, *request, &rollback);
  if (!caller.ok()) {
    gate_->Finish(reactor, caller.status());
    return reactor;
  }
  if (checkpoint_ == nullptr) {
    gate_->Finish(reactor, absl::FailedPreconditionError(kNoFolder));
    return reactor;
  }
  if (!store_->options().sync) {
    gate_->Finish(reactor,
                  absl::FailedPreconditionError(
                      "RollBack needs --consistency=sync (in async mode a "
                      "restarted shard goes on alone)"));
    return reactor;
  }
  if (rollback.number() == 0 || rollback.number() > kMaxCheckpointNumber) {
    gate_->Finish(reactor, absl::InvalidArgumentError(absl::StrCat(
                               "checkpoint number ", rollback.number(),
                               " must be in 1..", kMaxCheckpointNumber)));
    return reactor;
  }
  checkpoint_->RollBack(
      rollback,
      [this, reactor, response](absl::StatusOr<v1::RollBackResponse> done) {
        if (done.ok()) SerializeAnswer(*done, response);
        gate_->Finish(reactor, done.status());
      });
  return reactor;
}

}  // namespace ps
