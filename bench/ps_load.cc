// ps_load: end-to-end load on the parameter server, next to the same load on
// an echo server over the same transport.
//
// Starts S shards of ps_server (child processes) and S echo shards (this
// binary with --serve_echo: a ParameterService whose PushPull copies the
// gradient bytes back into the answer and does nothing else), or connects to
// --servers. W worker threads, each with its own ps::Client (as separate
// training processes would have), run Push, Pull or PushPull of one dense
// variable with one call in flight per worker. Each run measures ours and
// then the echo server for --seconds; the medians over --runs are printed
// with their ratio, and the server's RSS against the bytes of values plus
// optimizer state.
//
// --mode=table runs PushPullRows of Zipf-drawn unique ids on a sparse table
// instead (the echo server copies the RowSlices back), and reports the
// shard's bytes per live row and its RSS over the runs (bench/README.md,
// "Sparse tables").
//
//   ps_load --value_bytes=4MiB --workers=2 --runs=5
//   ps_load --servers=127.0.0.1:7000,127.0.0.1:7001 --op=pull
//   ps_load --mode=table --optimizer="adagrad {}" --workers=2
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "common/child_process.h"
#include "common/cli.h"
#include "common/grpc_args.h"
#include "common/optimizer_config.h"
#include "common/rule_catalog.h"
#include "proto/ps/v1/ps.grpc.pb.h"

ABSL_FLAG(std::string, servers, "",
          "comma-separated host:port of running shards to load instead of "
          "starting ps_server children (the echo server is still started)");
ABSL_FLAG(std::string, ps_server, "",
          "the ps_server binary; empty = server/ps_server next to this "
          "binary's folder");
ABSL_FLAG(std::string, server_flags, "",
          "more flags for the ps_server children, space-separated (e.g. "
          "\"--update_threads=1\")");
ABSL_FLAG(uint32_t, shards, 1, "shards to start (of ps_server and of echo)");
ABSL_FLAG(int, workers, 1, "worker threads, one call in flight each");
ABSL_FLAG(std::string, op, "pushpull", "push, pull or pushpull");
ABSL_FLAG(std::string, value_bytes, "4MiB",
          "size of the variable in float32 bytes (e.g. 4KiB, 1MiB, 40MiB); "
          "it has value_bytes/4 values whatever the wire dtype");
ABSL_FLAG(std::string, dtype, "fp32",
          "encoding on the wire, both ways: fp32, bf16 or fp16");
ABSL_FLAG(std::string, optimizer, "adam {}",
          "the variable's rule, an OptimizerConfig in text format");
ABSL_FLAG(uint64_t, block_size, ps::kDefaultBlockSize,
          "the shards' values per block");
ABSL_FLAG(double, seconds, 3, "measured seconds per run and server");
ABSL_FLAG(double, warmup_seconds, 0.5, "unmeasured seconds before each run");
ABSL_FLAG(int, runs, 3, "runs; medians are reported");
ABSL_FLAG(int, channels_per_shard, 1, "ClientOptions::channels_per_shard");
ABSL_FLAG(std::vector<std::string>, grpc_arg, {},
          "gRPC channel arguments, name=integer, comma-separated, for the "
          "clients, the echo server and the ps_server children alike (e.g. "
          "grpc.http2.max_frame_size=1048576)");
ABSL_FLAG(uint64_t, part_kib, ps::ClientOptions().part_bytes >> 10,
          "ClientOptions::part_bytes in KiB: calls are cut into parts of "
          "about this size");
ABSL_FLAG(int, parts_in_flight, ps::ClientOptions().parts_in_flight,
          "ClientOptions::parts_in_flight");
ABSL_FLAG(int, max_message_mb, 64,
          "ClientOptions::max_message_bytes and the servers' "
          "--max_message_mb; large enough that one call is one message");
ABSL_FLAG(bool, echo, true, "also measure the echo server");
ABSL_FLAG(double, checkpoint_every_s, 0,
          "also measure each run with a cluster checkpoint (AdminService "
          "on the first server) every this many seconds, and write the same "
          "bytes sequentially into --checkpoint_dir; 0 = off");
ABSL_FLAG(std::string, checkpoint_dir, "",
          "with --checkpoint_every_s: the started shards' --checkpoint_dir "
          "(one shard) and where the sequential write goes");
ABSL_FLAG(bool, markdown_row, false,
          "print one markdown table row instead of the report");
ABSL_FLAG(bool, server_logs, false, "let the children's stderr through");
ABSL_FLAG(bool, tune_malloc, true,
          "call ps::TuneMalloc() in this (the clients') process");
ABSL_FLAG(std::string, mode, "dense",
          "dense: one dense variable (--op, --value_bytes); table: "
          "PushPullRows on a sparse table (--table_* flags, --optimizer)");
ABSL_FLAG(uint32_t, table_ids, 4096, "--mode=table: unique ids per call");
ABSL_FLAG(uint32_t, table_dim, 64, "--mode=table: the table's dim");
ABSL_FLAG(double, table_id_space, 1e8,
          "--mode=table: ids are drawn from this many possible ids");
ABSL_FLAG(double, table_zipf_s, 1.1,
          "--mode=table: Zipf exponent of the id draws (rank 1 most often)");
ABSL_FLAG(uint64_t, table_max_rows, 0,
          "--mode=table: TablePolicy.max_rows per shard (0 = no limit): at "
          "the limit the least recently updated rows are evicted");
ABSL_FLAG(uint64_t, table_fill_rows, 0,
          "--mode=table: before the runs, push this many distinct rows "
          "(table_ids per call, one worker) and report the shards' RSS "
          "growth per row");
ABSL_FLAG(bool, serve_echo, false,
          "internal: serve the echo ParameterService and print 'listening on "
          "HOST:PORT'");
ABSL_FLAG(uint32_t, shard_index, 0, "internal (--serve_echo): shard index");
ABSL_FLAG(std::string, echo_api, "callback",
          "the echo server's PushPull on gRPC's callback API (\"callback\", "
          "as ps_server serves) or its asynchronous completion-queue API "
          "(\"cq\")");
ABSL_FLAG(int, echo_cq_threads, 2,
          "--echo_api=cq: threads polling completion queues, one queue each");

namespace {

// --grpc_arg, parsed; exits with the parse error.
std::vector<ps::GrpcArg> GrpcArgsOrDie() {
  absl::StatusOr<std::vector<ps::GrpcArg>> args =
      ps::ParseGrpcArgs(absl::GetFlag(FLAGS_grpc_arg));
  if (!args.ok()) {
    std::cerr << "ps_load: --grpc_arg: " << args.status().message()
              << std::endl;
    std::exit(2);
  }
  return *std::move(args);
}

// --- the echo server ---------------------------------------------------------

using ParameterService = ps::v1::ParameterService;

// What the echo server answers a PushPull: the gradient slices and rows
// copied back.
void Echo(const ps::v1::PushRequest& request, ps::v1::PullResponse& response) {
  for (const ps::v1::Slice& gradient : request.gradients()) {
    *response.add_values() = gradient;  // copies the bytes back
  }
  for (const ps::v1::RowSlice& rows : request.rows()) {
    *response.add_rows() = rows;  // ids and values back, in their order
  }
}

// The echo server's methods but PushPull, on the callback API, over `Base`
// (a ParameterService with those methods as callbacks).
template <typename Base>
class EchoMethods : public Base {
 public:
  explicit EchoMethods(ps::v1::ClusterInfo info) : info_(std::move(info)) {}

