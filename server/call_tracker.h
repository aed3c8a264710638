// What a shard holds for the calls in flight, and the bounds on it: the
// number of calls, the bytes of their messages (requests received and
// answers not yet sent) in all, and those of each connection. A client that
// never reads its answers fills only its own connection's share, and then
// has its new calls refused (RESOURCE_EXHAUSTED) instead of growing the
// shard until the kernel kills it.
//
// A gRPC server interceptor (Factory) opens a record for every call when it
// starts and closes it when the call is done, so what a call held is counted
// until gRPC has sent its answer. The RpcGate admits each call through
// Admit, which adds the request's bytes and checks the bounds.
//
// Thread safety: every method may be called concurrently.
#ifndef PS_SERVER_CALL_TRACKER_H_
#define PS_SERVER_CALL_TRACKER_H_

#include <grpcpp/server_context.h>
#include <grpcpp/support/server_interceptor.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace ps {

struct CallLimits {
  // Calls being served at once; more are refused. Each holds at least its
  // request; a sync push waits for its step, so keep it above the workers'
  // parts in flight times their number.
  int64_t max_calls = 4096;
  // Bytes of messages held for calls in flight, requests and answers; 0 =
  // none. Should leave the shard's memory room for its state.
  uint64_t max_message_bytes = 0;
  // The same for the calls of one connection; 0 = none. A client that does
  // not read its answers holds at most this much.
  uint64_t max_connection_bytes = 0;
};

class CallTracker {
 public:
  explicit CallTracker(CallLimits limits) : limits_(limits) {}

  // The interceptor that opens and closes each call's record.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
  NewInterceptorFactory();

  // Admits a call whose request took `request_bytes`: counts them against
  // its connection and the shard, then refuses (RESOURCE_EXHAUSTED, saying
  // which bound and how to stay below it) when a bound is exceeded.
  absl::Status Admit(const grpc::ServerContextBase& context,
                     uint64_t request_bytes) ABSL_LOCKS_EXCLUDED(mu_);

  // Calls in flight, and the bytes their messages hold.
  int64_t calls() const { return calls_.load(std::memory_order_acquire); }
  uint64_t bytes() const { return bytes_.load(std::memory_order_relaxed); }

 private:
  class Interceptor;
  class Factory;

  struct Call {
    std::string peer;
    uint64_t bytes = 0;
  };

  void Open(const grpc::ServerContextBase* context, std::string peer)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Adds `bytes` to the call's record (and its connection's).
  void Add(const grpc::ServerContextBase* context, uint64_t bytes)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Close(const grpc::ServerContextBase* context) ABSL_LOCKS_EXCLUDED(mu_);
  void AddLocked(Call& call, uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CallLimits limits_;
  std::atomic<int64_t> calls_{0};
  std::atomic<uint64_t> bytes_{0};
  absl::Mutex mu_;
  absl::flat_hash_map<const grpc::ServerContextBase*, Call> open_
      ABSL_GUARDED_BY(mu_);
  // Bytes held per connection (peer address).
  absl::flat_hash_map<std::string, uint64_t> peers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ps

#endif  // PS_SERVER_CALL_TRACKER_H_
