#include "server/parameter_service.h"

#include <grpcpp/support/proto_buffer_reader.h>

#include <atomic>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/slice_buffers.h"
#include "common/status.h"

namespace ps {
namespace {

// Parses a request as gRPC's generated handlers do.
bool ParseRequest(const grpc::ByteBuffer& request,
                  google::protobuf::MessageLite* message) {
  grpc::ByteBuffer bytes(request);  // shares the slices
  grpc::ProtoBufferReader reader(&bytes);
  return reader.status().ok() && message->ParseFromZeroCopyStream(&reader);
}

// What a push's completion and its reactor share: whichever of the two
// finishes the call first wins, and the other does nothing. It outlives the
// reactor, which gRPC deletes once the call is done.
struct PushCall {
  std::atomic<bool> finished{false};
  grpc::ServerUnaryReactor* reactor = nullptr;
  grpc::ByteBuffer* answer = nullptr;  // null for Push
  ServerStats* stats = nullptr;
  uint64_t bytes_in = 0;

  void Finish(const absl::Status& status, v1::PullResponse values) {
    if (finished.exchange(true)) return;
    if (status.ok()) {
      const size_t bytes_out =
          answer != nullptr ? ToByteBuffer(values, answer) : 0;
      stats->RecordPush(bytes_in, bytes_out);
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
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  // The request is small: parsed as gRPC's generated handler would.
  v1::PullRequest pull;
  if (!ParseRequest(*request, &pull)) {
    return FinishNow(context, absl::InvalidArgumentError(
                                  "the request is not a ps.v1.PullRequest "
                                  "(cannot parse it)"));
  }
  if (auto who = auth_->Check(*context, Role::kWorker); !who.ok()) {
    return FinishNow(context, who.status());
  }
  v1::PullResponse answer;
  absl::Status status = store_->Pull(pull, &answer);
  if (status.ok()) {
    const size_t bytes_out = ToByteBuffer(answer, response);
    store_->stats().RecordPull(request->Length(), bytes_out);
  }
  return FinishNow(context, status);
}

grpc::ServerUnaryReactor* ParameterServiceImpl::Push(
    grpc::CallbackServerContext* context, const v1::PushRequest* request,
    v1::PushResponse*) {
  return StartPush(context, *request, nullptr, nullptr);
}

grpc::ServerUnaryReactor* ParameterServiceImpl::PushPull(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  // What gRPC's generated handler would do: parse into a fresh message.
  v1::PushRequest push;
  const bool parsed = ParseRequest(*request, &push);
  // The received bytes are not read again: release them now rather than
  // when the answer has been sent, so a call holds one copy of its payload.
  // The request is this handler's (gRPC only destroys it when done).
  const_cast<grpc::ByteBuffer*>(request)->Clear();
  if (!parsed) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    store_->stats().RecordRefusal(absl::StatusCode::kInvalidArgument);
    reactor->Finish(grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        "the request is not a ps.v1.PushRequest (cannot parse it)"));
    return reactor;
  }
  return StartPush(context, push, response, &push);
}

grpc::ServerUnaryReactor* ParameterServiceImpl::StartPush(
    grpc::CallbackServerContext* context, const v1::PushRequest& request,
    grpc::ByteBuffer* answer, v1::PushRequest* spare) {
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
  if (answer != nullptr && spare != nullptr) {
    for (int i = 0; i < spare->gradients_size(); ++i) {
      std::string* data = spare->mutable_gradients(i)->mutable_data();
      // Only a heap-allocated string keeps its bytes in place when moved
      // (a short one lives inside the object, and a gradient read in place
      // would then point at moved-from storage).
      if (data->size() <= sizeof(std::string)) continue;
      completion->ReuseBuffer(static_cast<size_t>(i), std::move(*data));
    }
  }
  store_->ApplyPush(*std::move(push), std::move(completion));
  return reactor;
}

}  // namespace ps
