#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/support/server_interceptor.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "common/file_util.h"
#include "common/grpc_args.h"
#include "common/optimizer_config.h"
#include "common/status.h"
#include "common/token_file.h"
#include "server/admin_service.h"
#include "server/auth.h"
#include "server/checkpoint.h"
#include "server/cluster_checkpoint.h"
#include "server/metrics.h"
#include "server/parameter_service.h"
#include "server/rpc.h"
#include "server/store.h"

namespace ps {
namespace {

// How long Shutdown lets calls in flight finish before cancelling them.
constexpr absl::Duration kShutdownGrace = absl::Seconds(5);

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(
    const ServerOptions& options) {
  if (options.tls_cert_file.empty() && options.tls_key_file.empty()) {
    return grpc::InsecureServerCredentials();
  }
  if (options.tls_cert_file.empty() || options.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS needs both --tls_cert_file and --tls_key_file");
  }
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  PS_ASSIGN_OR_RETURN(pair.cert_chain,
                      ReadSmallFile(options.tls_cert_file, "--tls_cert_file"));
  PS_ASSIGN_OR_RETURN(pair.private_key,
                      ReadSmallFile(options.tls_key_file, "--tls_key_file"));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  return grpc::SslServerCredentials(ssl);
}

absl::Status CheckOptions(const ServerOptions& options) {
  if (options.num_shards == 0) {
    return absl::InvalidArgumentError("--num_shards must be at least 1");
  }
  if (options.shard_index >= options.num_shards) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shard_index=", options.shard_index,
                     " must be below --num_shards=", options.num_shards));
  }
  if (options.block_size == 0) {
    return absl::InvalidArgumentError("--block_size must be at least 1");
  }
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--port=", options.port, " must be in 0..65535"));
  }
  if (options.update_threads < 1 ||
      options.update_threads > kMaxUpdateThreads) {
    return absl::InvalidArgumentError(
        absl::StrCat("--update_threads=", options.update_threads,
                     " must be in 1..", kMaxUpdateThreads));
  }
  if (options.max_calls_in_flight < 1) {
    return absl::InvalidArgumentError("--max_calls_in_flight must be >= 1");
  }
  if (options.max_concurrent_streams < 1) {
    return absl::InvalidArgumentError("--max_concurrent_streams must be >= 1");
  }
  if (options.max_message_mb < 1 || options.max_message_mb > 2047) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_message_mb=", options.max_message_mb, " must be in 1..2047"));
  }
  if (options.lease_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--lease_timeout_s must be positive");
  }
  if (options.consistency != Consistency::kSsp && options.staleness != 0) {
    return absl::InvalidArgumentError(
        "--staleness applies to --consistency=ssp only");
  }
  if (options.consistency == Consistency::kSync) {
    if (options.num_workers == 0) {
      return absl::InvalidArgumentError(
          "--consistency=sync needs --num_workers (the workers per step)");
    }
    if (options.quorum > options.num_workers) {
      return absl::InvalidArgumentError(
          absl::StrCat("--quorum=", options.quorum,
                       " must not exceed --num_workers=", options.num_workers));
    }
  }
  if (options.checkpoint_interval_s < 0) {
    return absl::InvalidArgumentError(
        "--checkpoint_interval_s must be >= 0 (0 = no periodic checkpoints)");
  }
  if (options.sync_cut_timeout_s < 1 || options.sync_cut_timeout_s > 540) {
    return absl::InvalidArgumentError(
        absl::StrCat("--sync_cut_timeout_s=", options.sync_cut_timeout_s,
                     " must be in 1..540"));
  }
  if (options.checkpoint_keep < 1) {
    return absl::InvalidArgumentError("--checkpoint_keep must be at least 1");
  }
  if (!options.peers.empty() && options.peers.size() != options.num_shards) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--peers lists ", options.peers.size(), " addresses; it needs ",
        options.num_shards, " (every shard's, by shard index)"));
  }
  if (absl::Status status = ValidateOptimizerConfig(options.default_optimizer);
      !status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--optimizer: ", status.message()));
  }
  return absl::OkStatus();
}

