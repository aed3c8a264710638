#include "server/parameter_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
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
  bool pull = false;           // a Pull (counted as one)
  const RpcGate* gate = nullptr;
  uint64_t bytes_in = 0;
  // The worker whose wait Membership counts (BeginWait), if any.
  Membership* members = nullptr;
  std::string waiting_worker;

  void Finish(const absl::Status& status, v1::PullResponse values) {
    if (finished.exchange(true)) return;
    if (members != nullptr) members->EndWait(waiting_worker);
    if (status.ok() && pull) {
      const size_t bytes_out = SerializeAnswer(values, response);
      gate->stats()->RecordPull(bytes_in, bytes_out);
    } else if (status.ok()) {
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

// When a call that waits for the slowest member gives up: shortly before
// the client's deadline, so that the client reads the reason.
absl::Time WaitDeadline(const grpc::CallbackServerContext& context) {
  const absl::Time now = absl::Now();
  const absl::Time deadline = absl::FromChrono(context.deadline());
  if (deadline <= now) return now;
  return deadline - std::min((deadline - now) / 10, absl::Seconds(1));
}

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

grpc::ServerUnaryReactor* ParameterServiceImpl::DeleteVariable(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return gate_->Serve<v1::DeleteVariableRequest, v1::DeleteVariableResponse>(
      context, Role::kAdmin, request, response,
      [&](const Caller& caller, const v1::DeleteVariableRequest& remove,
          v1::DeleteVariableResponse* answer) {
        absl::StatusOr<bool> deleted = store_->DeleteVariable(remove.name());
        if (!deleted.ok()) return deleted.status();
        answer->set_deleted(*deleted);
        if (*deleted) {
          spdlog::info("{} deleted variable '{}'", caller.label, remove.name());
        }
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* ParameterServiceImpl::ReadState(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return gate_->Serve<v1::ReadStateRequest, v1::ReadStateResponse>(
      context, Role::kWorker, request, response,
      [&](const Caller&, const v1::ReadStateRequest& read,
          v1::ReadStateResponse* answer) {
        return store_->ReadState(read, answer);
      });
}

grpc::ServerUnaryReactor* ParameterServiceImpl::WriteState(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return gate_->Serve<v1::WriteStateRequest, v1::WriteStateResponse>(
      context, Role::kWorker, request, response,
      [&](const Caller& caller, const v1::WriteStateRequest& write,
          v1::WriteStateResponse* answer) {
        absl::StatusOr<uint64_t> written = store_->WriteState(write);
        if (!written.ok()) return written.status();
        answer->set_written(*written);
        if (*written > 0) {
          spdlog::info("{} set the optimizer state of {} block(s) of '{}'",
                       caller.label, *written, write.blocks(0).variable());
        }
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* ParameterServiceImpl::CreateTable(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return gate_->Serve<v1::CreateTableRequest, v1::CreateTableResponse>(
      context, Role::kWorker, request, response,
      [&](const Caller&, const v1::CreateTableRequest& create,
          v1::CreateTableResponse* answer) {
        absl::StatusOr<bool> created = store_->CreateTable(create);
        if (created.ok()) answer->set_created(*created);
        return created.status();
      });
}

grpc::ServerUnaryReactor* ParameterServiceImpl::Pull(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  const size_t bytes_in = request->Length();
  if (store_->options().ssp) return ServeStalePull(context, request, response);
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

grpc::ServerUnaryReactor* ParameterServiceImpl::Heartbeat(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return gate_->Serve<v1::HeartbeatRequest, v1::HeartbeatResponse>(
      context, Role::kWorker, request, response,
      [&](const Caller& caller, const v1::HeartbeatRequest& heartbeat,
          v1::HeartbeatResponse* answer) {
        PS_RETURN_IF_ERROR(caller.CheckWorker(heartbeat.worker_id()));
        PS_ASSIGN_OR_RETURN(
            uint32_t members,
            store_->Heartbeat(heartbeat.worker_id(), heartbeat.epoch()));
        answer->set_members(members);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* ParameterServiceImpl::Leave(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return gate_->Serve<v1::LeaveRequest, v1::LeaveResponse>(
      context, Role::kWorker, request, response,
      [&](const Caller& caller, const v1::LeaveRequest& leave,
          v1::LeaveResponse* answer) {
        PS_RETURN_IF_ERROR(caller.CheckWorker(leave.worker_id()));
        PS_ASSIGN_OR_RETURN(bool was_member,
                            store_->Leave(leave.worker_id(), leave.epoch()));
        answer->set_was_member(was_member);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* ParameterServiceImpl::ServeStalePull(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  auto call = std::make_shared<PushCall>();
  auto* reactor = new PushReactor(call);
  call->reactor = reactor;
  call->response = response;
  call->answer_values = true;
  call->pull = true;
  call->gate = gate_;
  call->bytes_in = request->Length();
  auto pull = std::make_shared<v1::PullRequest>();
  absl::StatusOr<Caller> caller =
      gate_->Admit(*context, Role::kWorker, *request, pull.get());
  absl::Status admitted = caller.status();
  if (admitted.ok() && !pull->worker_id().empty()) {
    admitted = caller->CheckWorker(pull->worker_id());
  }
  if (!admitted.ok()) {
    call->Finish(admitted, v1::PullResponse());
    return reactor;
  }
  auto read = [store = store_, call, pull](absl::Status status) {
    v1::PullResponse answer;
    if (status.ok()) status = store->Pull(*pull, &answer);
    call->Finish(status, std::move(answer));
  };
  if (!pull->has_step() || pull->worker_id().empty()) {
    read(absl::OkStatus());
    return reactor;
  }
  call->members = &store_->membership();
  call->waiting_worker = pull->worker_id();
  call->members->BeginWait(pull->worker_id(), absl::Now());
  store_->AwaitStaleness(pull->worker_id(), pull->step(),
                         WaitDeadline(*context), std::move(read));
  return reactor;
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
  const StoreOptions& options = store_->options();
  if ((options.sync || options.ssp) && !push.worker_id().empty()) {
    call->members = &store_->membership();
    call->waiting_worker = push.worker_id();
    call->members->BeginWait(push.worker_id(), absl::Now());
  }
  std::function<void(absl::Status, v1::PullResponse)> done =
      [call](absl::Status status, v1::PullResponse values) {
        call->Finish(status, std::move(values));
      };
  if (options.ssp && answer_values && !push.worker_id().empty()) {
    // The answer holds the values once the slowest member is close enough:
    // read again then, with everything applied meanwhile.
    auto pull = std::make_shared<v1::PullRequest>();
    pull->set_dtype(push.pull_dtype());
    for (const v1::Slice& slice : push.gradients()) {
      v1::Slice* asked = pull->add_slices();
      asked->set_variable(slice.variable());
      asked->set_offset(slice.offset());
      asked->set_length(slice.length());
    }
    const uint64_t next =
        push.step() == UINT64_MAX ? push.step() : push.step() + 1;
    done = [call, pull, store = store_, worker = push.worker_id(), next,
            deadline = WaitDeadline(*context)](absl::Status status,
                                               v1::PullResponse values) {
      if (!status.ok()) {
        call->Finish(status, std::move(values));
        return;
      }
      store->AwaitStaleness(worker, next, deadline,
                            [call, pull, store](absl::Status waited) {
                              v1::PullResponse answer;
                              if (waited.ok())
                                waited = store->Pull(*pull, &answer);
                              call->Finish(waited, std::move(answer));
                            });
    };
  }
  auto completion = std::make_shared<PushCompletion>(
      prepared->gradients.size(), answer_values, push.pull_dtype(),
      std::move(done));
  if (answer_values) LendRequestBuffers(push, *prepared, *completion);
  store_->ApplyPush(*std::move(prepared), std::move(completion));
  return reactor;
}

}  // namespace ps
