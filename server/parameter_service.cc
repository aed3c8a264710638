#include "server/parameter_service.h"

#include <atomic>
#include <memory>
#include <utility>

#include "common/status.h"

namespace ps {
namespace {

// What a push's completion and its reactor share: whichever of the two
// finishes the call first wins, and the other does nothing. It outlives the
// reactor, which gRPC deletes once the call is done.
struct PushCall {
  std::atomic<bool> finished{false};
  grpc::ServerUnaryReactor* reactor = nullptr;
  v1::PullResponse* answer = nullptr;  // null for Push
  ServerStats* stats = nullptr;
  uint64_t bytes_in = 0;

  void Finish(const absl::Status& status, v1::PullResponse values) {
    if (finished.exchange(true)) return;
    if (status.ok()) {
      if (answer != nullptr) *answer = std::move(values);
      stats->RecordPush(bytes_in,
                        answer != nullptr ? answer->ByteSizeLong() : 0);
    } else {
      stats->RecordRefusal(status.code());
    }
    reactor->Finish(ToGrpcStatus(status));
  }
};

// Finishes the call when it is cancelled (the client gave up, or the server
// is shutting down) while a sync push still waits for its step.
class PushReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit PushReactor(std::shared_ptr<PushCall> call)
      : call_(std::move(call)) {}

  void OnCancel() override {
    call_->Finish(absl::CancelledError("the call was cancelled"),
                  v1::PullResponse());
  }
  void OnDone() override { delete this; }

 private:
  std::shared_ptr<PushCall> call_;
};

}  // namespace

grpc::ServerUnaryReactor* ParameterServiceImpl::FinishNow(
    grpc::CallbackServerContext* context, const absl::Status& status) {
  if (!status.ok()) store_->stats().RecordRefusal(status.code());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* ParameterServiceImpl::GetClusterInfo(
    grpc::CallbackServerContext* context, const v1::GetClusterInfoRequest*,
    v1::ClusterInfo* response) {
  if (auto who = auth_->Check(*context, Role::kWorker); !who.ok()) {
    return FinishNow(context, who.status());
  }
  *response = info_;
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* ParameterServiceImpl::CreateVariable(
    grpc::CallbackServerContext* context,
    const v1::CreateVariableRequest* request,
    v1::CreateVariableResponse* response) {
  if (auto who = auth_->Check(*context, Role::kWorker); !who.ok()) {
    return FinishNow(context, who.status());
  }
  absl::StatusOr<bool> created = store_->CreateVariable(*request);
  if (created.ok()) response->set_created(*created);
  return FinishNow(context, created.status());
}

grpc::ServerUnaryReactor* ParameterServiceImpl::Pull(
    grpc::CallbackServerContext* context, const v1::PullRequest* request,
    v1::PullResponse* response) {
  if (auto who = auth_->Check(*context, Role::kWorker); !who.ok()) {
    return FinishNow(context, who.status());
  }
  absl::Status status = store_->Pull(*request, response);
  if (status.ok()) {
    store_->stats().RecordPull(request->ByteSizeLong(),
                               response->ByteSizeLong());
  }
  return FinishNow(context, status);
}

grpc::ServerUnaryReactor* ParameterServiceImpl::Push(
    grpc::CallbackServerContext* context, const v1::PushRequest* request,
    v1::PushResponse*) {
  return StartPush(context, *request, nullptr);
}

grpc::ServerUnaryReactor* ParameterServiceImpl::PushPull(
    grpc::CallbackServerContext* context, const v1::PushRequest* request,
    v1::PullResponse* response) {
  return StartPush(context, *request, response);
}

grpc::ServerUnaryReactor* ParameterServiceImpl::StartPush(
    grpc::CallbackServerContext* context, const v1::PushRequest& request,
    v1::PullResponse* answer) {
  auto call = std::make_shared<PushCall>();
  auto* reactor = new PushReactor(call);
  call->reactor = reactor;
  call->answer = answer;
  call->stats = &store_->stats();
  call->bytes_in = request.ByteSizeLong();

  if (auto who = auth_->Check(*context, Role::kWorker); !who.ok()) {
    call->Finish(who.status(), v1::PullResponse());
    return reactor;
  }
  absl::StatusOr<PreparedPush> push = store_->PreparePush(request);
  if (!push.ok()) {
    call->Finish(push.status(), v1::PullResponse());
    return reactor;
  }
  auto completion = std::make_shared<PushCompletion>(
      push->parts.size(), answer != nullptr, request.pull_dtype(),
      [call](absl::Status status, v1::PullResponse values) {
        call->Finish(status, std::move(values));
      });
  store_->ApplyPush(*std::move(push), std::move(completion));
  return reactor;
}

}  // namespace ps
