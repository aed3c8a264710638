// A small in-process ParameterService for the client's tests: it answers
// like one shard (SGD with lr = 1, exactly-once by the server's seq window),
// records every request, checks that each slice belongs to it and that each
// block sees a worker's pushes in order, and can be told to fail.
#ifndef PS_CLIENT_FAKE_SHARD_H_
#define PS_CLIENT_FAKE_SHARD_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/partition.h"
#include "common/seq_window.h"
#include "proto/ps/v1/ps.grpc.pb.h"

namespace ps::testing {

// Thread safety: the service methods run on gRPC threads; tests read and
// set the public members under `mu`.
class FakeShard final : public v1::ParameterService::Service {
 public:
  explicit FakeShard(v1::ClusterInfo info);

  grpc::Status GetClusterInfo(grpc::ServerContext* context,
                              const v1::GetClusterInfoRequest* request,
                              v1::ClusterInfo* response) override;
  grpc::Status CreateVariable(grpc::ServerContext* context,
                              const v1::CreateVariableRequest* request,
                              v1::CreateVariableResponse* response) override;
  grpc::Status Push(grpc::ServerContext* context,
                    const v1::PushRequest* request,
                    v1::PushResponse* response) override;
  grpc::Status Pull(grpc::ServerContext* context,
                    const v1::PullRequest* request,
                    v1::PullResponse* response) override;
  grpc::Status PushPull(grpc::ServerContext* context,
                        const v1::PushRequest* request,
                        v1::PullResponse* response) override;
  // Epochs from 1 up, one more for each open with epoch 0.
  grpc::Status OpenSession(grpc::ServerContext* context,
                           const v1::OpenSessionRequest* request,
                           v1::OpenSessionResponse* response) override;

  // This shard's values of `variable` (all of them; only its blocks move).
  std::vector<float> Values(const std::string& variable);

  absl::Mutex mu;
  // Every request received, in arrival order (push attempts included).
  std::vector<v1::OpenSessionRequest> opens ABSL_GUARDED_BY(mu);
  std::vector<v1::CreateVariableRequest> creates ABSL_GUARDED_BY(mu);
  std::vector<v1::PushRequest> pushes ABSL_GUARDED_BY(mu);
  std::vector<v1::PullRequest> pulls ABSL_GUARDED_BY(mu);
  // Slices that this shard does not own or that cut a block wrongly, and
  // blocks that saw a worker's seqs go down.
  std::vector<std::string> violations ABSL_GUARDED_BY(mu);
  // The authorization metadata of each call.
  std::vector<std::string> authorizations ABSL_GUARDED_BY(mu);
  // Push attempts applied (not counting repeats).
  int applied ABSL_GUARDED_BY(mu) = 0;
  // Push calls being served now, and the most at once.
  int pushes_in_flight ABSL_GUARDED_BY(mu) = 0;
  int max_pushes_in_flight ABSL_GUARDED_BY(mu) = 0;

  // Fail the next N push attempts with UNAVAILABLE (before applying).
  int unavailable_pushes ABSL_GUARDED_BY(mu) = 0;
  // Apply the next N pushes but sleep `slow_push_delay` before answering.
  int slow_pushes ABSL_GUARDED_BY(mu) = 0;
  absl::Duration slow_push_delay ABSL_GUARDED_BY(mu);
  // Answer every push, pull and push-pull with this error.
  std::optional<grpc::Status> error ABSL_GUARDED_BY(mu);
  // Answer pulls with one value too few in the first slice.
  bool short_answers ABSL_GUARDED_BY(mu) = false;

 private:
  grpc::Status ApplyPush(grpc::ServerContext* context,
                         const v1::PushRequest& request)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  grpc::Status Answer(
      const google::protobuf::RepeatedPtrField<v1::Slice>& slices,
      v1::DType dtype, v1::PullResponse* response)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  void CheckOwned(const v1::Slice& slice, bool whole_block)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  const v1::ClusterInfo info_;
  const PartitionPlan plan_;
  std::map<std::string, std::vector<float>> values_ ABSL_GUARDED_BY(mu);
  std::map<std::string, std::vector<uint64_t>> shapes_ ABSL_GUARDED_BY(mu);
  // Per (worker, epoch): the seqs applied.
  std::map<std::pair<std::string, uint64_t>, SeqWindow> applied_seqs_
      ABSL_GUARDED_BY(mu);
  // Per (worker, epoch, variable, offset): the last seq that block applied.
  std::map<std::tuple<std::string, uint64_t, std::string, uint64_t>, uint64_t>
      block_seqs_ ABSL_GUARDED_BY(mu);
  // Per worker: its session epoch.
  std::map<std::string, uint64_t> epochs_ ABSL_GUARDED_BY(mu);
};

// A FakeShard served on 127.0.0.1 at a free port.
struct RunningFakeShard {
  std::unique_ptr<FakeShard> service;
  std::unique_ptr<grpc::Server> server;
  std::string address;
};

// Starts a fake shard with the given cluster settings.
std::unique_ptr<RunningFakeShard> StartFakeShard(
    uint32_t shard_index, uint32_t num_shards, uint64_t block_size,
    const std::string& consistency = "async");

}  // namespace ps::testing

#endif  // PS_CLIENT_FAKE_SHARD_H_
