#include "server/parameter_service.h"

#include <atomic>
#include <memory>
#include <string>
#include <utility>

#include "common/slice_buffers.h"
#include "common/status.h"

namespace ps {
namespace {

// What a push's completion and its reactor share: whichever of the two
// finishes the call first wins, and the other does nothing. It outlives the
// reactor, which gRPC deletes once the call is done.
struct PushCall {
  std::atomic<bool> finished{false};
  grpc::ServerUnaryReactor* reactor = nullptr;
  grpc::ByteBuffer* response = nullptr;
  bool answer_values = false;  // PushPull: a PullResponse; Push: empty
  const RpcGate* gate = nullptr;
  uint64_t bytes_in = 0;

  void Finish(const absl::Status& status, v1::PullResponse values) {
    if (finished.exchange(true)) return;
    if (status.ok()) {
      size_t bytes_out = 0;
      if (answer_values) {
        bytes_out = SerializeAnswer(values, response);
      } else {
        v1::PushResponse empty;
        SerializeAnswer(empty, response);
      }
      gate->stats()->RecordPush(bytes_in, bytes_out);
    }
    gate->Finish(reactor, status);
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

grpc::ServerUnaryReactor* ParameterServiceImpl::GetClusterInfo(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return gate_->Serve<v1::GetClusterInfoRequest, v1::ClusterInfo>(
      context, Role::kWorker, request, response,
      [&](const Caller&, const v1::GetClusterInfoRequest&,
          v1::ClusterInfo* info) {
        *info = info_;
        info->set_restored_checkpoint(store_->counters().restored_checkpoint());
        info->set_rolled_back(store_->counters().rolled_back());
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* ParameterServiceImpl::CreateVariable(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return gate_->Serve<v1::CreateVariableRequest, v1::CreateVariableResponse>(
      context, Role::kWorker, request, response,
      [&](const Caller&, const v1::CreateVariableRequest& create,
          v1::CreateVariableResponse* answer) {
        absl::StatusOr<bool> created = store_->CreateVariable(create);
        if (created.ok()) answer->set_created(*created);
        return created.status();
      });
}

grpc::ServerUnaryReactor* ParameterServiceImpl::Pull(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  const size_t bytes_in = request->Length();
  return gate_->Serve<v1::PullRequest, v1::PullResponse>(
      context, Role::kWorker, request, response,
      [&](const Caller&, const v1::PullRequest& pull,
          v1::PullResponse* answer) {
        absl::Status status = store_->Pull(pull, answer);
        if (status.ok()) {
          store_->counters().RecordPull(bytes_in, answer->ByteSizeLong());
        }
        return status;
      });
}

grpc::ServerUnaryReactor* ParameterServiceImpl::Push(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return ServePush(context, request, response, /*answer_values=*/false);
}

grpc::ServerUnaryReactor* ParameterServiceImpl::PushPull(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return ServePush(context, request, response, /*answer_values=*/true);
}

grpc::ServerUnaryReactor* ParameterServiceImpl::OpenSession(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return gate_->Serve<v1::OpenSessionRequest, v1::OpenSessionResponse>(
      context, Role::kWorker, request, response,
      [&](const Caller& caller, const v1::OpenSessionRequest& open,
          v1::OpenSessionResponse* answer) {
        PS_RETURN_IF_ERROR(caller.CheckWorker(open.worker_id()));
        PS_ASSIGN_OR_RETURN(
            Store::Session session,
            store_->OpenSession(open.worker_id(), open.epoch()));
        answer->set_epoch(session.epoch);
        answer->set_sync_step(session.sync_step);
        answer->set_restored_checkpoint(
            store_->counters().restored_checkpoint());
        answer->set_rolled_back(store_->counters().rolled_back());
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* ParameterServiceImpl::ServePush(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response, bool answer_values) {
  auto call = std::make_shared<PushCall>();
  auto* reactor = new PushReactor(call);
  call->reactor = reactor;
  call->response = response;
  call->answer_values = answer_values;
  call->gate = gate_;
  call->bytes_in = request->Length();

  v1::PushRequest push;
  absl::StatusOr<Caller> caller =
      gate_->Admit(*context, Role::kWorker, *request, &push);
  // The received bytes are not read again: release them now rather than
  // when the answer has been sent, so a call holds one copy of its payload.
  // The request is this handler's (gRPC only destroys it when done).
  const_cast<grpc::ByteBuffer*>(request)->Clear();
  absl::Status admitted = caller.status();
  if (admitted.ok() && !push.worker_id().empty()) {
    admitted = caller->CheckWorker(push.worker_id());
  }
  if (!admitted.ok()) {
    call->Finish(admitted, v1::PullResponse());
    return reactor;
  }
  absl::StatusOr<PreparedPush> prepared =
      store_->PreparePush(push, answer_values);
  if (!prepared.ok()) {
    call->Finish(prepared.status(), v1::PullResponse());
    return reactor;
  }
  auto completion = std::make_shared<PushCompletion>(
      prepared->gradients.size(), answer_values, push.pull_dtype(),
      [call](absl::Status status, v1::PullResponse values) {
        call->Finish(status, std::move(values));
      });
  if (answer_values) {
    for (int i = 0; i < push.gradients_size(); ++i) {
      std::string* data = push.mutable_gradients(i)->mutable_data();
      // Only a heap-allocated string keeps its bytes in place when moved
      // (a short one lives inside the object, and a gradient read in place
      // would then point at moved-from storage).
      if (data->size() <= sizeof(std::string)) continue;
      completion->ReuseBuffer(static_cast<size_t>(i), std::move(*data));
    }
  }
  store_->ApplyPush(*std::move(prepared), std::move(completion));
  return reactor;
}

}  // namespace ps
