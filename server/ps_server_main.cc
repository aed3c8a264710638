// ps_server: one shard of the parameter server.
//
// Parses flags, starts the shard, prints "listening on HOST:PORT" as the
// first line of stdout, and shuts down gracefully on SIGTERM or SIGINT.
#include <malloc.h>
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/synchronization/mutex.h"
#include "common/cli.h"
#include "common/optimizer_config.h"
#include "common/tune_malloc.h"
#include "server/server.h"

ABSL_FLAG(std::string, host, "127.0.0.1",
          "address to listen on; 0.0.0.0 to serve other machines");
ABSL_FLAG(int, port, 0, "port to listen on; 0 picks a free one");
ABSL_FLAG(uint32_t, shard_index, 0, "this shard's index, 0..num_shards-1");
ABSL_FLAG(uint32_t, num_shards, 1, "shards in the cluster");
ABSL_FLAG(uint64_t, block_size, 262144, "values per block");
ABSL_FLAG(std::string, consistency, "async",
          "async (apply each push as it arrives) or sync (average each "
          "step's pushes)");
ABSL_FLAG(uint32_t, num_workers, 0, "sync: workers that push each step");
ABSL_FLAG(uint32_t, quorum, 0,
          "sync: pushes that complete a step; 0 = num_workers");
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
          "folder of this shard's checkpoints; the newest complete one is "
          "loaded at start-up; empty = no checkpoints");
ABSL_FLAG(int, checkpoint_interval_s, 0,
          "seconds between periodic checkpoints; 0 = only on demand "
          "(psctl checkpoint) and at shutdown");
ABSL_FLAG(int, checkpoint_keep, 3, "complete checkpoints to keep");
ABSL_FLAG(int, metrics_port, -1,
          "serve Prometheus /metrics on this port; 0 picks one, -1 is off");

namespace {

int Fail(const std::string& message) {
  std::cerr << "ps_server: " << message << std::endl;
  return 2;
}

// Keeps freed message buffers in the heap for the next call (see
// ps::TuneMalloc: otherwise each call of a few MiB faults in new zeroed
// pages, at a fraction of memcpy speed), within bounds: up to
// kKeepFreeBytes of freed memory per arena, and one arena per core rather
// than glibc's eight per core (gRPC's threads would otherwise each keep
// their own).
void KeepMessageBuffers() {
  constexpr size_t kKeepFreeBytes = 64 << 20;
  ps::TuneMalloc(kKeepFreeBytes);
  mallopt(M_ARENA_MAX,
          static_cast<int>(std::max(2u, std::thread::hardware_concurrency())));
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "One shard of the parameter server.\n"
      "Example: ps_server --num_shards=2 --shard_index=0 --port=50051");
  ps::ParseCommandLineWithHelp(argc, argv);
  KeepMessageBuffers();
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
  options.max_message_mb = absl::GetFlag(FLAGS_max_message_mb);
  options.worker_tokens_file = absl::GetFlag(FLAGS_worker_tokens_file);
  options.admin_tokens_file = absl::GetFlag(FLAGS_admin_tokens_file);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  options.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint_dir);
  options.checkpoint_interval_s = absl::GetFlag(FLAGS_checkpoint_interval_s);
  options.checkpoint_keep = absl::GetFlag(FLAGS_checkpoint_keep);
  const std::string consistency = absl::GetFlag(FLAGS_consistency);
  if (consistency == "sync") {
    options.consistency = ps::Consistency::kSync;
  } else if (consistency != "async") {
    return Fail("--consistency must be async or sync, not '" + consistency +
                "'");
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
  if ((*server)->metrics_port() >= 0) {
    spdlog::info("serving /metrics on port {}", (*server)->metrics_port());
  }

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  spdlog::info("signal {}: finishing calls in flight, then exiting",
               signal_number);
  (*server)->Shutdown();
  (*server)->Wait();
  spdlog::info("stopped");
  return 0;
}
