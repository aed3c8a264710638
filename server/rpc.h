// The one gate every call of ParameterService and AdminService passes
// through: the caller is authenticated first, then the request is parsed
// from its raw bytes (so that bytes that are not the method's request get
// INVALID_ARGUMENT with a message, not gRPC's bare UNIMPLEMENTED), and the
// call ends through one finish helper that counts refusals.
//
// Every method of both services is served raw (grpc::ByteBuffer in and out)
// and enters through Admit or Serve; rpc_test checks that each method of
// each service refuses a call without a token.
//
// Thread safety: const methods; calls run concurrently.
#ifndef PS_SERVER_RPC_H_
#define PS_SERVER_RPC_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "proto/ps/v1/ps.pb.h"
#include "server/auth.h"
#include "server/call_tracker.h"
#include "server/stats.h"

namespace ps {

// Parses `bytes` into *message; false when they are not one.
bool ParseMessage(const grpc::ByteBuffer& bytes,
                  google::protobuf::MessageLite* message);

// Serializes an answer into *out. A PullResponse hands its slices' data
// over without copying them (common/slice_buffers.h). Returns its bytes.
size_t SerializeAnswer(google::protobuf::MessageLite& answer,
                       grpc::ByteBuffer* out);
size_t SerializeAnswer(v1::PullResponse& answer, grpc::ByteBuffer* out);

class RpcGate {
 public:
  // REQUIRES: auth, stats and calls (when not null) outlive the gate.
  RpcGate(const Authenticator* auth, ServerStats* stats,
          CallTracker* calls = nullptr)
      : auth_(auth), stats_(stats), calls_(calls) {}

  // Authenticates the caller for `role`, checks that the shard can hold the
  // call (CallTracker: RESOURCE_EXHAUSTED past its bounds), then parses the
  // request. Returns the caller (its token's label and worker ids);
  // UNAUTHENTICATED or PERMISSION_DENIED; or INVALID_ARGUMENT naming the
  // message when the bytes are not a `Request`.
  template <typename Request>
  absl::StatusOr<Caller> Admit(const grpc::CallbackServerContext& context,
                               Role role, const grpc::ByteBuffer& bytes,
                               Request* request) const {
    absl::StatusOr<Caller> caller = auth_->Check(context, role);
    if (!caller.ok()) return caller.status();
    if (calls_ != nullptr) {
      if (absl::Status held = calls_->Admit(context, bytes.Length());
          !held.ok()) {
        return held;
      }
    }
    if (!ParseMessage(bytes, request)) {
      return absl::InvalidArgumentError(
          absl::StrCat("the request is not a ", request->GetTypeName(),
                       " (cannot parse its ", bytes.Length(), " bytes)"));
    }
    return caller;
  }

  // Finishes `reactor`'s call with `status`, counting a refusal.
  void Finish(grpc::ServerUnaryReactor* reactor,
              const absl::Status& status) const {
    if (!status.ok()) stats_->RecordRefusal(status.code());
    reactor->Finish(ToGrpcStatus(status));
  }

  // Serves a call that is answered at once: admits it, runs
  // `handle(caller, request, &response)` (an absl::Status) and sends the
  // response when that is OK.
  template <typename Request, typename Response, typename Handle>
  grpc::ServerUnaryReactor* Serve(grpc::CallbackServerContext* context,
                                  Role role, const grpc::ByteBuffer* in,
                                  grpc::ByteBuffer* out, Handle handle) const {
    Request request;
    Response response;
    absl::StatusOr<Caller> caller = Admit(*context, role, *in, &request);
    absl::Status status = caller.status();
    if (status.ok()) status = handle(*caller, request, &response);
    if (status.ok()) SerializeAnswer(response, out);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    Finish(reactor, status);
    return reactor;
  }

  ServerStats* stats() const { return stats_; }

 private:
  const Authenticator* const auth_;
  ServerStats* const stats_;
  CallTracker* const calls_;
};

}  // namespace ps

#endif  // PS_SERVER_RPC_H_
