// AdminService: the operator's view of one shard and its optimizer controls.
//
// Thread safety: gRPC calls every method concurrently; the store does the
// locking.
#ifndef PS_SERVER_ADMIN_SERVICE_H_
#define PS_SERVER_ADMIN_SERVICE_H_

#include <functional>

#include "proto/ps/v1/ps.grpc.pb.h"
#include "server/auth.h"
#include "server/store.h"

namespace ps {

class AdminServiceImpl final : public v1::AdminService::CallbackService {
 public:
  // Writes a checkpoint and answers with where and how big; set by the
  // server when it has a checkpoint folder.
  using CheckpointFn = std::function<absl::StatusOr<v1::CheckpointResponse>()>;

  // REQUIRES: store and auth outlive the service.
  AdminServiceImpl(VariableStore* store, const Authenticator* auth,
                   CheckpointFn checkpoint)
      : store_(store), auth_(auth), checkpoint_(std::move(checkpoint)) {}

  grpc::ServerUnaryReactor* GetOptimizer(
      grpc::CallbackServerContext* context,
      const v1::GetOptimizerRequest* request,
      v1::OptimizerConfig* response) override;
  grpc::ServerUnaryReactor* SetOptimizer(
      grpc::CallbackServerContext* context,
      const v1::SetOptimizerRequest* request,
      v1::SetOptimizerResponse* response) override;
  grpc::ServerUnaryReactor* ListVariables(
      grpc::CallbackServerContext* context,
      const v1::ListVariablesRequest* request,
      v1::ListVariablesResponse* response) override;
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context,
                                     const v1::GetStatsRequest* request,
                                     v1::Stats* response) override;
  grpc::ServerUnaryReactor* Checkpoint(
      grpc::CallbackServerContext* context,
      const v1::CheckpointRequest* request,
      v1::CheckpointResponse* response) override;

 private:
  // Finishes the call with `status`, counting a refusal.
  grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* context,
                                   const absl::Status& status);

  VariableStore* const store_;
  const Authenticator* const auth_;
  const CheckpointFn checkpoint_;
};

}  // namespace ps

#endif  // PS_SERVER_ADMIN_SERVICE_H_
