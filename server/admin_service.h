// AdminService: the operator's view of one shard and its optimizer controls.
//
// Every method is served raw and enters through the RpcGate (server/rpc.h):
// an admin token is checked, then the request is parsed.
//
// Thread safety: gRPC calls every method concurrently; the store does the
// locking.
#ifndef PS_SERVER_ADMIN_SERVICE_H_
#define PS_SERVER_ADMIN_SERVICE_H_

#include <functional>

#include "absl/functional/any_invocable.h"
#include "proto/ps/v1/ps.grpc.pb.h"
#include "server/rpc.h"
#include "server/store.h"

namespace ps {

using RawAdminService = v1::AdminService::WithRawCallbackMethod_GetOptimizer<
    v1::AdminService::WithRawCallbackMethod_SetOptimizer<
        v1::AdminService::WithRawCallbackMethod_ListVariables<
            v1::AdminService::WithRawCallbackMethod_GetStats<
                v1::AdminService::WithRawCallbackMethod_Checkpoint<
                    v1::AdminService::Service>>>>>;

class AdminServiceImpl final : public RawAdminService {
 public:
  using CheckpointDone =
      absl::AnyInvocable<void(absl::StatusOr<v1::CheckpointResponse>)>;
  // Writes a checkpoint off the calling thread and calls `done` with where
  // and how big; set by the server when it has a checkpoint folder.
  using CheckpointFn = std::function<void(CheckpointDone done)>;
  // The shard's stats (store and calls in flight), as GetStats answers.
  using StatsFn = std::function<v1::Stats()>;

  // REQUIRES: store and gate outlive the service.
  AdminServiceImpl(Store* store, const RpcGate* gate, CheckpointFn checkpoint,
                   StatsFn stats)
      : store_(store),
        gate_(gate),
        checkpoint_(std::move(checkpoint)),
        stats_(std::move(stats)) {}

  // GetOptimizerRequest -> OptimizerConfig.
  grpc::ServerUnaryReactor* GetOptimizer(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  // SetOptimizerRequest -> SetOptimizerResponse.
  grpc::ServerUnaryReactor* SetOptimizer(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  // ListVariablesRequest -> ListVariablesResponse.
  grpc::ServerUnaryReactor* ListVariables(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  // GetStatsRequest -> Stats.
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  // CheckpointRequest -> CheckpointResponse; answered when the checkpoint
  // is written, which happens off gRPC's callback threads.
  grpc::ServerUnaryReactor* Checkpoint(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;

 private:
  Store* const store_;
  const RpcGate* const gate_;
  const CheckpointFn checkpoint_;
  const StatsFn stats_;
};

}  // namespace ps

#endif  // PS_SERVER_ADMIN_SERVICE_H_