// Runs checkpoint jobs one at a time on a thread of its own, off gRPC's
// callback threads: those asked for (AdminService) in order, and `periodic`
// every `interval` when it is positive.
class CheckpointThread {
 public:
  using Job = absl::AnyInvocable<void(bool stopping)>;

  CheckpointThread(absl::Duration interval, std::function<void()> periodic)
      : interval_(interval),
        periodic_(std::move(periodic)),
        thread_([this] { Run(); }) {}

  ~CheckpointThread() { Stop(); }

  // Queues `job`; it runs on this thread with stopping = false, or with
  // true (and must then only refuse) when the thread stops first.
  void Request(Job job) {
    {
      absl::MutexLock lock(&mu_);
      if (!stopping_) {
        requests_.push_back(std::move(job));
        return;
      }
    }
    job(true);
  }

  // Finishes the job being run, refuses the queued ones and joins the
  // thread.
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Run() {
    const bool periodic = interval_ > absl::ZeroDuration() && periodic_;
    absl::Time next_periodic = absl::Now() + interval_;
    while (true) {
      std::vector<Job> asked;
      bool stopping = false;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || !requests_.empty();
        };
        if (periodic) {
          mu_.AwaitWithDeadline(absl::Condition(&ready), next_periodic);
        } else {
          mu_.Await(absl::Condition(&ready));
        }
        asked.swap(requests_);
        stopping = stopping_;
      }
      if (stopping) {
        for (Job& job : asked) job(true);
        return;
      }
      if (asked.empty()) {
        next_periodic = absl::Now() + interval_;
        periodic_();
        continue;
      }
      for (Job& job : asked) job(false);
    }
  }

  const absl::Duration interval_;
  const std::function<void()> periodic_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<Job> requests_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

// Calls Store::Tick every `interval` on a thread of its own: leases run
// out, steps that waited for a dropped member complete, and staleness
// waits past their deadline are answered.
class Ticker {
 public:
  Ticker(Store* store, absl::Duration interval)
      : store_(store), interval_(interval), thread_([this] { Run(); }) {}
  ~Ticker() { Stop(); }

  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Run() {
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_;
        };
        if (mu_.AwaitWithTimeout(absl::Condition(&stopping), interval_)) {
          return;
        }
      }
      store_->Tick();
    }
  }

  Store* const store_;
  const absl::Duration interval_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

absl::Status ShuttingDown() {
  return absl::UnavailableError("the shard is shutting down");
}

class ServerImpl final : public ParameterServer, private CheckpointControl {
 public:
  ServerImpl(const StoreOptions& store_options, Authenticator auth,
             v1::ClusterInfo info, const ServerOptions& options,
             PeerOptions peers)
      : store_(Store::Create(store_options)),
        auth_(std::move(auth)),
        calls_(CallLimits{options.max_calls_in_flight,
                          options.max_inflight_bytes,
                          options.max_connection_bytes}),
        gate_(&auth_, &store_->counters(), &calls_),
        checkpointer_(options.checkpoint_dir.empty()
                          ? nullptr
                          : std::make_unique<Checkpointer>(
                                CheckpointOptions{
                                    options.checkpoint_dir,
                                    options.checkpoint_keep, options.env,
                                    absl::Seconds(options.sync_cut_timeout_s)},
                                store_.get())),
        peers_(options.shard_index, std::move(peers)),
        coordinator_(checkpointer_ == nullptr
                         ? nullptr
                         : std::make_unique<ClusterCheckpointer>(
                               checkpointer_.get(), store_.get(), &peers_,
                               options.shard_index, options.num_shards,
                               options.block_size,
                               absl::Seconds(options.sync_cut_timeout_s + 60))),
        service_(store_.get(), &gate_, std::move(info)),
        admin_(store_.get(), &gate_, checkpointer_ == nullptr ? nullptr : this,
               [this] { return Stats(); }),
        host_(options.host),
        shard_index_(options.shard_index),
        num_shards_(options.num_shards),
        checkpoint_interval_(absl::Seconds(options.checkpoint_interval_s)) {}

