// ParameterService over one Store, on gRPC's callback API.
//
// Every method is served raw and enters through the RpcGate (server/rpc.h):
// authenticated, then parsed. Pull and PushPull answers are sent from the
// buffers the values were encoded into, without a serialization copy.
//
// Thread safety: gRPC calls every method concurrently; the store does the
// locking. A sync push that waits for its step, and an ssp call that waits
// for the slowest member, hold no thread.
#ifndef PS_SERVER_PARAMETER_SERVICE_H_
#define PS_SERVER_PARAMETER_SERVICE_H_

#include <grpcpp/support/byte_buffer.h>

#include "proto/ps/v1/ps.grpc.pb.h"
#include "server/rpc.h"
#include "server/store.h"

namespace ps {

using RawParameterService = v1::ParameterService::WithRawCallbackMethod_GetClusterInfo<
    v1::ParameterService::WithRawCallbackMethod_CreateVariable<
        v1::ParameterService::WithRawCallbackMethod_Push<
            v1::ParameterService::WithRawCallbackMethod_Pull<
                v1::ParameterService::WithRawCallbackMethod_PushPull<
                    v1::ParameterService::WithRawCallbackMethod_OpenSession<
                        v1::ParameterService::WithRawCallbackMethod_CreateTable<
                            v1::ParameterService::WithRawCallbackMethod_Heartbeat<
                                v1::ParameterService::WithRawCallbackMethod_Leave<
                                    v1::ParameterService::
                                        WithRawCallbackMethod_DeleteVariable<
                                            v1::ParameterService::
                                                WithRawCallbackMethod_ReadState<
                                                    v1::ParameterService::
                                                        WithRawCallbackMethod_WriteState<
                                                            v1::ParameterService::
                                                                Service>>>>>>>>>>>>;

class ParameterServiceImpl final : public RawParameterService {
 public:
  // REQUIRES: store and gate outlive the service.
  ParameterServiceImpl(Store* store, const RpcGate* gate, v1::ClusterInfo info)
      : store_(store), gate_(gate), info_(std::move(info)) {}

  // GetClusterInfoRequest -> ClusterInfo.
  grpc::ServerUnaryReactor* GetClusterInfo(grpc::CallbackServerContext* context,
                                           const grpc::ByteBuffer* request,
                                           grpc::ByteBuffer* response) override;
  // CreateVariableRequest -> CreateVariableResponse.
  grpc::ServerUnaryReactor* CreateVariable(grpc::CallbackServerContext* context,
                                           const grpc::ByteBuffer* request,
                                           grpc::ByteBuffer* response) override;
  // DeleteVariableRequest -> DeleteVariableResponse; admin tokens only.
  grpc::ServerUnaryReactor* DeleteVariable(grpc::CallbackServerContext* context,
                                           const grpc::ByteBuffer* request,
                                           grpc::ByteBuffer* response) override;
  // ReadStateRequest -> ReadStateResponse.
  grpc::ServerUnaryReactor* ReadState(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  // WriteStateRequest -> WriteStateResponse.
  grpc::ServerUnaryReactor* WriteState(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  // CreateTableRequest -> CreateTableResponse.
  grpc::ServerUnaryReactor* CreateTable(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  // PushRequest -> PushResponse.
  grpc::ServerUnaryReactor* Push(grpc::CallbackServerContext* context,
                                 const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;
  // PullRequest -> PullResponse.
  grpc::ServerUnaryReactor* Pull(grpc::CallbackServerContext* context,
                                 const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;
  // PushRequest -> PullResponse.
  grpc::ServerUnaryReactor* PushPull(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  // OpenSessionRequest -> OpenSessionResponse.
  grpc::ServerUnaryReactor* OpenSession(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  // HeartbeatRequest -> HeartbeatResponse.
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  // LeaveRequest -> LeaveResponse.
  grpc::ServerUnaryReactor* Leave(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;

 private:
  // Push and PushPull: `answer` is null for Push (its empty PushResponse is
  // sent instead).
  grpc::ServerUnaryReactor* ServePush(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response,
                                      bool answer_values);

  // Pull in ssp mode: waits, when the request names a worker and step, for
  // the slowest member (Store::AwaitStaleness), then reads.
  grpc::ServerUnaryReactor* ServeStalePull(grpc::CallbackServerContext* context,
                                           const grpc::ByteBuffer* request,
                                           grpc::ByteBuffer* response);

  Store* const store_;
  const RpcGate* const gate_;
  const v1::ClusterInfo info_;
};

}  // namespace ps

#endif  // PS_SERVER_PARAMETER_SERVICE_H_