  grpc::ServerUnaryReactor* GetClusterInfo(
      grpc::CallbackServerContext* context,
      const ps::v1::GetClusterInfoRequest*,
      ps::v1::ClusterInfo* response) override {
    *response = info_;
    return Done(context);
  }
  grpc::ServerUnaryReactor* CreateVariable(
      grpc::CallbackServerContext* context,
      const ps::v1::CreateVariableRequest*,
      ps::v1::CreateVariableResponse* response) override {
    response->set_created(true);
    return Done(context);
  }
  grpc::ServerUnaryReactor* CreateTable(
      grpc::CallbackServerContext* context, const ps::v1::CreateTableRequest*,
      ps::v1::CreateTableResponse* response) override {
    response->set_created(true);
    return Done(context);
  }
  grpc::ServerUnaryReactor* OpenSession(
      grpc::CallbackServerContext* context, const ps::v1::OpenSessionRequest*,
      ps::v1::OpenSessionResponse* response) override {
    response->set_epoch(1);
    return Done(context);
  }
  grpc::ServerUnaryReactor* Push(grpc::CallbackServerContext* context,
                                 const ps::v1::PushRequest*,
                                 ps::v1::PushResponse*) override {
    return Done(context);
  }
  grpc::ServerUnaryReactor* Pull(grpc::CallbackServerContext* context,
                                 const ps::v1::PullRequest* request,
                                 ps::v1::PullResponse* response) override {
    const size_t width = request->dtype() == ps::v1::FLOAT32 ? 4 : 2;
    for (const ps::v1::Slice& asked : request->slices()) {
      ps::v1::Slice* slice = response->add_values();
      slice->set_variable(asked.variable());
      slice->set_offset(asked.offset());
      slice->set_length(asked.length());
      slice->set_dtype(request->dtype());
      slice->mutable_data()->assign(asked.length() * width, '\0');
    }
    return Done(context);
  }

 protected:
  static grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  const ps::v1::ClusterInfo info_;
};

// The echo server on the callback API throughout, as ps_server serves.
class CallbackEchoService final
    : public EchoMethods<ParameterService::CallbackService> {
 public:
  using EchoMethods::EchoMethods;

  grpc::ServerUnaryReactor* PushPull(grpc::CallbackServerContext* context,
                                     const ps::v1::PushRequest* request,
                                     ps::v1::PullResponse* response) override {
    Echo(*request, *response);
    return Done(context);
  }
};

// The echo server with PushPull on the asynchronous completion-queue API
// (the other methods stay callbacks): `threads` threads, each polling its
// own completion queue with kCallsPerQueue calls waiting for requests.
using CqEchoBase = ParameterService::WithCallbackMethod_GetClusterInfo<
    ParameterService::WithCallbackMethod_CreateVariable<
        ParameterService::WithCallbackMethod_Push<
            ParameterService::WithCallbackMethod_Pull<
                ParameterService::WithCallbackMethod_OpenSession<
                    ParameterService::WithCallbackMethod_CreateTable<
                        ParameterService::WithAsyncMethod_PushPull<
                            ParameterService::Service>>>>>>>;

class CqEchoService final : public EchoMethods<CqEchoBase> {
 public:
  using EchoMethods::EchoMethods;

  // Adds the completion queues; call before BuildAndStart.
  void AddQueues(grpc::ServerBuilder& builder, int threads) {
    for (int i = 0; i < threads; ++i) {
      queues_.push_back(builder.AddCompletionQueue());
    }
  }
  // Starts the threads; call after BuildAndStart.
  void Start() {
    for (auto& queue : queues_) {
      for (int i = 0; i < kCallsPerQueue; ++i) new Call(this, queue.get());
      threads_.emplace_back([queue = queue.get()] { Poll(queue); });
    }
  }
  // Call after the server's Shutdown.
  void Stop() {
    for (auto& queue : queues_) queue->Shutdown();
    for (std::thread& thread : threads_) thread.join();
  }

 private:
  static constexpr int kCallsPerQueue = 4;

  // One PushPull: waits for a request, answers it, then frees itself.
  struct Call {
    Call(CqEchoService* service, grpc::ServerCompletionQueue* queue)
        : service(service), queue(queue), writer(&context) {
      service->RequestPushPull(&context, &request, &writer, queue, queue, this);
    }
    CqEchoService* service;
    grpc::ServerCompletionQueue* queue;
    grpc::ServerContext context;
    ps::v1::PushRequest request;
    ps::v1::PullResponse response;
    grpc::ServerAsyncResponseWriter<ps::v1::PullResponse> writer;
    bool answered = false;
  };

  static void Poll(grpc::ServerCompletionQueue* queue) {
    void* tag = nullptr;
    bool ok = false;
    while (queue->Next(&tag, &ok)) {
      auto* call = static_cast<Call*>(tag);
      if (!ok || call->answered) {  // shut down, or answer sent
        delete call;
        continue;
      }
      new Call(call->service, queue);  // the next request's place
      Echo(call->request, call->response);
      call->answered = true;
      call->writer.Finish(call->response, grpc::Status::OK, call);
    }
  }

  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues_;
  std::vector<std::thread> threads_;
};

int ServeEcho() {
  ps::TuneServerMalloc();  // the allocator ps_server runs on
  // Signals are taken by sigwait below; blocked before gRPC starts threads.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ps::v1::ClusterInfo info;
  info.set_shard_index(absl::GetFlag(FLAGS_shard_index));
  info.set_num_shards(absl::GetFlag(FLAGS_shards));
  info.set_block_size(absl::GetFlag(FLAGS_block_size));
  info.set_consistency("async");
  const std::string api = absl::GetFlag(FLAGS_echo_api);
  std::optional<CallbackEchoService> callback_service;
  std::optional<CqEchoService> cq_service;
  grpc::ServerBuilder builder;
  if (api == "cq") {
    cq_service.emplace(info);
    builder.RegisterService(&*cq_service);
    cq_service->AddQueues(builder, absl::GetFlag(FLAGS_echo_cq_threads));
  } else {
    callback_service.emplace(info);
    builder.RegisterService(&*callback_service);
  }
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &port);
  const int max_bytes = absl::GetFlag(FLAGS_max_message_mb) << 20;
  builder.SetMaxReceiveMessageSize(max_bytes);
  builder.SetMaxSendMessageSize(max_bytes);
  ps::ApplyGrpcArgs(GrpcArgsOrDie(), builder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::cerr << "ps_load: the echo server cannot listen" << std::endl;
    return 1;
  }
  if (cq_service) cq_service->Start();
  std::cout << "listening on 127.0.0.1:" << port << std::endl;
  // Runs until SIGTERM or SIGINT (blocked above, before gRPC started its
  // threads), or until the parent dies (PR_SET_PDEATHSIG).
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  server->Shutdown(std::chrono::system_clock::now());
  if (cq_service) cq_service->Stop();
  return 0;
}

