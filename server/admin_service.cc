#include "server/admin_service.h"

#include <spdlog/spdlog.h>

#include "common/optimizer_config.h"
#include "common/status.h"

namespace ps {

grpc::ServerUnaryReactor* AdminServiceImpl::Finish(
    grpc::CallbackServerContext* context, const absl::Status& status) {
  if (!status.ok()) store_->stats().RecordRefusal(status.code());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetOptimizer(
    grpc::CallbackServerContext* context,
    const v1::GetOptimizerRequest* request, v1::OptimizerConfig* response) {
  if (auto who = auth_->Check(*context, Role::kAdmin); !who.ok()) {
    return Finish(context, who.status());
  }
  auto config = store_->GetOptimizer(request->variable());
  if (config.ok()) *response = *std::move(config);
  return Finish(context, config.status());
}

grpc::ServerUnaryReactor* AdminServiceImpl::SetOptimizer(
    grpc::CallbackServerContext* context,
    const v1::SetOptimizerRequest* request,
    v1::SetOptimizerResponse* response) {
  auto who = auth_->Check(*context, Role::kAdmin);
  if (!who.ok()) return Finish(context, who.status());
  const std::string target = request->variable().empty()
                                 ? "the default optimizer"
                                 : "variable '" + request->variable() + "'";
  auto change =
      store_->SetOptimizer(request->variable(), request->config(),
                           request->reset_state(), request->validate_only());
  if (!change.ok()) {
    spdlog::warn("{} asked to {} {} to '{}': refused: {}", *who,
                 request->validate_only() ? "check setting" : "set", target,
                 OptimizerConfigToText(request->config()),
                 std::string(change.status().message()));
    return Finish(context, change.status());
  }
  if (!request->validate_only()) {
    spdlog::info("{} set {} to '{}'{}; config version {} -> {}", *who, target,
                 OptimizerConfigToText(request->config()),
                 request->reset_state() ? " with fresh state" : "",
                 change->previous_version, change->version);
  }
  response->set_config_version(change->version);
  response->set_previous_config_version(change->previous_version);
  return Finish(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* AdminServiceImpl::ListVariables(
    grpc::CallbackServerContext* context, const v1::ListVariablesRequest*,
    v1::ListVariablesResponse* response) {
  if (auto who = auth_->Check(*context, Role::kAdmin); !who.ok()) {
    return Finish(context, who.status());
  }
  *response = store_->ListVariables();
  return Finish(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetStats(
    grpc::CallbackServerContext* context, const v1::GetStatsRequest*,
    v1::Stats* response) {
  if (auto who = auth_->Check(*context, Role::kAdmin); !who.ok()) {
    return Finish(context, who.status());
  }
  *response = store_->Stats();
  return Finish(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* AdminServiceImpl::Checkpoint(
    grpc::CallbackServerContext* context, const v1::CheckpointRequest*,
    v1::CheckpointResponse* response) {
  auto who = auth_->Check(*context, Role::kAdmin);
  if (!who.ok()) return Finish(context, who.status());
  if (!checkpoint_) {
    return Finish(context,
                  absl::FailedPreconditionError(
                      "this shard has no checkpoint folder; start it with "
                      "--checkpoint_dir"));
  }
  auto written = checkpoint_();
  if (!written.ok()) return Finish(context, written.status());
  spdlog::info("{} asked for a checkpoint: {} ({} bytes, {:.3f} s)", *who,
               written->path(), written->bytes(), written->seconds());
  *response = *std::move(written);
  return Finish(context, absl::OkStatus());
}

}  // namespace ps
