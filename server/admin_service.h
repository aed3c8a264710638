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
                    v1::AdminService::WithRawCallbackMethod_WriteCheckpointPart<
                        v1::AdminService::WithRawCallbackMethod_CommitCheckpoint<
                            v1::AdminService::
                                WithRawCallbackMethod_ListCheckpoints<
                                    v1::AdminService::
                                        WithRawCallbackMethod_HoldSyncSteps<
                                            v1::AdminService::
                                                WithRawCallbackMethod_RollBack<
                                                    v1::AdminService::
                                                        Service>>>>>>>>>>;

// What the service asks of the shard's checkpoints (server/server.cc runs
// them on its checkpoint thread). Each `done` is called once, from any
// thread.
class CheckpointControl {
 public:
  virtual ~CheckpointControl() = default;
  // A cluster checkpoint, made by this shard as the coordinator.
  virtual void Checkpoint(
      absl::AnyInvocable<void(absl::StatusOr<v1::CheckpointResponse>)>
          done) = 0;
  // This shard's part of a cluster checkpoint.
  virtual void WritePart(
      const v1::WriteCheckpointPartRequest& request,
      absl::AnyInvocable<void(absl::StatusOr<v1::CheckpointPart>)> done) = 0;
  // Records a complete cluster checkpoint.
  virtual void Commit(const v1::CommitCheckpointRequest& request,
                      absl::AnyInvocable<void(absl::Status)> done) = 0;
  // The complete checkpoints this shard sees.
  virtual absl::StatusOr<v1::ListCheckpointsResponse> List() = 0;
  // Sync mode: goes back to a complete cluster checkpoint in place (a peer
  // restarted from it).
  virtual void RollBack(
      const v1::RollBackRequest& request,
      absl::AnyInvocable<void(absl::StatusOr<v1::RollBackResponse>)> done) = 0;
};

class AdminServiceImpl final : public RawAdminService {
 public:
  // The shard's stats (store and calls in flight), as GetStats answers.
  using StatsFn = std::function<v1::Stats()>;

  // `checkpoint`: null when the shard has no checkpoint folder.
  // REQUIRES: store, gate and checkpoint outlive the service.
  AdminServiceImpl(Store* store, const RpcGate* gate,
                   CheckpointControl* checkpoint, StatsFn stats)
      : store_(store),
        gate_(gate),
        checkpoint_(checkpoint),
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
  // WriteCheckpointPartRequest -> CheckpointPart (from the coordinator).
  grpc::ServerUnaryReactor* WriteCheckpointPart(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
      grpc::ByteBuffer* response) override;
  // CommitCheckpointRequest -> CommitCheckpointResponse (from the
  // coordinator).
  grpc::ServerUnaryReactor* CommitCheckpoint(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
      grpc::ByteBuffer* response) override;
  // ListCheckpointsRequest -> ListCheckpointsResponse.
  grpc::ServerUnaryReactor* ListCheckpoints(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
      grpc::ByteBuffer* response) override;
  // HoldSyncStepsRequest -> HoldSyncStepsResponse (from the coordinator).
  grpc::ServerUnaryReactor* HoldSyncSteps(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  // RollBackRequest -> RollBackResponse (from a restarted peer); answered
  // once the shard is back at the checkpoint.
  grpc::ServerUnaryReactor* RollBack(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;

 private:
  Store* const store_;
  const RpcGate* const gate_;
  CheckpointControl* const checkpoint_;
  const StatsFn stats_;
};

}  // namespace ps

#endif  // PS_SERVER_ADMIN_SERVICE_H_
