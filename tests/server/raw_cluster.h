// Test helper: the generated ParameterService stubs of every shard of a
// cluster, with whole-variable create, push and pull routed block by block to
// each block's owner by PartitionPlan, as any client must do.
//
// Thread safety: every method may be called concurrently.
#ifndef PS_TESTS_SERVER_RAW_CLUSTER_H_
#define PS_TESTS_SERVER_RAW_CLUSTER_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/partition.h"
#include "proto/ps/v1/ps.grpc.pb.h"
#include "tests/server/messages.h"

namespace ps::testutil {

// How long any one call may take before the test gives up on it.
inline constexpr std::chrono::seconds kCallTimeout{30};

// A ClientContext with kCallTimeout as its deadline.
std::unique_ptr<grpc::ClientContext> MakeContext();

// Every value of a variable and the version of each of its blocks.
struct Snapshot {
  std::vector<float> values;
  std::vector<uint64_t> versions;
};

// One push to every shard that owns a block of the variable.
struct PushArgs {
  std::string worker_id;
  uint64_t seq = 0;
  uint64_t step = 0;
  v1::DType pull_dtype = v1::FLOAT32;
};

class RawCluster {
 public:
  // Asks every address for its ClusterInfo and checks the answers as every
  // client does (ps::CheckCluster, client/cluster_check.h): the shards in
  // shard order, with the cluster's block size. `addresses` may be in any
  // order. The first call's error, or the check's.
  static absl::StatusOr<std::unique_ptr<RawCluster>> Connect(
      const std::vector<std::string>& addresses);

  // `addresses[i]` is shard i; nothing is checked.
  RawCluster(const std::vector<std::string>& addresses, uint64_t block_size);

  size_t num_shards() const { return stubs_.size(); }
  const PartitionPlan& plan() const { return plan_; }
  v1::ParameterService::Stub& stub(uint32_t shard) { return *stubs_[shard]; }
  std::shared_ptr<grpc::Channel> channel(uint32_t shard) {
    return channels_[shard];
  }
  // The shard that owns the block holding flat index `offset`.
  uint32_t OwnerOf(const std::string& variable, uint64_t offset) const;

  // Creates the variable on every shard with each shard's blocks of
  // `initial` (none: zeros). The first failure, if any; `created` gets each
  // shard's answer.
  grpc::Status Create(const std::string& name,
                      const std::vector<uint64_t>& shape,
                      const std::vector<float>& initial,
                      std::vector<bool>* created = nullptr);

  // Every value of a variable of `size` values, block by block from each
  // block's owner, in `dtype` (decoded).
  grpc::Status PullAll(const std::string& name, uint64_t size, Snapshot* out,
                       v1::DType dtype = v1::FLOAT32);
  // The same, failing the test on error.
  Snapshot MustPullAll(const std::string& name, uint64_t size);

  // Pushes `gradient` (every value of the variable) to the owners of its
  // blocks, one call per shard in shard order (or only to `only_shard`'s
  // blocks when it is >= 0); with `answer`, by PushPull, whose answers are
  // assembled into *answer. Stops at the first failure.
  grpc::Status Push(const std::string& name, const PushArgs& args,
                    const std::vector<float>& gradient,
                    Snapshot* answer = nullptr, int only_shard = -1);

 private:
  PartitionPlan plan_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<v1::ParameterService::Stub>> stubs_;
};

// A call, or a short series of calls, to shard 0 of a cluster, by name.
struct NamedCall {
  std::string what;
  std::function<void(RawCluster&)> call;
};

// Calls that each finish before they return, to a one-shard cluster of
// block size 4 where nothing exists yet: none at all, GetClusterInfo,
// CreateVariable, and Pull, Push and PushPull of a new variable "w" of 4
// values. A shard that served any of them has nothing in flight after.
std::vector<NamedCall> FinishedCalls();

}  // namespace ps::testutil

#endif  // PS_TESTS_SERVER_RAW_CLUSTER_H_
