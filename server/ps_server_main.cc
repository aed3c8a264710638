// ps_server: one shard of the parameter server.
//
// Parses flags, starts the shard, prints "listening on HOST:PORT" as the
// first line of stdout, and shuts down gracefully on SIGTERM or SIGINT.
#include <sched.h>
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/synchronization/mutex.h"
#include "common/cli.h"
#include "common/grpc_args.h"
#include "common/optimizer_config.h"
#include "common/tune_malloc.h"
#include "server/memory_limit.h"
#include "server/optimizer/adam.h"
#include "server/optimizer/simd.h"
#include "server/optimizer/update.h"
#include "server/server.h"

ABSL_FLAG(std::string, host, "127.0.0.1",
          "address to listen on; 0.0.0.0 to serve other machines");
ABSL_FLAG(int, port, 0, "port to listen on; 0 picks a free one");
ABSL_FLAG(uint32_t, shard_index, 0, "this shard's index, 0..num_shards-1");
ABSL_FLAG(uint32_t, num_shards, 1, "shards in the cluster");
ABSL_FLAG(uint64_t, block_size, ps::kDefaultBlockSize,
          "values per block: the unit of placement, locking, step count and "
          "checkpointing; smaller spreads small tensors over more shards");
ABSL_FLAG(std::string, consistency, "async",
          "async (apply each push as it arrives), sync (average each "
          "step's pushes) or ssp (async, but no worker runs more than "
          "--staleness steps ahead of the slowest)");
ABSL_FLAG(uint32_t, num_workers, 0,
          "sync: the job's size at the start (the first steps wait up to "
          "one lease timeout for that many workers; then each step waits "
          "for the workers that are members)");
ABSL_FLAG(uint32_t, quorum, 0,
          "sync: pushes that complete a step (at most the members there "
          "are); 0 = every member");
ABSL_FLAG(uint32_t, staleness, 0,
          "ssp: how many steps a worker may run ahead of the slowest member");
ABSL_FLAG(double, lease_timeout_s, 10,
          "sync and ssp: a worker that neither pushes nor heartbeats for "
          "this long is dropped and the others go on; it rejoins with its "
          "next call");
ABSL_FLAG(uint64_t, max_workers, 1024,
          "the most worker ids with a session on this shard (each costs a "
          "record per block it pushes to); 0 = no limit");
ABSL_FLAG(std::string, optimizer, "adam {}",
          "default optimizer, an OptimizerConfig in protobuf text format, "
          "e.g. 'momentum { nesterov: true } learning_rate: 0.1'");
ABSL_FLAG(int, max_message_mb, 256, "largest message accepted or sent, MiB");
ABSL_FLAG(std::string, worker_tokens_file, "",
          "file of worker tokens (one per line, optional label after a "
          "space); they may call ParameterService");
ABSL_FLAG(std::string, admin_tokens_file, "",
          "file of admin tokens; they may call ParameterService and "
          "AdminService");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate chain: serve TLS (with --tls_key_file)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key for TLS");
ABSL_FLAG(std::string, checkpoint_dir, "",
          "folder of the cluster's checkpoints, shared by every shard or one "
          "per shard; the newest complete one is loaded at start-up (moving "
          "blocks to their new owners when it was made with another "
          "--num_shards or --block_size); empty = no checkpoints");
ABSL_FLAG(int, checkpoint_interval_s, 0,
          "seconds between the cluster's periodic checkpoints, made by shard "
          "0; 0 = only on demand (psctl checkpoint) and, for one shard, at "
          "shutdown");
ABSL_FLAG(std::vector<std::string>, peers, {},
          "every shard's address (host:port), comma-separated, by shard "
          "index: shard 0 needs them to make cluster checkpoints, and a "
          "restored shard asks them whether they went on past its checkpoint");
ABSL_FLAG(int, checkpoint_keep, 3, "complete checkpoints to keep");
ABSL_FLAG(int, sync_cut_timeout_s, 30,
          "sync mode: seconds a checkpoint's cut may wait for every block to "
          "apply the steps below it (1..540); raise it for steps slower than "
          "this, or sync checkpoints fail naming the block that was behind");
ABSL_FLAG(int, metrics_port, -1,
          "serve Prometheus /metrics on this port; 0 picks one, -1 is off");
ABSL_FLAG(int64_t, memory_limit_mb, 0,
          "the most values, optimizer state and bookkeeping this shard holds, "
          "MiB; a variable or optimizer change past it is refused. 0 = 80% of "
          "the memory this process may use (its cgroup's limit, ulimit -v, or "
          "the machine's) less max_inflight_mb; -1 = no limit");
ABSL_FLAG(int64_t, max_inflight_mb, 0,
          "the most bytes the messages of calls in flight may hold (requests "
          "received and answers not yet sent), MiB; a call past it is refused "
          "with RESOURCE_EXHAUSTED. 0 = min(4 x max_message_mb, a quarter of "
          "the memory it may use); -1 = no bound");
