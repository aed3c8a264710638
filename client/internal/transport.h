// Private to ps::Client. client/internal/ holds the client's parts; only the
// client's own .cc files and the tests beside them include these headers.
//
// The transport: the channels and stubs to each shard, the encoding of the
// requests that go as raw bytes, and one unary call of each method, started
// without waiting. No retries (retry.h, shard_call.h) and no ordering
// (push_lane.h).
//
// Push, Pull and PushPull go through a generic stub as raw bytes: gradients
// are sent from the strings they were encoded into, and answers decoded
// from where they were received, without protobuf's serialization and parse
// copies (see common/slice_buffers.h). The other methods use the generated
// stub.
//
// Thread safety: a Shard's members are set before any call starts and then
// only read; stub() may be called from any thread. The Call* functions may
// be called concurrently.
#ifndef PS_CLIENT_INTERNAL_TRANSPORT_H_
#define PS_CLIENT_INTERNAL_TRANSPORT_H_

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "common/slice_buffers.h"
#include "proto/ps/v1/ps.grpc.pb.h"

namespace ps::client_internal {

// One channel to a shard, with a stub for each kind of call: the generated
// one, and a generic one for the calls whose messages are mostly slice data.
struct ShardStub {
  std::unique_ptr<v1::ParameterService::Stub> typed;
  std::unique_ptr<grpc::GenericStub> raw;
};

// The connection to one shard.
struct Shard {
  std::string address;
  std::optional<uint32_t> index;  // known once connected
  std::vector<ShardStub> stubs;   // one per channel
  std::atomic<size_t> next_stub{0};

  // The stub of the next call: the channels take turns.
  ShardStub* stub() {
    return &stubs[next_stub.fetch_add(1, std::memory_order_relaxed) %
                  stubs.size()];
  }
  // "shard 3 (host:port)", or "shard at host:port" before the index is
  // known: how errors name it.
  std::string Name() const;

  // Whether the shard is down: its last attempt failed with a retryable
  // error (retry.h). The retry loop logs an outage once, when it starts
  // and ends, rather than once per attempt. Thread-safe.
  // Marks it down at `now`; true when it was up until now.
  bool MarkDown(absl::Time now);
  // Marks it up; how long it was down, or nullopt when it was up.
  std::optional<absl::Duration> MarkUp(absl::Time now);
  // How long it has been down at `now` (zero when it is up).
  absl::Duration DownFor(absl::Time now);

 private:
  std::atomic<bool> down_{false};  // a fast check for MarkUp
  absl::Mutex down_mu_;
  absl::Time down_since_ ABSL_GUARDED_BY(down_mu_) = absl::InfinitePast();
};

// The shards at options.addresses, in that order, each with
// options.channels_per_shard channels (plaintext, or TLS trusting
// options.tls_ca_file), message size limits of options.max_message_bytes,
// and reconnection paced by options.retry. Connects lazily: nothing is sent
// yet. INVALID_ARGUMENT when the CA file cannot be read.
// REQUIRES: options passed Connect's checks (every count >= 1).
absl::StatusOr<std::vector<std::unique_ptr<Shard>>> OpenShards(
    const ClientOptions& options);

// Sets one attempt's deadline (options.call_timeout from now) and, when
// options.token is set, its `authorization: Bearer` metadata.
void PrepareContext(const ClientOptions& options, grpc::ClientContext* context);

// A request as it goes on the wire: the message (a push's without its
// gradients' data) and its serialized bytes, made once and sent by every
// attempt.
template <typename Message>
struct Encoded {
  Message head;
  grpc::ByteBuffer bytes;
};
using EncodedPush = Encoded<v1::PushRequest>;
using EncodedPull = Encoded<v1::PullRequest>;

// The gradients' data go from the strings they were encoded into.
EncodedPush EncodePush(v1::PushRequest request);
// A pull request is small: serialized as protobuf would.
EncodedPull EncodePull(v1::PullRequest request);

// The unary calls, one per method. Each starts the call on `stub` and calls
// `done` once, on a gRPC thread, with its status; *response holds the
// answer when it is OK. `context`, `request` and `response` must stay valid
// until then. The typed ones are the generated stub's async methods.
using CallDone = std::function<void(grpc::Status)>;
void CallGetClusterInfo(ShardStub* stub, grpc::ClientContext* context,
                        const v1::GetClusterInfoRequest* request,
                        v1::ClusterInfo* response, CallDone done);
void CallOpenSession(ShardStub* stub, grpc::ClientContext* context,
                     const v1::OpenSessionRequest* request,
                     v1::OpenSessionResponse* response, CallDone done);
void CallCreateVariable(ShardStub* stub, grpc::ClientContext* context,
                        const v1::CreateVariableRequest* request,
                        v1::CreateVariableResponse* response, CallDone done);
void CallDeleteVariable(ShardStub* stub, grpc::ClientContext* context,
                        const v1::DeleteVariableRequest* request,
                        v1::DeleteVariableResponse* response, CallDone done);
void CallReadState(ShardStub* stub, grpc::ClientContext* context,
                   const v1::ReadStateRequest* request,
                   v1::ReadStateResponse* response, CallDone done);
void CallWriteState(ShardStub* stub, grpc::ClientContext* context,
                    const v1::WriteStateRequest* request,
                    v1::WriteStateResponse* response, CallDone done);
// The answer (an empty PushResponse) is not read.
void CallPush(ShardStub* stub, grpc::ClientContext* context,
              const EncodedPush* request, grpc::ByteBuffer* response,
              CallDone done);
// The answer, a PullResponse, is read into *response; INTERNAL when it does
// not parse.
void CallCreateTable(ShardStub* stub, grpc::ClientContext* context,
                     const v1::CreateTableRequest* request,
                     v1::CreateTableResponse* response, CallDone done);
void CallPull(ShardStub* stub, grpc::ClientContext* context,
              const EncodedPull* request, ReceivedSlices* response,
              CallDone done);
void CallPushPull(ShardStub* stub, grpc::ClientContext* context,
                  const EncodedPush* request, ReceivedSlices* response,
                  CallDone done);

}  // namespace ps::client_internal

#endif  // PS_CLIENT_INTERNAL_TRANSPORT_H_
