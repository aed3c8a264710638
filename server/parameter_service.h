// ParameterService over one VariableStore, on gRPC's callback API.
//
// Thread safety: gRPC calls every method concurrently; the store does the
// locking. A sync push that waits for its step holds no thread.
#ifndef PS_SERVER_PARAMETER_SERVICE_H_
#define PS_SERVER_PARAMETER_SERVICE_H_

#include <grpcpp/support/byte_buffer.h>

#include "proto/ps/v1/ps.grpc.pb.h"
#include "server/auth.h"
#include "server/store.h"

namespace ps {

// Pull and PushPull are served raw: their answers are sent from the
// buffers the values were encoded into, without a serialization copy.
class ParameterServiceImpl final
    : public v1::ParameterService::WithRawCallbackMethod_Pull<
          v1::ParameterService::WithRawCallbackMethod_PushPull<
              v1::ParameterService::CallbackService>> {
 public:
  // REQUIRES: store and auth outlive the service.
  ParameterServiceImpl(VariableStore* store, const Authenticator* auth,
                       v1::ClusterInfo info)
      : store_(store), auth_(auth), info_(std::move(info)) {}

  grpc::ServerUnaryReactor* GetClusterInfo(
      grpc::CallbackServerContext* context,
      const v1::GetClusterInfoRequest* request,
      v1::ClusterInfo* response) override;
  grpc::ServerUnaryReactor* CreateVariable(
      grpc::CallbackServerContext* context,
      const v1::CreateVariableRequest* request,
      v1::CreateVariableResponse* response) override;
  grpc::ServerUnaryReactor* Push(grpc::CallbackServerContext* context,
                                 const v1::PushRequest* request,
                                 v1::PushResponse* response) override;
  // A PullRequest in, a PullResponse out.
  grpc::ServerUnaryReactor* Pull(grpc::CallbackServerContext* context,
                                 const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;
  // A PushRequest in, a PullResponse out.
  grpc::ServerUnaryReactor* PushPull(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;

 private:
  // Push and PushPull: `answer` is null for Push. `request` must stay valid
  // until StartPush returns. `spare`, when not null, is `request` itself,
  // owned by the caller: its gradient bytes then become the answer's buffers
  // (see PushCompletion::ReuseBuffer).
  grpc::ServerUnaryReactor* StartPush(grpc::CallbackServerContext* context,
                                      const v1::PushRequest& request,
                                      grpc::ByteBuffer* answer,
                                      v1::PushRequest* spare);

  // Finishes a call now with `status`, counting a refusal.
  grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context,
                                      const absl::Status& status);

  VariableStore* const store_;
  const Authenticator* const auth_;
  const v1::ClusterInfo info_;
};

}  // namespace ps

#endif  // PS_SERVER_PARAMETER_SERVICE_H_