ABSL_FLAG(int64_t, max_connection_mb, 0,
          "the same for the calls of one connection (a client that does not "
          "read its answers holds at most this), MiB. 0 = min(max_inflight_mb, "
          "max(2 x max_message_mb, 64)); -1 = no bound");
ABSL_FLAG(int64_t, grpc_memory_mb, 0,
          "gRPC's own memory quota (its connections' and calls' buffers), "
          "MiB; under pressure it reads less instead of growing. 0 = "
          "max_inflight_mb plus a quarter; -1 = none");
ABSL_FLAG(int64_t, max_calls_in_flight, 4096,
          "calls served at once; more are refused with RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_concurrent_streams, 256,
          "calls one connection may have open at once (HTTP/2 streams); more "
          "wait in the client");
ABSL_FLAG(std::vector<std::string>, grpc_arg, {},
          "more gRPC channel arguments for the server, name=integer, "
          "comma-separated (e.g. grpc.http2.max_frame_size=1048576); for "
          "tuning the transport, see bench/README.md");
ABSL_FLAG(int, update_threads, 0,
          "threads one large block's update may run on at once: its own and "
          "helpers, which take part only while they are free. 0 = the "
          "cores this process may run on (its CPU affinity), at most 8; "
          "1 = no helpers");
ABSL_FLAG(int, malloc_arenas, 1,
          "glibc malloc arenas. Each keeps its own freed message buffers "
          "resident; more let more threads allocate at once (one measured "
          "best on 2 and on 16 cores)");