// --- child processes ---------------------------------------------------------

// A server process whose first line of stdout is "listening on HOST:PORT".
// It gets SIGTERM when this goes (and SIGKILL if it does not exit).
struct Child {
  std::unique_ptr<ps::ChildProcess> process;
  std::string address;

  ~Child() {
    process->Signal(SIGTERM);
    process->WaitForExit(std::chrono::seconds(10));
  }
  pid_t pid() const { return process->pid(); }
};

std::unique_ptr<Child> StartChild(const std::vector<std::string>& argv) {
  auto process = ps::ChildProcess::Start(
      argv[0], std::vector<std::string>(argv.begin() + 1, argv.end()),
      absl::GetFlag(FLAGS_server_logs) ? ps::StderrTo::Inherit()
                                       : ps::StderrTo::File("/dev/null"));
  if (process == nullptr) return nullptr;
  const std::string line =
      process->ReadLine(std::chrono::seconds(30)).value_or("");
  constexpr absl::string_view kPrefix = "listening on ";
  if (!absl::StartsWith(line, kPrefix)) {
    std::cerr << "ps_load: " << argv[0] << " did not start: '" << line << "'"
              << std::endl;
    return nullptr;
  }
  auto child = std::make_unique<Child>();
  child->process = std::move(process);
  child->address = line.substr(kPrefix.size());
  return child;
}

// VmRSS and VmHWM of a process, bytes.
struct Memory {
  uint64_t rss = 0;
  uint64_t peak = 0;
};

Memory ReadMemory(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  Memory memory;
  std::string line;
  while (std::getline(status, line)) {
    uint64_t kib = 0;
    std::vector<absl::string_view> words =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (words.size() < 2 || !absl::SimpleAtoi(words[1], &kib)) continue;
    if (words[0] == "VmRSS:") memory.rss = kib << 10;
    if (words[0] == "VmHWM:") memory.peak = kib << 10;
  }
  return memory;
}

// CPU seconds a process has used (user + system, all threads).
double ReadCpuSeconds(pid_t pid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string text((std::istreambuf_iterator<char>(stat)),
                   std::istreambuf_iterator<char>());
  // The command name (field 2) may hold spaces; fields 14 and 15 (utime,
  // stime) count from the ')' that ends it: fields 3.. follow.
  const size_t close = text.rfind(')');
  if (close == std::string::npos) return 0;
  std::vector<absl::string_view> fields = absl::StrSplit(
      absl::string_view(text).substr(close + 1), ' ', absl::SkipEmpty());
  uint64_t utime = 0, stime = 0;
  if (fields.size() < 13 || !absl::SimpleAtoi(fields[11], &utime) ||
      !absl::SimpleAtoi(fields[12], &stime)) {
    return 0;
  }
  return static_cast<double>(utime + stime) / sysconf(_SC_CLK_TCK);
}

// --- sparse ids --------------------------------------------------------------

// Zipf(s) ranks in [1, n] by rejection-inversion (Hormann and Derflinger,
// "Rejection-inversion to generate variates from monotone discrete
// distributions", 1996): O(1) per draw, for any n, no table.
class ZipfSampler {
 public:
  ZipfSampler(uint64_t n, double s)
      : n_(n),
        s_(s),
        h_integral_x1_(HIntegral(1.5) - 1.0),
        h_integral_n_(HIntegral(static_cast<double>(n) + 0.5)),
        s_const_(2.0 - HIntegralInverse(HIntegral(2.5) - H(2.0))) {}

  template <typename Rng>
  uint64_t operator()(Rng& rng) {
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    while (true) {
      const double u =
          h_integral_n_ + uniform(rng) * (h_integral_x1_ - h_integral_n_);
      const double x = HIntegralInverse(u);
      double k = std::floor(x + 0.5);
      if (k < 1) k = 1;
      if (k > static_cast<double>(n_)) k = static_cast<double>(n_);
      if (k - x <= s_const_ || u >= HIntegral(k + 0.5) - H(k)) {
        return static_cast<uint64_t>(k);
      }
    }
  }

 private:
  double H(double x) const { return std::exp(-s_ * std::log(x)); }
  double HIntegral(double x) const {
    const double log_x = std::log(x);
    return Helper2((1.0 - s_) * log_x) * log_x;
  }
  double HIntegralInverse(double x) const {
    double t = x * (1.0 - s_);
    if (t < -1.0) t = -1.0;
    return std::exp(Helper1(t) * x);
  }
  // log1p(x) / x and expm1(x) / x, exact near 0.
  static double Helper1(double x) {
    return std::abs(x) > 1e-8 ? std::log1p(x) / x
                              : 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x));
  }
  static double Helper2(double x) {
    return std::abs(x) > 1e-8
               ? std::expm1(x) / x
               : 1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x));
  }

  uint64_t n_;
  double s_;
  double h_integral_x1_;
  double h_integral_n_;
  double s_const_;
};

