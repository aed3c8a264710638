// Test helpers for durability: ps_server shards as real child processes that
// can be killed with SIGKILL and restarted on the same port with the same
// checkpoint folder, plus raw per-shard calls (push, pull, checkpoint).
//
// Thread safety: a ShardProcess and a ProcessCluster are used from one thread
// at a time, except Kill(), which may race with calls on the shard's stubs
// from other threads (that is the point). Spawn (and Start) only from a
// thread that outlives the child, such as the test's main thread: the child
// gets SIGKILL when the thread that spawned it exits (PR_SET_PDEATHSIG).
#ifndef PS_TESTS_DURABILITY_SHARD_PROCESS_H_
#define PS_TESTS_DURABILITY_SHARD_PROCESS_H_

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/child_process.h"
#include "common/partition.h"
#include "proto/ps/v1/ps.grpc.pb.h"

namespace ps::durability {

using Clock = std::chrono::steady_clock;

// How long a shard may take to print its "listening on" line, or to exit.
inline constexpr std::chrono::seconds kStartTimeout{20};
inline constexpr std::chrono::seconds kExitTimeout{15};
// The deadline of each raw call.
inline constexpr std::chrono::seconds kCallTimeout{20};

// A port on 127.0.0.1 that was free a moment ago (bound to port 0, read
// back, closed). 0 when none could be found.
int PickFreePort();

// A fresh folder under the test temporary folder; removed by the caller.
std::string MakeTempDir(const std::string& prefix);

// Reads a whole file; "" when it is missing.
std::string ReadFileOrEmpty(const std::string& path);

// The flags of one shard.
struct ShardFlags {
  uint32_t shard_index = 0;
  uint32_t num_shards = 1;
  uint64_t block_size = 16;
  // An OptimizerConfig in text format.
  std::string optimizer = "sgd {} learning_rate: 1";
  // Empty: no checkpoints.
  std::string checkpoint_dir;
  int checkpoint_interval_s = 0;
  int checkpoint_keep = 3;
  // More flags, e.g. "--consistency=sync".
  std::vector<std::string> extra;
};

// One ps_server child process (a ChildProcess with the shard's flags). stdout
// is a pipe (its first line names the address); stderr goes to a file. The
// destructor SIGKILLs it if it still runs; it also dies with the test process
// (PR_SET_PDEATHSIG).
class ShardProcess {
 public:
  // Spawns ps_server with `flags` and --port=`port` (0: the server picks).
  // Returns nullptr when the process could not be spawned.
  static std::unique_ptr<ShardProcess> Spawn(const ShardFlags& flags, int port,
                                             const std::string& stderr_path);

  ShardProcess(const ShardProcess&) = delete;
  ShardProcess& operator=(const ShardProcess&) = delete;

  // Waits for "listening on HOST:PORT" and returns HOST:PORT; nullopt when
  // the first line says something else, when stdout closed (the process
  // failed to start) or at the timeout.
  std::optional<std::string> WaitListening(Clock::duration timeout);

  // Sends SIGKILL and reaps the process.
  void Kill() { child_->Kill(); }
  // Sends `signal_number`.
  void Signal(int signal_number) { child_->Signal(signal_number); }
  // The wait status once it has exited; nullopt at the timeout.
  std::optional<int> WaitForExit(Clock::duration timeout) {
    return child_->WaitForExit(timeout);
  }

  bool running() const { return child_->running(); }
  pid_t pid() const { return child_->pid(); }
  const std::string& stderr_path() const { return stderr_path_; }
  std::string StderrText() const { return ReadFileOrEmpty(stderr_path_); }

 private:
  ShardProcess(std::unique_ptr<ChildProcess> child, std::string stderr_path)
      : child_(std::move(child)), stderr_path_(std::move(stderr_path)) {}

  const std::unique_ptr<ChildProcess> child_;
  const std::string stderr_path_;
};

// The values and per-block versions of a range of blocks.
struct Values {
  std::vector<float> values;
  std::vector<uint64_t> flat_index;  // of each value in the variable
  std::vector<uint64_t> versions;    // one per block
};

// The shards of one cluster as child processes, each on a fixed port chosen
// at its first start, so that a restarted shard has the same address.
class ProcessCluster {
 public:
  // `root` holds each shard's checkpoint folder (when `checkpoints`) and the
  // stderr files of every start.
  ProcessCluster(std::string root, uint32_t num_shards, uint64_t block_size,
                 std::string optimizer, bool checkpoints = true);
  ~ProcessCluster();

  // Starts every shard.
  absl::Status StartAll();
  // Starts (or restarts) shard i with flags(i) on its port, retrying a few
  // times when the port is taken.
  absl::Status Start(uint32_t i);
  // SIGKILLs shard i and reaps it.
  void Kill(uint32_t i);
  // SIGTERMs shard i and returns its wait status (nullopt: it hung and was
  // killed).
  std::optional<int> Terminate(uint32_t i);

  ShardFlags& flags(uint32_t i) { return flags_[i]; }
  ShardProcess& process(uint32_t i) { return *processes_[i]; }
  // The stderr of the latest start of shard i.
  std::string LastStderr(uint32_t i) const;
  const std::string& checkpoint_dir(uint32_t i) const {
    return flags_[i].checkpoint_dir;
  }
  std::vector<std::string> addresses() const;
  uint32_t num_shards() const { return static_cast<uint32_t>(flags_.size()); }
  const PartitionPlan& plan() const { return plan_; }

  // Stubs on a channel made at the latest start of shard i.
  v1::ParameterService::Stub& stub(uint32_t i) { return *stubs_[i]; }
  v1::AdminService::Stub& admin(uint32_t i) { return *admins_[i]; }

  // A cluster checkpoint (AdminService.Checkpoint on shard 0, the
  // coordinator), answered with shard i's part as `path`.
  absl::StatusOr<v1::CheckpointResponse> Checkpoint(uint32_t i);

  // The blocks of `variable` (of `size` values) that shard i owns.
  std::vector<uint64_t> BlocksOf(uint32_t i, const std::string& variable,
                                 uint64_t size) const;

  // Pulls the blocks of `variable` owned by shard i.
  absl::StatusOr<Values> PullShard(uint32_t i, const std::string& variable,
                                   uint64_t size);

  // Pushes the part of `gradient` (every value of the variable) owned by
  // shard i, as (worker_id, seq).
  grpc::Status PushShard(uint32_t i, const std::string& variable,
                         const std::vector<float>& gradient,
                         const std::string& worker_id, uint64_t seq,
                         uint64_t step = 0,
                         std::optional<double> loss = std::nullopt);

 private:
  const std::string root_;
  const PartitionPlan plan_;
  std::vector<ShardFlags> flags_;
  std::vector<int> ports_;
  std::vector<int> starts_;
  std::vector<std::unique_ptr<ShardProcess>> processes_;
  std::vector<std::unique_ptr<v1::ParameterService::Stub>> stubs_;
  std::vector<std::unique_ptr<v1::AdminService::Stub>> admins_;
};

// A context whose deadline is kCallTimeout from now.
std::unique_ptr<grpc::ClientContext> MakeContext();

// Whether two float vectors hold the same bits.
bool SameBits(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace ps::durability

#endif  // PS_TESTS_DURABILITY_SHARD_PROCESS_H_
