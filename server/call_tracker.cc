#include "server/call_tracker.h"

#include <grpcpp/support/byte_buffer.h>

#include "absl/strings/str_cat.h"

namespace ps {
namespace {

std::string MiB(uint64_t bytes) { return absl::StrCat(bytes >> 20, " MiB"); }

}  // namespace

// Opens the call's record when the call starts, adds each answer's bytes
// as it is sent, and closes the record when gRPC is done with the call.
class CallTracker::Interceptor final : public grpc::experimental::Interceptor {
 public:
  Interceptor(CallTracker* tracker, const grpc::ServerContextBase* context)
      : tracker_(tracker), context_(context) {
    tracker_->Open(context_, context_->peer());
  }
  ~Interceptor() override { tracker_->Close(context_); }

  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      if (const grpc::ByteBuffer* answer =
              methods->GetSerializedSendMessage()) {
        tracker_->Add(context_, answer->Length());
      }
    }
    methods->Proceed();
  }

 private:
  CallTracker* const tracker_;
  const grpc::ServerContextBase* const context_;
};

class CallTracker::Factory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(CallTracker* tracker) : tracker_(tracker) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new Interceptor(tracker_, info->server_context());
  }

 private:
  CallTracker* const tracker_;
};

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
CallTracker::NewInterceptorFactory() {
  return std::make_unique<Factory>(this);
}

void CallTracker::Open(const grpc::ServerContextBase* context,
                       std::string peer) {
  calls_.fetch_add(1, std::memory_order_relaxed);
  absl::MutexLock lock(&mu_);
  open_[context] = Call{std::move(peer), 0};
}

void CallTracker::AddLocked(Call& call, uint64_t bytes) {
  call.bytes += bytes;
  peers_[call.peer] += bytes;
  bytes_.fetch_add(bytes, std::memory_order_relaxed);
}

void CallTracker::Add(const grpc::ServerContextBase* context, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  auto it = open_.find(context);
  if (it != open_.end()) AddLocked(it->second, bytes);
}

void CallTracker::Close(const grpc::ServerContextBase* context) {
  {
    absl::MutexLock lock(&mu_);
    auto it = open_.find(context);
    if (it != open_.end()) {
      const Call& call = it->second;
      if (call.bytes > 0) {
        auto peer = peers_.find(call.peer);
        if (peer != peers_.end() && (peer->second -= call.bytes) == 0) {
          peers_.erase(peer);
        }
        bytes_.fetch_sub(call.bytes, std::memory_order_relaxed);
      }
      open_.erase(it);
    }
  }
  calls_.fetch_sub(1, std::memory_order_release);
}

absl::Status CallTracker::Admit(const grpc::ServerContextBase& context,
                                uint64_t request_bytes) {
  const int64_t calls = calls_.load(std::memory_order_relaxed);
  if (calls > limits_.max_calls) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the shard serves ", calls, " calls at once, more than its limit of ",
        limits_.max_calls, " (ps_server --max_calls_in_flight); retry later"));
  }
  absl::MutexLock lock(&mu_);
  auto it = open_.find(&context);
  if (it == open_.end()) return absl::OkStatus();  // not intercepted
  Call& call = it->second;
  AddLocked(call, request_bytes);
  const uint64_t held = peers_[call.peer];
  if (limits_.max_connection_bytes > 0 &&
      held > limits_.max_connection_bytes + request_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "this connection's calls hold ", MiB(held),
        " of requests and unsent answers, more than the ",
        MiB(limits_.max_connection_bytes),
        " one connection may (ps_server --max_connection_mb): read the "
        "answers of calls in flight before starting more"));
  }
  const uint64_t total = bytes_.load(std::memory_order_relaxed);
  if (limits_.max_message_bytes > 0 &&
      total > limits_.max_message_bytes + request_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the shard's calls in flight hold ", MiB(total),
        " of messages, more than its limit of ", MiB(limits_.max_message_bytes),
        " (ps_server --max_inflight_mb); retry later"));
  }
  return absl::OkStatus();
}

}  // namespace ps