// A rank's id: ranks scattered over 64 bits (splitmix64's finalizer, a
// bijection), so that the hot ids are not the small ones.
uint64_t IdOfRank(uint64_t rank) {
  uint64_t z = rank + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The ids of one call: Zipf draws until `count` are unique.
class IdDrawer {
 public:
  IdDrawer(uint64_t space, double s, uint64_t seed)
      : zipf_(space, s), rng_(seed) {}
  void Draw(size_t count, std::vector<uint64_t>& ids) {
    seen_.clear();
    ids.clear();
    while (ids.size() < count) {
      const uint64_t id = IdOfRank(zipf_(rng_));
      if (seen_.insert(id).second) ids.push_back(id);
    }
  }

 private:
  ZipfSampler zipf_;
  std::mt19937_64 rng_;
  absl::flat_hash_set<uint64_t> seen_;
};

// --- the load ----------------------------------------------------------------

enum class Op { kPush, kPull, kPushPull };

struct RunResult {
  // Checkpoints made during the measured time, their bytes and seconds.
  int checkpoints = 0;
  uint64_t checkpoint_bytes = 0;
  double checkpoint_seconds = 0;
  double seconds = 0;
  uint64_t calls = 0;
  uint64_t wire_bytes = 0;  // payload: request + answer values
  double p50_us = 0;
  double p99_us = 0;
  double server_cpu_s = 0;  // the servers' CPU time over the measured calls
  double gbps() const { return wire_bytes / seconds / 1e9; }
  // Server CPU seconds per GB of payload.
  double cpu_s_per_gb() const {
    return wire_bytes == 0 ? 0 : server_cpu_s / (wire_bytes / 1e9);
  }
  double calls_per_s() const { return calls / seconds; }
};

struct Load {
  bool table = false;  // PushPullRows of table_ids ids on table "t"
  uint32_t table_ids = 0;
  uint32_t dim = 0;
  uint64_t id_space = 0;
  double zipf_s = 0;
  uint64_t max_rows = 0;
  Op op;
  uint64_t values;
  ps::v1::DType dtype;
  int workers;
  double seconds;
  double warmup;
};

absl::StatusOr<std::vector<std::unique_ptr<ps::Client>>> Connect(
    const std::vector<std::string>& addresses, const Load& load,
    const ps::v1::OptimizerConfig& optimizer) {
  std::vector<std::unique_ptr<ps::Client>> clients;
  ps::ClientOptions options;
  options.addresses = addresses;
  options.channels_per_shard = absl::GetFlag(FLAGS_channels_per_shard);
  options.channel_args = GrpcArgsOrDie();
  options.part_bytes = absl::GetFlag(FLAGS_part_kib) << 10;
  options.parts_in_flight = absl::GetFlag(FLAGS_parts_in_flight);
  options.max_message_bytes =
      static_cast<size_t>(absl::GetFlag(FLAGS_max_message_mb)) << 20;
  for (int w = 0; w < load.workers; ++w) {
    auto client = ps::Client::Connect(options);
    if (!client.ok()) return client.status();
    clients.push_back(*std::move(client));
  }
  if (load.table) {
    ps::TableOptions table;
    table.optimizer = optimizer;
    table.policy.set_max_rows(load.max_rows);
    for (int w = 0; w < load.workers; ++w) {
      auto created = clients[w]->CreateTable("t", load.dim, table);
      if (!created.ok()) return created.status();
    }
    return clients;
  }
  auto created = clients[0]->CreateVariable(
      "w", {load.values}, {},
      std::optional<ps::v1::OptimizerConfig>(optimizer));
  if (!created.ok()) return created.status();
  // Every other client learns the size (and checks the shape).
  for (int w = 1; w < load.workers; ++w) {
    auto again = clients[w]->CreateVariable(
        "w", {load.values}, {}, std::nullopt, ps::v1::ON_EXISTS_REUSE);
    if (!again.ok()) return again.status();
  }
  return clients;
}

// `server_cpu` reads the servers' CPU seconds so far (0 when unknown).
// `admin`: when set, a cluster checkpoint is asked of it every
// `checkpoint_every` of the measured time.
absl::StatusOr<RunResult> RunLoad(
    std::vector<std::unique_ptr<ps::Client>>& clients, const Load& load,
    const std::function<double()>& server_cpu,
    ps::v1::AdminService::Stub* admin = nullptr,
    absl::Duration checkpoint_every = absl::ZeroDuration()) {
  const size_t width = load.dtype == ps::v1::FLOAT32 ? 4 : 2;
  uint64_t bytes_per_call = 0;
  switch (load.op) {
    case Op::kPush:
    case Op::kPull:
      bytes_per_call = load.values * width;
      break;
    case Op::kPushPull:
      bytes_per_call = 2 * load.values * width;
      break;
  }
  if (load.table) {
    // ids and rows, both ways.
    bytes_per_call =
        2 * uint64_t{load.table_ids} * (8 + uint64_t{load.dim} * width);
  }
  std::atomic<int> phase{0};  // 0 warm-up, 1 measuring, 2 stop
  std::vector<std::vector<float>> latencies(load.workers);
  std::vector<std::string> errors(load.workers);
  std::vector<std::thread> threads;
  for (int w = 0; w < load.workers; ++w) {
    threads.emplace_back([&, w] {
      ps::Client& client = *clients[w];
      std::vector<float> gradient(load.values, 1e-3f * (w + 1));
      std::vector<float> values(load.values);
      ps::PushOptions push;
      push.dtype = load.dtype;
      push.pull_dtype = load.dtype;
      ps::PullOptions pull;
      pull.dtype = load.dtype;
      std::vector<float>& mine = latencies[w];
      mine.reserve(1 << 16);
      std::optional<IdDrawer> drawer;
      std::vector<uint64_t> ids;
      if (load.table) {
        drawer.emplace(load.id_space, load.zipf_s, 1000 + w);
        gradient.assign(uint64_t{load.table_ids} * load.dim, 1e-3f * (w + 1));
        values.assign(gradient.size(), 0.0f);
      }
      while (phase.load(std::memory_order_relaxed) < 2) {
        // The draws are not timed (they are the same for both servers).
        if (load.table) drawer->Draw(load.table_ids, ids);
        const auto start = std::chrono::steady_clock::now();
        absl::Status status;
        if (load.table) {
          status = client.PushPullRows("t", ids, gradient, values, push);
        } else if (load.op == Op::kPush) {
          status = client.Push("w", gradient, push);
        } else if (load.op == Op::kPull) {
          status = client.Pull("w", values, pull);
        } else {
          status = client.PushPull("w", gradient, values, push);
        }
        const auto end = std::chrono::steady_clock::now();
        if (!status.ok()) {
          errors[w] = status.ToString();
          return;
        }
        if (phase.load(std::memory_order_relaxed) == 1) {
          mine.push_back(
              std::chrono::duration<float, std::micro>(end - start).count());
        }
      }
    });
  }
  absl::SleepFor(absl::Seconds(load.warmup));
  phase = 1;
  const absl::Time start = absl::Now();
  const double cpu_start = server_cpu();
  RunResult result;
  std::string checkpoint_error;
  std::thread checkpointer;
  if (admin != nullptr) {
    checkpointer = std::thread([&] {
      absl::Time next = start + checkpoint_every;
      while (true) {
        while (absl::Now() < next && phase.load() == 1) {
          absl::SleepFor(absl::Milliseconds(5));
        }
        if (phase.load() != 1) return;
        grpc::ClientContext context;
        ps::v1::CheckpointResponse written;
        grpc::Status status =
            admin->Checkpoint(&context, ps::v1::CheckpointRequest(), &written);
        if (!status.ok()) {
          checkpoint_error = status.error_message();
          return;
        }
        ++result.checkpoints;
        result.checkpoint_bytes += written.bytes();
        result.checkpoint_seconds += written.seconds();
        next += checkpoint_every;
      }
    });
  }
  absl::SleepFor(absl::Seconds(load.seconds));
  // Calls that end after this point are counted too; the time runs until
  // the last one ends, so throughput stays exact.
  phase = 2;
  for (std::thread& t : threads) t.join();
  if (checkpointer.joinable()) checkpointer.join();
  if (!checkpoint_error.empty()) {
    return absl::UnknownError(
        absl::StrCat("a checkpoint failed: ", checkpoint_error));
  }
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
  const double cpu_end = server_cpu();
  for (const std::string& e : errors) {
    if (!e.empty()) {
      return absl::UnknownError(absl::StrCat("a call failed: ", e));
    }
  }
  std::vector<float> all;
  for (const auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  result.seconds = elapsed;
  result.server_cpu_s = cpu_end - cpu_start;
  result.calls = all.size();
  result.wire_bytes = result.calls * bytes_per_call;
  if (!all.empty()) {
    std::sort(all.begin(), all.end());
    result.p50_us = all[all.size() / 2];
    result.p99_us = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  }
  return result;
}

// Table "t" on the shards at `addresses`, summed (AdminService.ListVariables).
struct TableRows {
  uint64_t rows = 0;
  uint64_t bytes = 0;
  uint64_t created = 0;
  uint64_t evicted = 0;
};

absl::StatusOr<TableRows> ReadTableRows(
    const std::vector<std::string>& addresses) {
  TableRows total;
  for (const std::string& address : addresses) {
    auto admin = ps::v1::AdminService::NewStub(
        grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    ps::v1::ListVariablesResponse listed;
    grpc::Status status =
        admin->ListVariables(&context, ps::v1::ListVariablesRequest(), &listed);
    if (!status.ok()) {
      return absl::UnavailableError(absl::StrCat("ListVariables on ", address,
                                                 ": ", status.error_message()));
    }
    for (const ps::v1::VariableInfo& info : listed.variables()) {
      if (info.name() != "t" || !info.has_table()) continue;
      total.rows += info.table().rows();
      total.bytes += info.table().bytes();
      total.created += info.table().rows_created();
      total.evicted += info.table().rows_evicted();
    }
  }
  return total;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct Summary {
  double gbps = 0, calls_per_s = 0, values_per_s = 0, p50_us = 0, p99_us = 0;
  double cpu_s_per_gb = 0;
};

Summary Summarize(const std::vector<RunResult>& runs, uint64_t values, Op op) {
  std::vector<double> gbps, calls, p50, p99, cpu;
  for (const RunResult& r : runs) {
    gbps.push_back(r.gbps());
    cpu.push_back(r.cpu_s_per_gb());
    calls.push_back(r.calls_per_s());
    p50.push_back(r.p50_us);
    p99.push_back(r.p99_us);
  }
  Summary s;
  s.gbps = Median(gbps);
  s.calls_per_s = Median(calls);
  // PushPull moves every value twice; values/s counts each once.
  s.values_per_s = s.calls_per_s * values;
  s.p50_us = Median(p50);
  s.p99_us = Median(p99);
  s.cpu_s_per_gb = Median(cpu);
  (void)op;
  return s;
}

// float32 slots of optimizer state per value, as the store allocates them.
int StateSlotCount(const ps::v1::OptimizerConfig& config) {
  auto settings = ps::ResolveOptimizerConfig(config);
  if (!settings.ok()) return 0;
  return std::popcount(ps::optimizer::SlotsOf(settings->rule));
}

absl::StatusOr<uint64_t> ParseBytes(const std::string& text) {
  struct Unit {
    absl::string_view suffix;
    uint64_t factor;
  };
  constexpr Unit kUnits[] = {
      {"GiB", 1ull << 30}, {"MiB", 1ull << 20}, {"KiB", 1ull << 10}, {"B", 1}};
  absl::string_view number = text;
  uint64_t factor = 1;
  for (const Unit& unit : kUnits) {
    if (absl::EndsWith(number, unit.suffix)) {
      number.remove_suffix(unit.suffix.size());
      factor = unit.factor;
      break;
    }
  }
  double value = 0;
  if (!absl::SimpleAtod(number, &value) || value <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--value_bytes: cannot read '", text, "'"));
  }
  return static_cast<uint64_t>(value * factor);
}

std::string SizeName(uint64_t bytes) {
  if (bytes >= (1u << 20) && bytes % (1u << 20) == 0) {
    return absl::StrCat(bytes >> 20, " MiB");
  }
  if (bytes >= 1024 && bytes % 1024 == 0) {
    return absl::StrCat(bytes >> 10, " KiB");
  }
  return absl::StrCat(bytes, " B");
}

std::string ServerBinary() {
  std::string path = absl::GetFlag(FLAGS_ps_server);
  if (!path.empty()) return path;
  const std::filesystem::path self =
      std::filesystem::read_symlink("/proc/self/exe");
  return (self.parent_path().parent_path() / "server" / "ps_server").string();
}

int Fail(absl::string_view message) {
  std::cerr << "ps_load: " << message << std::endl;
  return 2;
}

uint64_t RssOf(const std::vector<std::unique_ptr<Child>>& children) {
  uint64_t rss = 0;
  for (const auto& child : children) rss += ReadMemory(child->pid()).rss;
  return rss;
}

// --mode=table: optional fill, then the runs (ours, then echo, per run), then
// the report: speed, and memory per live row against the target.
int RunTableMode(const Load& load, int runs,
                 const ps::v1::OptimizerConfig& optimizer,
                 const std::vector<std::unique_ptr<Child>>& ours_children,
                 const std::vector<std::string>& ours_addresses,
                 std::vector<std::unique_ptr<ps::Client>>& ours_clients,
                 std::vector<std::unique_ptr<ps::Client>>& echo_clients,
                 const std::function<double()>& ours_cpu,
                 const std::function<double()>& echo_cpu) {
  const bool echo = !echo_clients.empty();
  const bool have_rss = !ours_children.empty();
  const double mib = 1 << 20;
  const int slots = StateSlotCount(optimizer);
  // Values and slots, 20% of allocator and table slack, 48 bytes of
  // bookkeeping: the target of issue 17 (Adam dim 64: 969.6 bytes).
  const double target_per_row = 1.2 * (4.0 * load.dim * (1 + slots)) + 48;

  // Fill: distinct ids (ranks past the Zipf space), pushed without a pull.
  std::string fill_line;
  const uint64_t fill = absl::GetFlag(FLAGS_table_fill_rows);
  if (fill > 0) {
    auto before = ReadTableRows(ours_addresses);
    if (!before.ok()) return Fail(before.status().message());
    const uint64_t rss_before = have_rss ? RssOf(ours_children) : 0;
    std::vector<uint64_t> ids;
    std::vector<float> grads;
    const absl::Time begin = absl::Now();
    for (uint64_t done = 0; done < fill; done += ids.size()) {
      const uint64_t n = std::min<uint64_t>(load.table_ids, fill - done);
      ids.resize(n);
      for (uint64_t i = 0; i < n; ++i) {
        ids[i] = IdOfRank(load.id_space + 1 + done + i);
      }
      grads.assign(n * load.dim, 1e-3f);
      absl::Status pushed = ours_clients[0]->PushRows("t", ids, grads);
      if (!pushed.ok()) return Fail(pushed.ToString());
    }
    const double fill_s = absl::ToDoubleSeconds(absl::Now() - begin);
    auto after = ReadTableRows(ours_addresses);
    if (!after.ok()) return Fail(after.status().message());
    const uint64_t rss_after = have_rss ? RssOf(ours_children) : 0;
    const double rows = static_cast<double>(after->rows) - before->rows;
    fill_line = absl::StrFormat(
        "fill: %d rows pushed in %.1f s; live rows %d -> %d; RSS %.1f -> %.1f "
        "MiB: %.1f bytes per row from RSS, %.1f from TableInfo.bytes; target "
        "1.2 x (4 x %d x %d) + 48 = %.1f\n",
        fill, fill_s, before->rows, after->rows, rss_before / mib,
        rss_after / mib,
        rows > 0 ? (static_cast<double>(rss_after) - rss_before) / rows : 0,
        rows > 0 ? (static_cast<double>(after->bytes) - before->bytes) / rows
                 : 0,
        load.dim, 1 + slots, target_per_row);
  }

  auto start_rows = ReadTableRows(ours_addresses);
  if (!start_rows.ok()) return Fail(start_rows.status().message());
  const uint64_t rss_first = have_rss ? RssOf(ours_children) : 0;
  std::vector<RunResult> ours_runs, echo_runs;
  std::vector<std::pair<uint64_t, uint64_t>> rss_runs;  // start, end
  for (int r = 0; r < runs; ++r) {
    const uint64_t rss_start = have_rss ? RssOf(ours_children) : 0;
    absl::StatusOr<RunResult> ours_run = RunLoad(ours_clients, load, ours_cpu);
    if (!ours_run.ok()) return Fail(ours_run.status().message());
    ours_runs.push_back(*ours_run);
    rss_runs.emplace_back(rss_start, have_rss ? RssOf(ours_children) : 0);
    if (echo) {
      absl::StatusOr<RunResult> echo_run =
          RunLoad(echo_clients, load, echo_cpu);
      if (!echo_run.ok()) return Fail(echo_run.status().message());
      echo_runs.push_back(*echo_run);
    }
  }
  auto end_rows = ReadTableRows(ours_addresses);
  if (!end_rows.ok()) return Fail(end_rows.status().message());
  const uint64_t rss_last = have_rss ? RssOf(ours_children) : 0;

  const Summary ours = Summarize(ours_runs, load.values, load.op);
  const Summary echo_summary = Summarize(echo_runs, load.values, load.op);
  const double ratio = echo ? ours.gbps / echo_summary.gbps : 0;
  const double p50_ratio = echo ? ours.p50_us / echo_summary.p50_us : 0;
  const bool have_cpu = have_rss && echo;
  const double new_rows =
      static_cast<double>(end_rows->rows) - start_rows->rows;
  const double rss_per_row =
      have_rss && new_rows > 0
          ? (static_cast<double>(rss_last) - rss_first) / new_rows
          : 0;
  const double info_per_row =
      end_rows->rows > 0 ? static_cast<double>(end_rows->bytes) / end_rows->rows
                         : 0;
  const std::string rule = ps::OptimizerConfigToText(optimizer);

  if (absl::GetFlag(FLAGS_markdown_row)) {
    // | mode | optimizer | W | max_rows | ours calls/s | ours GB/s |
    // echo GB/s | ratio | ours p50 us | echo p50 us | ours p99 us |
    // server CPU s/GB ours / echo | live rows | RSS B/row (load) |
    // TableInfo B/row | target B/row | RSS MiB start -> end |
    std::cout << absl::StrFormat(
                     "| table | %s | %d | %s | %.0f | %.3f | %.3f | %.2f | "
                     "%.0f | %.0f | %.0f | %.2f / %.2f | %d | %.0f | %.0f | "
                     "%.0f | %.0f -> %.0f |",
                     rule, load.workers,
                     load.max_rows == 0 ? std::string("-")
                                        : absl::StrCat(load.max_rows),
                     ours.calls_per_s, ours.gbps, echo_summary.gbps, ratio,
                     ours.p50_us, echo_summary.p50_us, ours.p99_us,
                     ours.cpu_s_per_gb, echo_summary.cpu_s_per_gb,
                     end_rows->rows, rss_per_row, info_per_row, target_per_row,
                     rss_first / mib, rss_last / mib)
              << std::endl;
    if (!fill_line.empty()) std::cout << fill_line;
    return 0;
  }

  std::cout << absl::StrFormat(
      "table: PushPullRows of %d unique ids x dim %d (Zipf s=%.2f over %d "
      "ids), %d worker(s), %u shard(s), optimizer '%s', max_rows %d\n"
      "medians of %d runs of %.1f s each; payload counts ids + rows, request "
      "+ answer (%.2f MiB per call)\n\n",
      load.table_ids, load.dim, load.zipf_s, load.id_space, load.workers,
      static_cast<unsigned>(ours_addresses.size()), rule, load.max_rows, runs,
      load.seconds, 2.0 * load.table_ids * (8 + 4.0 * load.dim) / mib);
  std::cout << absl::StrFormat("%-6s %9s %11s %10s %10s\n", "server", "GB/s",
                               "calls/s", "p50 us", "p99 us");
  auto print = [](const char* name, const Summary& s) {
    std::cout << absl::StrFormat("%-6s %9.3f %11.0f %10.0f %10.0f\n", name,
                                 s.gbps, s.calls_per_s, s.p50_us, s.p99_us);
  };
  print("ours", ours);
  if (echo) {
    print("echo", echo_summary);
    std::cout << absl::StrFormat(
        "ratio  %9.2f (throughput, ours/echo); p50 %.2f (ours/echo)\n", ratio,
        p50_ratio);
  }
  if (have_cpu) {
    std::cout << absl::StrFormat(
        "server CPU per GB of payload: ours %.3f s, echo %.3f s, ratio %.2f\n",
        ours.cpu_s_per_gb, echo_summary.cpu_s_per_gb,
        echo_summary.cpu_s_per_gb > 0
            ? ours.cpu_s_per_gb / echo_summary.cpu_s_per_gb
            : 0);
  }
  std::cout << "\n" << fill_line;
  std::cout << absl::StrFormat(
      "rows: %d live on the shard(s) after the runs (%d created, %d evicted "
      "since start); TableInfo.bytes %.1f per row; target 1.2 x (4 x %d x %d) "
      "+ 48 = %.1f per row\n",
      end_rows->rows, end_rows->created, end_rows->evicted, info_per_row,
      load.dim, 1 + slots, target_per_row);
  if (have_rss) {
    std::cout << absl::StrFormat(
        "RSS %.1f MiB before the first run, %.1f MiB after the last: %.1f "
        "bytes per row of the %.0f rows the runs added\nRSS at the start -> "
        "end of each run, MiB:",
        rss_first / mib, rss_last / mib, rss_per_row, new_rows);
    for (const auto& [a, b] : rss_runs) {
      std::cout << absl::StrFormat(" %.1f->%.1f", a / mib, b / mib);
    }
    std::cout << std::endl;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "End-to-end load on the parameter server against an echo server.\n"
      "Example: ps_load --value_bytes=4MiB --workers=2 --runs=5");
  ps::ParseCommandLineWithHelp(argc, argv);
  GrpcArgsOrDie();  // a bad one ends here, before any child starts
  const std::string echo_api = absl::GetFlag(FLAGS_echo_api);
  if (echo_api != "callback" && echo_api != "cq") {
    std::cerr << "ps_load: --echo_api is \"callback\" or \"cq\", not \""
              << echo_api << "\"" << std::endl;
    return 2;
  }
  if (absl::GetFlag(FLAGS_echo_cq_threads) < 1) {
    std::cerr << "ps_load: --echo_cq_threads must be at least 1" << std::endl;
    return 2;
  }
  if (absl::GetFlag(FLAGS_serve_echo)) return ServeEcho();
  spdlog::set_level(spdlog::level::warn);
  if (absl::GetFlag(FLAGS_tune_malloc)) ps::TuneMalloc();

  Load load;
  const std::string op = absl::GetFlag(FLAGS_op);
  if (op == "push") {
    load.op = Op::kPush;
  } else if (op == "pull") {
    load.op = Op::kPull;
  } else if (op == "pushpull") {
    load.op = Op::kPushPull;
  } else {
    return Fail("--op must be push, pull or pushpull");
  }
  auto bytes = ParseBytes(absl::GetFlag(FLAGS_value_bytes));
  if (!bytes.ok()) return Fail(bytes.status().message());
  load.values = std::max<uint64_t>(1, *bytes / 4);
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  if (dtype == "fp32") {
    load.dtype = ps::v1::FLOAT32;
  } else if (dtype == "bf16") {
    load.dtype = ps::v1::BFLOAT16;
  } else if (dtype == "fp16") {
    load.dtype = ps::v1::FLOAT16;
  } else {
    return Fail("--dtype must be fp32, bf16 or fp16");
  }
  load.workers = absl::GetFlag(FLAGS_workers);
  load.seconds = absl::GetFlag(FLAGS_seconds);
  load.warmup = absl::GetFlag(FLAGS_warmup_seconds);
  const int runs = absl::GetFlag(FLAGS_runs);
  if (load.workers < 1 || runs < 1 || load.seconds <= 0) {
    return Fail("--workers, --runs and --seconds must be positive");
  }
  auto optimizer = ps::ParseOptimizerConfig(absl::GetFlag(FLAGS_optimizer));
  if (!optimizer.ok()) return Fail(optimizer.status().message());
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode == "table") {
    load.table = true;
    load.table_ids = absl::GetFlag(FLAGS_table_ids);
    load.dim = absl::GetFlag(FLAGS_table_dim);
    load.id_space = static_cast<uint64_t>(absl::GetFlag(FLAGS_table_id_space));
    load.zipf_s = absl::GetFlag(FLAGS_table_zipf_s);
    load.max_rows = absl::GetFlag(FLAGS_table_max_rows);
    load.op = Op::kPushPull;
    if (load.table_ids == 0 || load.dim == 0 || load.zipf_s <= 0 ||
        load.id_space < 2 * uint64_t{load.table_ids}) {
      return Fail(
          "--table_ids, --table_dim and --table_zipf_s must be positive and "
          "--table_id_space at least twice --table_ids");
    }
    if (load.dtype != ps::v1::FLOAT32) {
      return Fail("--mode=table measures fp32 rows");
    }
  } else if (mode != "dense") {
    return Fail("--mode must be dense or table");
  }

  const uint32_t shards = absl::GetFlag(FLAGS_shards);
  const std::string block_size = absl::StrCat(absl::GetFlag(FLAGS_block_size));
  const std::string max_mb = absl::StrCat(absl::GetFlag(FLAGS_max_message_mb));

  // Children first, before this process starts any gRPC thread.
  std::vector<std::unique_ptr<Child>> ours_children, echo_children;
  std::vector<std::string> ours_addresses, echo_addresses;
  if (absl::GetFlag(FLAGS_servers).empty()) {
    for (uint32_t s = 0; s < shards; ++s) {
      std::vector<std::string> args = {
          ServerBinary(), absl::StrCat("--num_shards=", shards),
          absl::StrCat("--shard_index=", s), "--block_size=" + block_size,
          "--max_message_mb=" + max_mb};
      for (absl::string_view flag : absl::StrSplit(
               absl::GetFlag(FLAGS_server_flags), ' ', absl::SkipEmpty())) {
        args.emplace_back(flag);
      }
      if (!absl::GetFlag(FLAGS_grpc_arg).empty()) {
        args.push_back("--grpc_arg=" +
                       absl::StrJoin(absl::GetFlag(FLAGS_grpc_arg), ","));
      }
      if (!absl::GetFlag(FLAGS_checkpoint_dir).empty()) {
        args.push_back("--checkpoint_dir=" +
                       absl::GetFlag(FLAGS_checkpoint_dir));
      }
      auto child = StartChild(args);
      if (child == nullptr) return Fail("cannot start ps_server");
      ours_addresses.push_back(child->address);
      ours_children.push_back(std::move(child));
    }
  } else {
    ours_addresses = absl::StrSplit(absl::GetFlag(FLAGS_servers), ',');
  }
  const bool echo = absl::GetFlag(FLAGS_echo);
  if (echo) {
    const std::string self =
        std::filesystem::read_symlink("/proc/self/exe").string();
    for (uint32_t s = 0; s < ours_addresses.size(); ++s) {
      auto child = StartChild(
          {self, "--serve_echo",
           absl::StrCat("--shards=", ours_addresses.size()),
           absl::StrCat("--shard_index=", s), "--block_size=" + block_size,
           "--max_message_mb=" + max_mb, "--echo_api=" + echo_api,
           absl::StrCat("--echo_cq_threads=",
                        absl::GetFlag(FLAGS_echo_cq_threads)),
           "--grpc_arg=" + absl::StrJoin(absl::GetFlag(FLAGS_grpc_arg), ",")});
      if (child == nullptr) return Fail("cannot start the echo server");
      echo_addresses.push_back(child->address);
      echo_children.push_back(std::move(child));
    }
  }

  uint64_t baseline = 0;
  for (const auto& child : ours_children)
    baseline += ReadMemory(child->pid()).rss;

  auto ours_clients = Connect(ours_addresses, load, *optimizer);
  if (!ours_clients.ok()) return Fail(ours_clients.status().ToString());
  std::vector<std::unique_ptr<ps::Client>> echo_clients;
  if (echo) {
    auto connected = Connect(echo_addresses, load, *optimizer);
    if (!connected.ok()) return Fail(connected.status().ToString());
    echo_clients = *std::move(connected);
  }

  auto cpu_of = [](const std::vector<std::unique_ptr<Child>>& children) {
    return [&children] {
      double seconds = 0;
      for (const auto& child : children)
        seconds += ReadCpuSeconds(child->pid());
      return seconds;
    };
  };
  const std::function<double()> ours_cpu = cpu_of(ours_children);
  const std::function<double()> echo_cpu = cpu_of(echo_children);
  if (load.table) {
    return RunTableMode(load, runs, *optimizer, ours_children, ours_addresses,
                        *ours_clients, echo_clients, ours_cpu, echo_cpu);
  }

  const double checkpoint_every_s = absl::GetFlag(FLAGS_checkpoint_every_s);
  if (checkpoint_every_s > 0) {
    const std::string dir = absl::GetFlag(FLAGS_checkpoint_dir);
    if (dir.empty() || ours_children.size() != 1) {
      return Fail(
          "--checkpoint_every_s needs --checkpoint_dir and one started shard");
    }
    auto admin = ps::v1::AdminService::NewStub(grpc::CreateChannel(
        ours_addresses[0], grpc::InsecureChannelCredentials()));
    std::vector<double> plain_p99, with_p99, plain_p50, with_p50, ckpt_mbps,
        seq_mbps;
    double pause_s = 0;
    for (int r = 0; r < runs; ++r) {
      auto plain = RunLoad(*ours_clients, load, ours_cpu);
      if (!plain.ok()) return Fail(plain.status().message());
      auto with = RunLoad(*ours_clients, load, ours_cpu, admin.get(),
                          absl::Seconds(checkpoint_every_s));
      if (!with.ok()) return Fail(with.status().message());
      if (with->checkpoints == 0) return Fail("no checkpoint was made");
      plain_p99.push_back(plain->p99_us);
      with_p99.push_back(with->p99_us);
      plain_p50.push_back(plain->p50_us);
      with_p50.push_back(with->p50_us);
      ckpt_mbps.push_back(with->checkpoint_bytes / with->checkpoint_seconds /
                          1e6);
      pause_s = with->checkpoint_seconds / with->checkpoints;
      // The same bytes as one checkpoint, written front to back and fsynced
      // into the same folder.
      const uint64_t bytes = with->checkpoint_bytes / with->checkpoints;
      const std::string path = dir + "/sequential-write.probe";
      std::vector<char> chunk(1 << 20, 'x');
      const absl::Time begin = absl::Now();
      FILE* file = std::fopen(path.c_str(), "wb");
      if (file == nullptr) return Fail("cannot write " + path);
      for (uint64_t done = 0; done < bytes; done += chunk.size()) {
        std::fwrite(chunk.data(), 1,
                    std::min<uint64_t>(chunk.size(), bytes - done), file);
      }
      std::fflush(file);
      fsync(fileno(file));
      std::fclose(file);
      seq_mbps.push_back(bytes / absl::ToDoubleSeconds(absl::Now() - begin) /
                         1e6);
      std::filesystem::remove(path);
    }
    std::cout << absl::StrFormat(
        "%s of %s, %d worker(s), optimizer '%s', medians of %d runs of %.1f "
        "s\n"
        "push p50 / p99 us without checkpoints: %.0f / %.0f\n"
        "push p50 / p99 us with a checkpoint every %.1f s: %.0f / %.0f "
        "(one checkpoint takes %.3f s)\n"
        "checkpoint write %.0f MB/s; sequential write of the same bytes to "
        "the same folder %.0f MB/s\n",
        op, SizeName(*bytes), load.workers,
        ps::OptimizerConfigToText(*optimizer), runs, load.seconds,
        Median(plain_p50), Median(plain_p99), checkpoint_every_s,
        Median(with_p50), Median(with_p99), pause_s, Median(ckpt_mbps),
        Median(seq_mbps));
    return 0;
  }

  std::vector<RunResult> ours_runs, echo_runs;
  std::vector<uint64_t> rss_after_run;
  uint64_t peak = 0;
  for (int r = 0; r < runs; ++r) {
    // Returning (not exiting) on failure stops the children.
    absl::StatusOr<RunResult> ours_run = RunLoad(*ours_clients, load, ours_cpu);
    if (!ours_run.ok()) return Fail(ours_run.status().message());
    ours_runs.push_back(*ours_run);
    uint64_t rss = 0;
    peak = 0;
    for (const auto& child : ours_children) {
      const Memory m = ReadMemory(child->pid());
      rss += m.rss;
      peak += m.peak;
    }
    rss_after_run.push_back(rss);
    if (echo) {
      absl::StatusOr<RunResult> echo_run =
          RunLoad(echo_clients, load, echo_cpu);
      if (!echo_run.ok()) return Fail(echo_run.status().message());
      echo_runs.push_back(*echo_run);
    }
  }

  const Summary ours = Summarize(ours_runs, load.values, load.op);
  const Summary echo_summary = Summarize(echo_runs, load.values, load.op);
  const double ratio = echo ? ours.gbps / echo_summary.gbps : 0;
  const double p50_ratio = echo ? ours.p50_us / echo_summary.p50_us : 0;
  // Server CPU per byte: ours over echo (with --servers, ours is unknown).
  const bool have_cpu = !ours_children.empty() && echo;
  const double cpu_ratio = have_cpu && echo_summary.cpu_s_per_gb > 0
                               ? ours.cpu_s_per_gb / echo_summary.cpu_s_per_gb
                               : 0;
  const uint64_t state_bytes =
      load.values * 4 * (1 + StateSlotCount(*optimizer));
  const double mib = 1 << 20;
  const bool have_rss = !ours_children.empty();
  const double rss_delta =
      have_rss ? (static_cast<double>(rss_after_run.back()) - baseline) : 0;
  const double peak_delta =
      have_rss ? (static_cast<double>(peak) - baseline) : 0;

  if (absl::GetFlag(FLAGS_markdown_row)) {
    // | op | size | dtype | W | ours GB/s | echo GB/s | ratio | ours calls/s |
    // ours p50 us | echo p50 us | p50 ratio | ours p99 us |
    // server CPU s/GB ours | echo | ratio | RSS-state MiB |
    std::cout << absl::StrFormat(
                     "| %s | %s | %s | %d | %.2f | %.2f | %.2f | %.0f | %.0f | "
                     "%.0f | %.2f | %.0f | %.3f | %.3f | %.2f | %s |",
                     op, SizeName(*bytes), dtype, load.workers, ours.gbps,
                     echo_summary.gbps, ratio, ours.calls_per_s, ours.p50_us,
                     echo_summary.p50_us, p50_ratio, ours.p99_us,
                     ours.cpu_s_per_gb, echo_summary.cpu_s_per_gb, cpu_ratio,
                     have_rss ? absl::StrFormat("%.0f / %.0f", rss_delta / mib,
                                                state_bytes / mib)
                              : std::string("-"))
              << std::endl;
    return 0;
  }

  std::cout << absl::StrFormat(
      "%s of %s (%d values, %s on the wire), %d worker(s), %u shard(s), "
      "%d channel(s) per shard, optimizer '%s'\n"
      "medians of %d runs of %.1f s each; payload counts request + answer "
      "values\n\n",
      op, SizeName(*bytes), load.values, dtype, load.workers,
      static_cast<unsigned>(ours_addresses.size()),
      absl::GetFlag(FLAGS_channels_per_shard),
      ps::OptimizerConfigToText(*optimizer), runs, load.seconds);
  std::cout << absl::StrFormat("%-6s %9s %12s %11s %10s %10s\n", "server",
                               "GB/s", "Mvalues/s", "calls/s", "p50 us",
                               "p99 us");
  auto print = [](const char* name, const Summary& s) {
    std::cout << absl::StrFormat("%-6s %9.3f %12.1f %11.0f %10.0f %10.0f\n",
                                 name, s.gbps, s.values_per_s / 1e6,
                                 s.calls_per_s, s.p50_us, s.p99_us);
  };
  print("ours", ours);
  if (echo) {
    print("echo", echo_summary);
    std::cout << absl::StrFormat(
        "ratio  %9.2f (throughput, ours/echo); p50 %.2f (ours/echo)\n", ratio,
        p50_ratio);
  }
  if (have_cpu) {
    std::cout << absl::StrFormat(
        "server CPU per GB of payload: ours %.3f s, echo %.3f s, ratio %.2f\n",
        ours.cpu_s_per_gb, echo_summary.cpu_s_per_gb, cpu_ratio);
  }
  if (have_rss) {
    std::cout << absl::StrFormat(
        "\nserver RSS above its start (%.0f MiB): %.1f MiB after the last run "
        "(peak %.1f MiB); values + optimizer state %.1f MiB; limit 1.1 x "
        "state + 64 MiB = %.1f MiB\nRSS after each run, MiB:",
        baseline / mib, rss_delta / mib, peak_delta / mib, state_bytes / mib,
        (1.1 * state_bytes + 64 * mib) / mib);
    for (uint64_t rss : rss_after_run) {
      std::cout << absl::StrFormat(" %.1f", (rss - baseline) / mib);
    }
    std::cout << std::endl;
  }
  return 0;
}
