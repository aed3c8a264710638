// psctl's view of a cluster: one channel per shard, parallel calls, and the
// shards put in shard order from what they say they are.
//
// Thread safety: a ShardSet's const methods may be called from any thread;
// ReadLayout may not run concurrently with any other method.
#ifndef PS_CLIENT_PSCTL_CLUSTER_H_
#define PS_CLIENT_PSCTL_CLUSTER_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
#include "proto/ps/v1/ps.grpc.pb.h"

namespace ps::psctl {

struct ConnectOptions {
  // "HOST:PORT" of each shard, in any order (ReadLayout finds the order).
  // REQUIRES: they pass ps::CheckServerAddresses.
  std::vector<std::string> servers;
  // Sent as `authorization: Bearer <token>` when not empty.
  std::string token;
  // PEM root certificates: connect with TLS and trust these. Empty means
  // plaintext.
  std::string tls_root_certs;
  // Deadline of each call.
  std::chrono::milliseconds timeout{10000};
};

// One shard: its index (its position in --servers until ReadLayout has put
// the shards in order), its address and stubs.
struct Shard {
  int index = 0;
  std::string address;
  std::unique_ptr<v1::ParameterService::Stub> parameters;
  std::unique_ptr<v1::AdminService::Stub> admin;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;
};

// What one server answered to GetClusterInfo.
struct ClusterInfoAnswer {
  grpc::Status status;
  v1::ClusterInfo info;
};

class ShardSet {
 public:
  // Makes a channel per shard; connecting happens on the first call.
  explicit ShardSet(const ConnectOptions& options);

  // Asks every server for its ClusterInfo and checks the answers with
  // ps::PlaceShards (client/cluster_check.h). When they fit one cluster, the
  // shards are put in shard order (a server that did not answer takes a
  // place no answer claimed); otherwise they stay in --servers order and
  // layout_problem() says what is wrong.
  void ReadLayout();
  // Whether ReadLayout ran.
  bool layout_read() const { return layout_read_; }
  // Each shard's answer, in the order of the shards; empty before
  // ReadLayout.
  const std::vector<ClusterInfoAnswer>& cluster_infos() const {
    return cluster_infos_;
  }
  // FAILED_PRECONDITION when the answers are not of one cluster with each
  // shard listed once; OK otherwise (and before ReadLayout).
  const absl::Status& layout_problem() const { return layout_problem_; }
  // The shards whose server did not answer GetClusterInfo, by index.
  std::vector<int> Unverified() const;

  int size() const { return static_cast<int>(shards_.size()); }
  const Shard& shard(int i) const { return shards_[i]; }

  // A client context with the deadline and the token set.
  std::unique_ptr<grpc::ClientContext> NewContext() const;

  // Runs fn(shard) for every shard at once, one thread each, and returns
  // the results in shard order.
  template <typename Result>
  std::vector<Result> ForEach(
      const std::function<Result(const Shard&)>& fn) const {
    std::vector<Result> results(shards_.size());
    std::vector<std::thread> threads;
    threads.reserve(shards_.size());
    for (size_t i = 0; i < shards_.size(); ++i) {
      threads.emplace_back([&, i] { results[i] = fn(shards_[i]); });
    }
    for (std::thread& t : threads) t.join();
    return results;
  }

 private:
  ConnectOptions options_;
  std::vector<Shard> shards_;
  bool layout_read_ = false;
  std::vector<ClusterInfoAnswer> cluster_infos_;
  absl::Status layout_problem_;
};

// "CODE: message" for a failed call, e.g. "UNAVAILABLE: failed to connect".
std::string DescribeStatus(const grpc::Status& status);

// The gRPC code's name, e.g. "PERMISSION_DENIED".
std::string CodeName(grpc::StatusCode code);

}  // namespace ps::psctl

#endif  // PS_CLIENT_PSCTL_CLUSTER_H_