namespace {

int Fail(const std::string& message) {
  std::cerr << "ps_server: " << message << std::endl;
  return 2;
}

// The cores this process may run on.
int UsableCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "One shard of the parameter server.\n"
      "Example: ps_server --num_shards=2 --shard_index=0 --port=50051");
  ps::ParseCommandLineWithHelp(argc, argv);
  const int arenas = absl::GetFlag(FLAGS_malloc_arenas);
  if (arenas < 1) {
    return Fail("--malloc_arenas must be 1 or more, not " +
                std::to_string(arenas));
  }
  // Freed message buffers stay in the heap for the next call, within
  // bounds (one arena held 20-30 MiB less than two at 40 MiB calls on 2
  // cores, and a half to a sixth of 4 or 16 arenas on 16 cores, for the
  // same or less CPU per byte: bench/README.md).
  ps::TuneServerMalloc(arenas);
  // Abseil's mutex deadlock detection, on in Debian's build, adds every
  // lock acquisition made while holding another lock to one global graph:
  // a debugging aid that the tests keep and the server does without.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  spdlog::set_default_logger(spdlog::stderr_color_mt("ps_server"));

  ps::ServerOptions options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.shard_index = absl::GetFlag(FLAGS_shard_index);
  options.num_shards = absl::GetFlag(FLAGS_num_shards);
  options.block_size = absl::GetFlag(FLAGS_block_size);
  options.num_workers = absl::GetFlag(FLAGS_num_workers);
  options.quorum = absl::GetFlag(FLAGS_quorum);
  options.staleness = absl::GetFlag(FLAGS_staleness);
  {
    const double lease = absl::GetFlag(FLAGS_lease_timeout_s);
    if (!(lease > 0 && lease <= 86400)) {
      return Fail("--lease_timeout_s must be in (0, 86400]");
    }
    options.lease_timeout = absl::Seconds(lease);
  }
  options.max_workers = absl::GetFlag(FLAGS_max_workers);
  options.max_message_mb = absl::GetFlag(FLAGS_max_message_mb);
  options.update_threads = absl::GetFlag(FLAGS_update_threads);
  if (options.update_threads < 0 ||
      options.update_threads > ps::kMaxUpdateThreads) {
    return Fail("--update_threads must be 0 (the cores, at most 8) or 1.." +
                std::to_string(ps::kMaxUpdateThreads) + ", not " +
                std::to_string(options.update_threads));
  }
  if (options.update_threads == 0) {
    options.update_threads = std::min(UsableCores(), 8);
  }
  options.worker_tokens_file = absl::GetFlag(FLAGS_worker_tokens_file);
  options.admin_tokens_file = absl::GetFlag(FLAGS_admin_tokens_file);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  options.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint_dir);
  options.checkpoint_interval_s = absl::GetFlag(FLAGS_checkpoint_interval_s);
  options.sync_cut_timeout_s = absl::GetFlag(FLAGS_sync_cut_timeout_s);
  options.checkpoint_keep = absl::GetFlag(FLAGS_checkpoint_keep);
  options.peers = absl::GetFlag(FLAGS_peers);
  const int64_t memory_limit_mb = absl::GetFlag(FLAGS_memory_limit_mb);
  constexpr int64_t kMaxMemoryLimitMb = int64_t{1} << 40;  // 1 EiB
  if (memory_limit_mb < -1 || memory_limit_mb > kMaxMemoryLimitMb) {
    return Fail(
        "--memory_limit_mb must be -1 (no limit), 0 (80% of the "
        "usable memory) or a size in MiB up to 2^40, not " +
        std::to_string(memory_limit_mb));
  }
  for (const auto& [flag, value] :
       {std::pair{"--max_inflight_mb", absl::GetFlag(FLAGS_max_inflight_mb)},
        std::pair{"--max_connection_mb",
                  absl::GetFlag(FLAGS_max_connection_mb)}}) {
    if (value < -1 || value > kMaxMemoryLimitMb) {
      return Fail(std::string(flag) +
                  " must be -1 (no bound), 0 (derived from the memory) or a "
                  "size in MiB, not " +
                  std::to_string(value));
    }
  }
  const uint64_t usable =
      std::min(ps::UsableMemoryBytes(), ps::AddressSpaceLeftBytes());
  auto plan = ps::PlanMemory(usable, options.max_message_mb, memory_limit_mb,
                             absl::GetFlag(FLAGS_max_inflight_mb),
                             absl::GetFlag(FLAGS_max_connection_mb));
  if (!plan.ok()) return Fail(std::string(plan.status().message()));
  options.memory_limit_bytes = plan->state_bytes;
  options.max_inflight_bytes = plan->inflight_bytes;
  options.max_connection_bytes = plan->connection_bytes;
  options.max_calls_in_flight = absl::GetFlag(FLAGS_max_calls_in_flight);
  const int64_t grpc_memory_mb = absl::GetFlag(FLAGS_grpc_memory_mb);
  if (grpc_memory_mb < -1 || grpc_memory_mb > kMaxMemoryLimitMb) {
    return Fail(
        "--grpc_memory_mb must be -1 (none), 0 (derived) or a size "
        "in MiB, not " +
        std::to_string(grpc_memory_mb));
  }
  if (grpc_memory_mb > 0) {
    options.grpc_memory_bytes = static_cast<uint64_t>(grpc_memory_mb) << 20;
  } else if (grpc_memory_mb == 0) {
    options.grpc_memory_bytes = plan->inflight_bytes + plan->inflight_bytes / 4;
  }
  options.max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  absl::StatusOr<std::vector<ps::GrpcArg>> grpc_args =
      ps::ParseGrpcArgs(absl::GetFlag(FLAGS_grpc_arg));
  if (!grpc_args.ok()) {
    return Fail("--grpc_arg: " + std::string(grpc_args.status().message()));
  }
  options.grpc_args = *std::move(grpc_args);
  const std::string consistency = absl::GetFlag(FLAGS_consistency);
  if (consistency == "sync") {
    options.consistency = ps::Consistency::kSync;
  } else if (consistency == "ssp") {
    options.consistency = ps::Consistency::kSsp;
  } else if (consistency != "async") {
    return Fail("--consistency must be async, sync or ssp, not '" +
                consistency + "'");
  }
  auto optimizer = ps::ParseOptimizerConfig(absl::GetFlag(FLAGS_optimizer));
  if (!optimizer.ok()) {
    return Fail("--optimizer: " + std::string(optimizer.status().message()));
  }
  options.default_optimizer = *optimizer;

  // Signals are taken synchronously by this thread; block them before any
  // other thread starts so none of those receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto server = ps::ParameterServer::Start(options);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  std::cout << "listening on " << (*server)->address() << std::endl;
  if (options.memory_limit_bytes == 0) {
    spdlog::info("values and optimizer state: no limit");
  } else {
    spdlog::info("values and optimizer state: at most {} MiB ({})",
                 options.memory_limit_bytes >> 20, plan->how);
  }
  spdlog::info(
      "calls in flight: at most {}, holding at most {} MiB of messages ({} "
      "MiB per connection; 0 = no bound)",
      options.max_calls_in_flight, options.max_inflight_bytes >> 20,
      options.max_connection_bytes >> 20);
  spdlog::info(
      "updates: a block of {} values or more on up to {} thread(s) "
      "(--update_threads); Adam, Eve, Adagrad and RMSProp on {}",
      ps::optimizer::kParallelMinValues, options.update_threads,
      ps::optimizer::BestSimd() == ps::optimizer::Simd::kAvx
          ? "AVX"
          : "the build's baseline instructions");
  if ((*server)->metrics_port() >= 0) {
    spdlog::info("serving /metrics on port {}", (*server)->metrics_port());
  }

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  spdlog::info("signal {}: finishing calls in flight, then exiting",
               signal_number);
  const absl::Status stopped = (*server)->Shutdown();
  (*server)->Wait();
  if (!stopped.ok()) {
    spdlog::error("{}", std::string(stopped.message()));
    return 1;
  }
  spdlog::info("stopped");
  return 0;
}
