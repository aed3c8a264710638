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

  void Finish(const grpc::Status& status, v1::PullResponse values) {
    if (finished.exchange(true)) return;
    if (answer != nullptr && status.ok()) *answer = std::move(values);
    reactor->Finish(status);
  }
};

// Finishes the call when it is cancelled (the client gave up, or the server
// is shutting down) while a sync push still waits for its step.
class PushReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit PushReactor(std::shared_ptr<PushCall> call)
      : call_(std::move(call)) {}

  void OnCancel() override {
    call_->Finish(grpc::Status::CANCELLED, v1::PullResponse());
  }
  void OnDone() override { delete this; }

 private:
  std::shared_ptr<PushCall> call_;
};

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context,
                                    const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

grpc::ServerUnaryReactor* ParameterServiceImpl::GetClusterInfo(
    grpc::CallbackServerContext* context, const v1::GetClusterInfoRequest*,
    v1::ClusterInfo* response) {
  *response = info_;
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* ParameterServiceImpl::CreateVariable(
    grpc::CallbackServerContext* context,
    const v1::CreateVariableRequest* request,
    v1::CreateVariableResponse* response) {
  absl::StatusOr<bool> created = store_->CreateVariable(*request);
  if (created.ok()) response->set_created(*created);
  return FinishNow(context, created.status());
}

grpc::ServerUnaryReactor* ParameterServiceImpl::Pull(
    grpc::CallbackServerContext* context, const v1::PullRequest* request,
    v1::PullResponse* response) {
  return FinishNow(context, store_->Pull(*request, response));
}

grpc::ServerUnaryReactor* ParameterServiceImpl::Push(
    grpc::CallbackServerContext*, const v1::PushRequest* request,
    v1::PushResponse*) {
  return StartPush(*request, nullptr);
}

grpc::ServerUnaryReactor* ParameterServiceImpl::PushPull(
    grpc::CallbackServerContext*, const v1::PushRequest* request,
    v1::PullResponse* response) {
  return StartPush(*request, response);
}

grpc::ServerUnaryReactor* ParameterServiceImpl::StartPush(
    const v1::PushRequest& request, v1::PullResponse* answer) {
  auto call = std::make_shared<PushCall>();
  auto* reactor = new PushReactor(call);
  call->reactor = reactor;
  call->answer = answer;

  absl::StatusOr<PreparedPush> push = store_->PreparePush(request);
  if (!push.ok()) {
    call->Finish(ToGrpcStatus(push.status()), v1::PullResponse());
    return reactor;
  }
  auto completion = std::make_shared<PushCompletion>(
      push->parts.size(), answer != nullptr, request.pull_dtype(),
      [call](absl::Status status, v1::PullResponse values) {
        call->Finish(ToGrpcStatus(status), std::move(values));
      });
  store_->ApplyPush(*std::move(push), std::move(completion));
  return reactor;
}

}  // namespace ps
