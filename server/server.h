// A running shard: the gRPC server that hosts ParameterService (and, later,
// AdminService) over one VariableStore.
//
// Thread safety: all methods may be called from any thread.
#ifndef PS_SERVER_SERVER_H_
#define PS_SERVER_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/partition.h"
#include "proto/ps/v1/ps.pb.h"
#include "server/env.h"

namespace ps {

enum class Consistency { kAsync, kSync, kSsp };

// The most threads one block's update may use (ServerOptions::update_threads).
inline constexpr int kMaxUpdateThreads = 64;

struct ServerOptions {
  // Address to listen on. Keep loopback unless the shard must be reached
  // from other machines.
  std::string host = "127.0.0.1";
  // 0 picks a free port; ParameterServer::port() reports it.
  int port = 0;

  uint32_t shard_index = 0;
  uint32_t num_shards = 1;
  // Values per block. Larger blocks mean fewer, larger updates and coarser
  // locking; smaller ones spread a variable (and a model's small tensors)
  // over more shards, at the cost of a record per block.
  uint64_t block_size = kDefaultBlockSize;

  Consistency consistency = Consistency::kAsync;
  // Sync: the workers that push each step, and how many complete it
  // (0 = num_workers).
  // num_workers is the job's size at the start: the first steps wait for
  // that many members (at most one lease timeout); afterwards a step waits
  // for the members there are (server/membership.h).
  uint32_t num_workers = 0;
  uint32_t quorum = 0;
  // Ssp: how many steps a worker may run ahead of the slowest member.
  uint32_t staleness = 0;
  // Sync and ssp: a member that neither pushes nor heartbeats for this long
  // is dropped, and the others go on without it. Shorter frees them sooner
  // from a dead worker; too short drops workers whose steps are slow.
  absl::Duration lease_timeout = absl::Seconds(10);

  // The most worker ids with a session (0 = no limit). Each costs a session
  // record, and an exactly-once record in every block it pushed to; past
  // it, OpenSession and pushes of new ids get RESOURCE_EXHAUSTED.
  uint64_t max_workers = 1024;

  // The optimizer of every variable created without its own.
  v1::OptimizerConfig default_optimizer;  // empty = Adam with defaults

  // The most bytes of values and optimizer state the shard holds; a
  // variable or an optimizer change past it is refused with
  // RESOURCE_EXHAUSTED. 0 = no limit (ps_server sets one by default).
  uint64_t memory_limit_bytes = 0;

  // Threads one large block's update may run on at once (StoreOptions);
  // 1..kMaxUpdateThreads.
  int update_threads = 1;

  // The largest message accepted or sent. Raising it lets a client send
  // larger pushes at the cost of memory per call.
  int max_message_mb = 256;

  // What calls in flight may hold (server/call_tracker.h): calls at once,
  // message bytes in all (requests received and answers not yet sent) and
  // per connection (a client that does not read its answers holds at most
  // that). 0 bytes = no bound. ps_server derives the byte bounds from the
  // memory it may use.
  int64_t max_calls_in_flight = 4096;
  uint64_t max_inflight_bytes = 0;
  uint64_t max_connection_bytes = 0;
  // HTTP/2 streams (calls) one connection may have open at once; more wait
  // in the client.
  int max_concurrent_streams = 256;
  // gRPC's own memory quota (its buffers of connections and calls); 0 =
  // none. Under pressure gRPC reads less from its connections instead of
  // growing.
  uint64_t grpc_memory_bytes = 0;
  // More gRPC channel arguments for the shard's server (common/grpc_args.h),
  // set after its own (message sizes excepted: max_message_mb sets them).
  std::vector<std::pair<std::string, int>> grpc_args;

  // Token files (one token per line, optional label after whitespace).
  // Worker tokens may call ParameterService; admin tokens both services.
  // With neither, anyone who reaches the port can change the shard.
  std::string worker_tokens_file;
  std::string admin_tokens_file;

  // PEM certificate chain and private key: serve TLS instead of plaintext.
  std::string tls_cert_file;
  std::string tls_key_file;

  // Serve Prometheus /metrics over HTTP on this port; 0 picks a free one,
  // -1 turns it off.
  int metrics_port = -1;

  // Checkpoints: the folder (empty = none), seconds between periodic ones
  // (0 = only on demand and at shutdown) and how many to keep. The newest
  // complete one is loaded at start-up. Shorter intervals lose less work in
  // a crash and cost more disk bandwidth.
  // Checkpoints are the cluster's (DESIGN.md, "Cluster checkpoints"): shard
  // 0 makes them (on demand and, with an interval, periodically) by asking
  // every shard for its part; the folder may be shared by all shards or be
  // one per shard. At shutdown each shard writes a final part; with more
  // than one shard it is not loaded on its own (a part alone does not
  // count), so make a cluster checkpoint before stopping the cluster.
  std::string checkpoint_dir;
  int checkpoint_interval_s = 0;
  int checkpoint_keep = 3;
  // Sync mode: how long a checkpoint's cut may wait for every block to
  // apply the steps below it; a cut that waits longer fails (naming the
  // block) and training goes on. Raise it for steps slower than this. The
  // shards hold their steps for the cut this long plus 60 s at most.
  int sync_cut_timeout_s = 30;

  // Every shard's address ("host:port"), by shard index: shard 0 needs them
  // to make cluster checkpoints, and a shard restored from a checkpoint
  // asks them whether they went on past it. Empty: unknown (then a
  // checkpoint of more than one shard is refused).
  std::vector<std::string> peers;

  // The file system checkpoints go through; null = the real one (tests put
  // one here that fails). Must outlive the server.
  Env* env = nullptr;
};

class ParameterServer {
 public:
  // Validates the options, binds and starts serving.
  // INVALID_ARGUMENT for a bad combination; UNAVAILABLE when it cannot bind.
  static absl::StatusOr<std::unique_ptr<ParameterServer>> Start(
      const ServerOptions& options);

  virtual ~ParameterServer() = default;

  // The bound port (the real one when options.port was 0).
  virtual int port() const = 0;
  // "host:port".
  virtual std::string address() const = 0;
  // The /metrics port, or -1 when off.
  virtual int metrics_port() const = 0;

  // Stops accepting calls, finishes those in flight, writes the final
  // checkpoint (with a checkpoint folder) and returns. An error when that
  // checkpoint failed: the pushes since the last complete one are lost, and
  // the process should exit with an error. Later calls return OK.
  virtual absl::Status Shutdown() = 0;
  // Blocks until Shutdown has completed.
  virtual void Wait() = 0;
};

}  // namespace ps

#endif  // PS_SERVER_SERVER_H_