  ~ServerImpl() override {
    Shutdown().IgnoreError();
    Wait();
  }

  absl::Status Start(const ServerOptions& options) {
    PS_ASSIGN_OR_RETURN(auto credentials, Credentials(options));
    if (checkpointer_ != nullptr) {
      PS_RETURN_IF_ERROR(checkpointer_->Prepare());
      PS_ASSIGN_OR_RETURN(Checkpointer::Loaded loaded,
                          checkpointer_->LoadNewest());
      if (loaded.number == 0) {
        spdlog::info("no checkpoint in {}; starting empty",
                     options.checkpoint_dir);
      } else {
        spdlog::info("loaded checkpoint {} from {}", loaded.number,
                     loaded.path);
        if (!loaded.summary.empty()) spdlog::info("{}", loaded.summary);
        if (store_->options().sync && loaded.manifest.sync_cut() &&
            loaded.summary.empty()) {
          store_->counters().SetRestored(loaded.number,
                                         !RollBackCluster(loaded));
        } else {
          CheckRolledBack(loaded);
        }
      }
      // Shard 0 coordinates the cluster's periodic checkpoints.
      std::function<void()> periodic;
      const bool coordinates = num_shards_ == 1 || peers_.size() == num_shards_;
      if (shard_index_ == 0 && !coordinates &&
          checkpoint_interval_ > absl::ZeroDuration()) {
        spdlog::warn(
            "--checkpoint_interval_s: shard 0 of {} shards makes the "
            "cluster's checkpoints only with every shard's address "
            "(--peers); without it there are no periodic checkpoints",
            num_shards_);
      }
      if (shard_index_ == 0 && coordinates) {
        periodic = [this] {
          auto written = coordinator_->Make();
          if (written.ok()) {
            spdlog::info(
                "checkpoint {} ({} parts, {} bytes, {:.3f} s, parts cut "
                "within {:.3f} s)",
                written->number(), written->parts_size(), written->bytes(),
                written->seconds(), written->cut_spread_seconds());
          }
          CheckpointDone(written.status());
        };
      } else if (checkpoint_interval_ > absl::ZeroDuration()) {
        spdlog::info(
            "--checkpoint_interval_s: shard 0 makes the cluster's periodic "
            "checkpoints; this shard writes its part when asked");
      }
      checkpoints_ = std::make_unique<CheckpointThread>(checkpoint_interval_,
                                                        std::move(periodic));
    }
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    const std::string address = absl::StrCat(host_, ":", options.port);
    builder.AddListeningPort(address, credentials, &port_);
    const int max_bytes = options.max_message_mb * 1024 * 1024;
    builder.SetMaxReceiveMessageSize(max_bytes);
    builder.SetMaxSendMessageSize(max_bytes);
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                               options.max_concurrent_streams);
    ApplyGrpcArgs(options.grpc_args, builder);
    if (options.grpc_memory_bytes > 0) {
      grpc::ResourceQuota quota("ps_server");
      quota.Resize(options.grpc_memory_bytes);
      builder.SetResourceQuota(quota);
    }
    builder.RegisterService(&service_);
    builder.RegisterService(&admin_);
    std::vector<
        std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
        interceptors;
    interceptors.push_back(calls_.NewInterceptorFactory());
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
    server_ = builder.BuildAndStart();
    if (server_ == nullptr || port_ == 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot listen on ", address,
                       " (is the port in use or the host not local?)"));
    }
    if (store_->options().sync || store_->options().ssp) {
      // A few ticks per lease: a dead member is dropped at most a tenth of
      // a lease late.
      ticker_ = std::make_unique<Ticker>(
          store_.get(), std::clamp(store_->options().lease_timeout / 10,
                                   absl::Milliseconds(10), absl::Seconds(1)));
    }
    if (options.metrics_port >= 0) {
      PS_ASSIGN_OR_RETURN(
          metrics_, MetricsServer::Start([this] { return Stats(); }, host_,
                                         options.metrics_port));
    }
    {
      absl::MutexLock lock(&mu_);
      started_ = true;
      server_->GetHealthCheckService()->SetServingStatus(!checkpoint_failing_);
    }
    return absl::OkStatus();
  }

  int port() const override { return port_; }
  std::string address() const override {
    return absl::StrCat(host_, ":", port_);
  }
  // The default optimizer in force (after any checkpoint was loaded).
  std::string DefaultOptimizerText() const {
    auto config = store_->GetOptimizer("");
    if (!config.ok()) return "?";
    config->clear_config_version();
    return OptimizerConfigToText(*config);
  }

  int metrics_port() const override {
    return metrics_ == nullptr ? -1 : metrics_->port();
  }

  absl::Status Shutdown() override {
    {
      absl::MutexLock lock(&mu_);
      if (shut_down_ || server_ == nullptr) return absl::OkStatus();
      shut_down_ = true;
      server_->GetHealthCheckService()->SetServingStatus(false);
    }
    if (checkpoints_ != nullptr) checkpoints_->Stop();
    // Let the calls in flight finish (a sync push may wait for its step),
    // then close every connection at once.
    const absl::Time deadline = absl::Now() + kShutdownGrace;
    while (calls_.calls() > 0 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    if (ticker_ != nullptr) ticker_->Stop();
    store_->CloseWaits();
    server_->Shutdown(std::chrono::system_clock::now());
    if (metrics_ != nullptr) metrics_->Stop();
    if (checkpointer_ == nullptr) return absl::OkStatus();
    auto written = checkpointer_->Write();
    if (!written.ok()) {
      // The pushes since the last complete checkpoint are lost with this
      // process: say so, and let the caller exit with an error.
      return absl::Status(
          written.status().code(),
          absl::StrCat("final checkpoint failed, so the pushes since the "
                       "last complete one are lost: ",
                       written.status().message()));
    }
    if (num_shards_ > 1) {
      // A part alone does not count: the cluster's newest complete
      // checkpoint stays the one a restart loads.
      spdlog::info(
          "final checkpoint part {} at {} ({} bytes); it is loaded only "
          "once a coordinator commits it, so run psctl checkpoint before "
          "stopping a cluster of {} shards",
          written->number(), written->path(), written->bytes(), num_shards_);
      return absl::OkStatus();
    }
    spdlog::info("final checkpoint {} at {} ({} bytes)", written->number(),
                 written->path(), written->bytes());
    return absl::OkStatus();
  }

  void Wait() override {
    if (server_ != nullptr) server_->Wait();
  }

 private:
  // ---- CheckpointControl (AdminService), run on the checkpoint thread.

  void Checkpoint(
      absl::AnyInvocable<void(absl::StatusOr<v1::CheckpointResponse>)> done)
      override {
    if (shard_index_ != 0) {
      done(absl::FailedPreconditionError(absl::StrCat(
          "shard 0 makes the cluster's checkpoints; this is shard ",
          shard_index_, ". Ask shard 0 (psctl checkpoint does)")));
      return;
    }
    checkpoints_->Request(
        [this, done = std::move(done)](bool stopping) mutable {
          if (stopping) {
            done(ShuttingDown());
            return;
          }
          auto written = coordinator_->Make();
          CheckpointDone(written.status());
          done(std::move(written));
        });
  }

  void WritePart(const v1::WriteCheckpointPartRequest& request,
                 absl::AnyInvocable<void(absl::StatusOr<v1::CheckpointPart>)>
                     done) override {
    std::optional<uint64_t> cut;
    if (request.sync_cut()) cut = request.sync_step();
    checkpoints_->Request([this, number = request.number(), cut,
                           done = std::move(done)](bool stopping) mutable {
      if (stopping) {
        if (cut.has_value()) store_->ReleaseSteps();
        done(ShuttingDown());
        return;
      }
      auto written = checkpointer_->WritePart(number, cut);
      if (written.ok()) {
        spdlog::info("wrote part {} of checkpoint {} ({} bytes, {:.3f} s)",
                     written->path(), number, written->bytes(),
                     written->seconds());
      }
      CheckpointDone(written.status());
      done(std::move(written));
    });
  }

  void Commit(const v1::CommitCheckpointRequest& request,
              absl::AnyInvocable<void(absl::Status)> done) override {
    checkpoints_->Request(
        [this, request, done = std::move(done)](bool stopping) mutable {
          done(stopping ? ShuttingDown() : checkpointer_->Commit(request));
        });
  }

  absl::StatusOr<v1::ListCheckpointsResponse> List() override {
    return checkpointer_->List();
  }

  void RollBack(const v1::RollBackRequest& request,
                absl::AnyInvocable<void(absl::StatusOr<v1::RollBackResponse>)>
                    done) override {
    checkpoints_->Request([this, request,
                           done = std::move(done)](bool stopping) mutable {
      if (stopping) {
        done(ShuttingDown());
        return;
      }
      auto step = checkpointer_->RollBackTo(request.number());
      if (!step.ok()) {
        spdlog::error(
            "shard {} restarted from checkpoint {} and asked this shard to "
            "go back to it too, which failed: {}. Its part of the model is "
            "newer than shard {}'s",
            request.from_shard(), request.number(),
            std::string(step.status().message()), request.from_shard());
        done(step.status());
        return;
      }
      spdlog::warn(
          "went back to checkpoint {} with the whole cluster (shard {} "
          "restarted from it): the steps from {} on are undone, and workers "
          "resume from step {}",
          request.number(), request.from_shard(), *step, *step);
      store_->counters().SetRestored(request.number(), false);
      v1::RollBackResponse answer;
      answer.set_sync_step(*step);
      done(std::move(answer));
    });
  }

  // Sync mode: after this shard loaded `loaded`, a consistent cut, the
  // whole cluster goes back to it. This shard closes the sessions it
  // restored (live workers then resume from the cut), and asks every peer
  // to go back too, before it serves. Returns whether every peer did (or
  // there are none).
  bool RollBackCluster(const Checkpointer::Loaded& loaded) {
    const uint64_t step = loaded.manifest.sync_step();
    store_->StartAfterRollBack(loaded.number, step);
    if (num_shards_ == 1) {
      spdlog::warn(
          "the cluster went back to checkpoint {} (sync cut before step {}): "
          "workers resume from step {}",
          loaded.number, step, step);
      return true;
    }
    if (peers_.size() != num_shards_) {
      spdlog::error(
          "shard {} restarted from checkpoint {} but cannot ask the other "
          "shards to go back to it without --peers: their part of the model "
          "may be newer",
          shard_index_, loaded.number);
      return false;
    }
    std::vector<std::string> failed;
    for (uint32_t i = 0; i < num_shards_; ++i) {
      if (i == shard_index_) continue;
      v1::RollBackRequest request;
      request.set_number(loaded.number);
      request.set_from_shard(shard_index_);
      v1::RollBackResponse answer;
      auto context = peers_.Context();
      // A peer busy with a checkpoint's cut answers within its timeout.
      context->set_deadline(std::chrono::system_clock::now() +
                            std::chrono::seconds(90));
      grpc::Status status =
          peers_.admin(i)->RollBack(context.get(), request, &answer);
      if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
        // Down or starting: it loads the newest complete checkpoint itself.
        spdlog::warn(
            "shard {} did not answer ({}); when it starts it loads the "
            "newest complete checkpoint",
            i, status.error_message());
        continue;
      }
      if (!status.ok()) {
        failed.push_back(
            absl::StrCat("shard ", i, ": ", status.error_message()));
      }
    }
    if (!failed.empty()) {
      spdlog::error(
          "shard {} went back to checkpoint {}, but not every other shard "
          "could: {}. Their part of the model is newer (ps_rolled_back is 1)",
          shard_index_, loaded.number, absl::StrJoin(failed, "; "));
      return false;
    }
    spdlog::warn(
        "the cluster went back to checkpoint {} (sync cut before step {}): "
        "the steps from {} on are undone on every shard, and workers resume "
        "from step {}",
        loaded.number, step, step, step);
    return true;
  }

  // Whether this shard went back to `loaded` alone: a peer that answers and
  // whose blocks have moved on from its part of the checkpoint kept newer
  // state. Says so in the log and in the stats; the cluster goes on.
  void CheckRolledBack(const Checkpointer::Loaded& loaded) {
    bool rolled_back = false;
    std::vector<std::string> ahead;
    if (num_shards_ > 1 && peers_.size() == num_shards_ &&
        loaded.manifest.num_shards() == num_shards_) {
      for (uint32_t i = 0; i < num_shards_; ++i) {
        if (i == shard_index_) continue;
        auto context = peers_.Context();
        context->set_deadline(std::chrono::system_clock::now() +
                              std::chrono::seconds(2));
        v1::ListVariablesResponse listed;
        grpc::Status status = peers_.admin(i)->ListVariables(
            context.get(), v1::ListVariablesRequest(), &listed);
        if (!status.ok()) continue;  // down, or starting too
        uint64_t steps = 0;
        for (const auto& variable : listed.variables()) {
          for (uint64_t version : variable.versions()) steps += version;
        }
        if (steps != loaded.manifest.parts(i).block_steps()) {
          rolled_back = true;
          ahead.push_back(absl::StrCat(
              "shard ", i, " (", steps, " block steps, the checkpoint ",
              loaded.manifest.parts(i).block_steps(), ")"));
        }
      }
    }
    store_->counters().SetRestored(loaded.number, rolled_back);
    if (rolled_back) {
      spdlog::warn(
          "shard {} went back to checkpoint {} while its peers kept newer "
          "state: {}. Its part of the model is older than theirs; training "
          "goes on from there (ps_rolled_back is 1 in /metrics and psctl "
          "stats). To keep the model from one time, restart every shard "
          "from checkpoint {}",
          shard_index_, loaded.number, absl::StrJoin(ahead, ", "),
          loaded.number);
    } else if (num_shards_ > 1 && peers_.size() != num_shards_) {
      spdlog::warn(
          "shard {} loaded checkpoint {}; without --peers it cannot tell "
          "whether the other shards went on past it (if they did, its part "
          "of the model is now older than theirs)",
          shard_index_, loaded.number);
    }
  }

  // The store's stats and what calls in flight hold.
  v1::Stats Stats() const {
    v1::Stats stats = store_->Stats();
    stats.set_inflight_bytes(calls_.bytes());
    return stats;
  }

  // Health answers NOT_SERVING while checkpoints fail (a shard that cannot
  // checkpoint would lose every push since the last one at its next
  // restart), and SERVING again once one succeeds.
  void CheckpointDone(const absl::Status& status) {
    store_->counters().RecordCheckpoint(status.ok());
    if (!status.ok()) {
      spdlog::error(
          "checkpoint failed: {}; health says NOT_SERVING until one "
          "succeeds",
          std::string(status.message()));
    }
    absl::MutexLock lock(&mu_);
    const bool was_failing = checkpoint_failing_;
    checkpoint_failing_ = !status.ok();
    if (was_failing && status.ok()) {
      spdlog::info("checkpoints succeed again; health says SERVING");
    }
    if (started_ && !shut_down_) {
      server_->GetHealthCheckService()->SetServingStatus(status.ok());
    }
  }

  std::unique_ptr<Store> store_;
  Authenticator auth_;
  CallTracker calls_;
  RpcGate gate_;
  std::unique_ptr<Checkpointer> checkpointer_;
  Peers peers_;
  std::unique_ptr<ClusterCheckpointer> coordinator_;
  std::unique_ptr<CheckpointThread> checkpoints_;
  ParameterServiceImpl service_;
  AdminServiceImpl admin_;
  std::string host_;
  const uint32_t shard_index_;
  const uint32_t num_shards_;
  std::unique_ptr<MetricsServer> metrics_;
  std::unique_ptr<Ticker> ticker_;
  const absl::Duration checkpoint_interval_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  bool checkpoint_failing_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ParameterServer>> ParameterServer::Start(
    const ServerOptions& options) {
  ServerOptions resolved = options;
  if (resolved.default_optimizer.rule_case() ==
          v1::OptimizerConfig::RULE_NOT_SET &&
      resolved.default_optimizer.ByteSizeLong() == 0) {
    resolved.default_optimizer.mutable_adam();
  }
  if (resolved.consistency == Consistency::kSync && resolved.quorum == 0) {
    resolved.quorum = resolved.num_workers;
  }
  PS_RETURN_IF_ERROR(CheckOptions(resolved));

  StoreOptions store_options;
  store_options.shard_index = resolved.shard_index;
  store_options.num_shards = resolved.num_shards;
  store_options.block_size = resolved.block_size;
  store_options.memory_limit_bytes = resolved.memory_limit_bytes;
  store_options.max_workers = resolved.max_workers;
  store_options.max_answer_bytes =
      static_cast<uint64_t>(resolved.max_message_mb) << 20;
  store_options.update_threads = resolved.update_threads;
  store_options.sync = resolved.consistency == Consistency::kSync;
  store_options.ssp = resolved.consistency == Consistency::kSsp;
  store_options.staleness = resolved.staleness;
  store_options.lease_timeout = resolved.lease_timeout;
  store_options.num_workers = resolved.num_workers;
  // Membership counts the explicit quorum only: without one, every member.
  store_options.quorum = options.quorum;
  store_options.default_optimizer = resolved.default_optimizer;

  v1::ClusterInfo info;
  info.set_shard_index(resolved.shard_index);
  info.set_num_shards(resolved.num_shards);
  info.set_block_size(resolved.block_size);
  info.set_consistency(store_options.sync  ? "sync"
                       : store_options.ssp ? "ssp"
                                           : "async");
  info.set_num_workers(store_options.sync ? resolved.num_workers : 0);
  info.set_quorum(store_options.sync ? resolved.quorum : 0);
  info.set_staleness(resolved.staleness);
  if (store_options.sync || store_options.ssp) {
    info.set_lease_timeout_s(absl::ToDoubleSeconds(resolved.lease_timeout));
  }

  PS_ASSIGN_OR_RETURN(Authenticator auth,
                      Authenticator::Load(resolved.worker_tokens_file,
                                          resolved.admin_tokens_file));
  const bool auth_enabled = auth.enabled();
  PeerOptions peers;
  peers.peers = resolved.peers;
  if (!resolved.admin_tokens_file.empty()) {
    // Shards call one another with the first admin token.
    PS_ASSIGN_OR_RETURN(std::vector<TokenLine> tokens,
                        ReadTokenFile(resolved.admin_tokens_file));
    peers.admin_token = tokens.front().secret;
  }
  if (!resolved.tls_cert_file.empty()) {
    PS_ASSIGN_OR_RETURN(peers.tls_roots, ReadSmallFile(resolved.tls_cert_file,
                                                       "--tls_cert_file"));
  }
  auto server = std::make_unique<ServerImpl>(store_options, std::move(auth),
                                             info, resolved, std::move(peers));
  PS_RETURN_IF_ERROR(server->Start(resolved));
  if (!auth_enabled) {
    spdlog::warn(
        "no token files (--worker_tokens_file, --admin_tokens_file): anyone "
        "who reaches {} can read and change every variable and the "
        "optimizer",
        server->address());
  }

  spdlog::info("shard {} of {} serving on {} ({}, block_size {}, optimizer {})",
               resolved.shard_index, resolved.num_shards, server->address(),
               info.consistency(), resolved.block_size,
               server->DefaultOptimizerText());
  return server;
}

}  // namespace ps
