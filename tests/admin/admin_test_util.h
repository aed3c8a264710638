// Helpers for the operator-side tests: in-process shards, a worker that
// speaks raw ParameterService through the partition plan, a reference
// optimizer, temporary folders and child processes.
//
// Thread safety: thread-compatible.
#ifndef PS_TESTS_ADMIN_ADMIN_TEST_UTIL_H_
#define PS_TESTS_ADMIN_ADMIN_TEST_UTIL_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/optimizer_settings.h"
#include "common/partition.h"
#include "proto/ps/v1/ps.grpc.pb.h"
#include "server/optimizer/update.h"
#include "server/server.h"

namespace ps::testing {

// A fresh folder under $TMPDIR (or /tmp), removed with its contents.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // Writes `contents` to path()/name and returns the full path.
  std::string WriteFile(const std::string& name,
                        const std::string& contents) const;

 private:
  std::string path_;
};

// `n` shards of one cluster, each on its own loopback port.
// REQUIRES (checked with gtest): every shard starts.
std::vector<std::unique_ptr<ParameterServer>> StartShards(
    int n, const ServerOptions& base);

// "addr0,addr1,...".
std::string ServerList(
    const std::vector<std::unique_ptr<ParameterServer>>& shards);

// {addr0, addr1, ...}.
std::vector<std::string> ServerAddresses(
    const std::vector<std::unique_ptr<ParameterServer>>& shards);

// A channel to `address`; TLS trusting `root_pem` when it is not empty.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address,
                                           const std::string& root_pem = "");

// A context with a 10 s deadline and, when `token` is not empty, the
// authorization metadata.
std::unique_ptr<grpc::ClientContext> MakeContext(const std::string& token = "");

// A training worker over raw stubs: creates variables, pushes whole blocks
// to their owners (ps::PartitionPlan), pulls values and block versions.
class RawWorker {
 public:
  // Asks every address for its ClusterInfo (with `token`) and checks the
  // answers as every client does (ps::CheckCluster, client/cluster_check.h):
  // a worker over the shards in shard order, with the cluster's block size.
  // `addresses` may be in any order. The first call's error, or the check's.
  static absl::StatusOr<std::unique_ptr<RawWorker>> Connect(
      const std::vector<std::string>& addresses, const std::string& token = "");

  // `addresses[i]` is shard i; nothing is checked.
  RawWorker(const std::vector<std::string>& addresses, uint64_t block_size,
            std::string token = "");

  const PartitionPlan& plan() const { return plan_; }
  int num_shards() const { return static_cast<int>(parameters_.size()); }
  v1::AdminService::Stub& admin(int shard) { return *admin_[shard]; }
  v1::ParameterService::Stub& parameters(int shard) {
    return *parameters_[shard];
  }

  // CreateVariable on every shard with its blocks of `initial`.
  grpc::Status Create(const std::string& name,
                      const std::vector<float>& initial,
                      const v1::OptimizerConfig* optimizer = nullptr);

  // One Push per shard holding its blocks of `gradient`.
  grpc::Status Push(const std::string& name,
                    const std::vector<float>& gradient);

  // The values of a variable of `size` values; `versions` (optional) gets
  // each block's version.
  grpc::Status Pull(const std::string& name, uint64_t size,
                    std::vector<float>* values,
                    std::vector<uint64_t>* versions = nullptr);

 private:
  PartitionPlan plan_;
  std::string token_;
  uint64_t seq_ = 0;
  std::vector<std::unique_ptr<v1::ParameterService::Stub>> parameters_;
  std::vector<std::unique_ptr<v1::AdminService::Stub>> admin_;
};

// SetOptimizer on every shard; the statuses in shard order.
std::vector<grpc::Status> SetOptimizerOnAll(RawWorker& worker,
                                            const std::string& variable,
                                            const v1::OptimizerConfig& config,
                                            bool reset_state,
                                            const std::string& token = "");

// The reference trajectory of one variable: the same kernels
// (optimizer::ApplyUpdate) run here on a copy, block by block.
class ReferenceVariable {
 public:
  ReferenceVariable(std::vector<float> initial, uint64_t block_size);

  // The settings used from the next step on.
  void SetSettings(const optimizer::OptimizerSettings& settings) {
    settings_ = settings;
  }
  // The state of every block, e.g. to reset it.
  std::vector<optimizer::BlockOptimizerState>& states() { return states_; }
  const std::vector<float>& values() const { return values_; }

  // One update of every block with `gradient`.
  void Step(const std::vector<float>& gradient);

 private:
  uint64_t block_size_;
  std::vector<float> values_;
  std::vector<optimizer::BlockOptimizerState> states_;
  optimizer::OptimizerSettings settings_;
};

// The resolved settings of a config. REQUIRES (checked): it is valid.
optimizer::OptimizerSettings Resolve(const v1::OptimizerConfig& config);

// A protobuf text-format config. REQUIRES (checked): it parses and is
// valid.
v1::OptimizerConfig Config(const std::string& text);

// The gradient of sum_i (w_i - target_i)^2 with target_i = 0.05 i - 1.
std::vector<float> QuadraticGradient(const std::vector<float>& values);

// A self-signed certificate for localhost and 127.0.0.1, made by the
// openssl command into `dir` as NAME.crt and NAME.key.
struct Certificate {
  std::string cert_file;
  std::string key_file;
  std::string pem;  // the certificate itself, to trust as a root
};
Certificate MakeCertificate(const TempDir& dir, const std::string& name);

// What a child process printed and how it ended.
struct ProcessResult {
  int exit_code = -1;  // -1 when it was killed or did not exit by itself
  bool timed_out = false;
  std::string out;
  std::string err;
};

// Runs `program` (a path, or a name looked up in $PATH) with `args`, collects
// stdout and stderr, and kills it if it has not finished within `timeout`.
ProcessResult RunProcess(
    const std::string& program, const std::vector<std::string>& args,
    std::chrono::milliseconds timeout = std::chrono::seconds(60));

}  // namespace ps::testing

#endif  // PS_TESTS_ADMIN_ADMIN_TEST_UTIL_H_
