// The ps_server binary as real child processes: flags, the "listening on"
// line, serving a 2-shard cluster, and graceful exit on signals.
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "common/child_process.h"
#include "tests/server/raw_cluster.h"

namespace ps {
namespace {

using ::ps::testutil::FinishedCalls;
using ::ps::testutil::Iota;
using ::ps::testutil::MakeContext;
using ::ps::testutil::RawCluster;
using ::ps::testutil::Snapshot;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

constexpr char kBinary[] = PS_SERVER_BINARY;
constexpr auto kStartTimeout = std::chrono::seconds(20);
constexpr auto kExitTimeout = std::chrono::seconds(15);

// Starts kBinary with `args` (argv[1..]), its stdout and stderr on pipes.
std::unique_ptr<ChildProcess> StartServer(
    const std::vector<std::string>& args) {
  return ChildProcess::Start(kBinary, args, StderrTo::Pipe());
}

// A started shard and the address it printed.
struct Shard {
  std::unique_ptr<ChildProcess> child;
  std::string address;
};

// Starts ps_server with `args` and reads its "listening on" line.
Shard StartShard(const std::vector<std::string>& args) {
  Shard shard;
  shard.child = StartServer(args);
  EXPECT_NE(shard.child, nullptr) << "cannot start " << kBinary;
  if (shard.child == nullptr) return shard;
  std::optional<std::string> line = shard.child->ReadLine(kStartTimeout);
  EXPECT_TRUE(line.has_value())
      << "no first line; stderr: "
      << shard.child->ReadAllStderr(std::chrono::seconds(1));
  if (!line.has_value()) return shard;
  static const std::regex kListening(R"(listening on 127\.0\.0\.1:(\d+))");
  std::smatch match;
  EXPECT_TRUE(std::regex_match(*line, match, kListening)) << *line;
  if (match.empty()) return shard;
  const int port = std::stoi(match[1]);
  EXPECT_GT(port, 0);
  EXPECT_LT(port, 65536);
  shard.address = "127.0.0.1:" + match[1].str();
  return shard;
}

// Sends `signal_number` and expects exit status 0 within kExitTimeout.
void ExpectCleanExit(ChildProcess& child, int signal_number) {
  child.Signal(signal_number);
  std::optional<int> status = child.WaitForExit(kExitTimeout);
  ASSERT_TRUE(status.has_value()) << "still running after the signal";
  EXPECT_TRUE(WIFEXITED(*status)) << "wait status " << *status;
  if (WIFEXITED(*status)) {
    EXPECT_EQ(WEXITSTATUS(*status), 0);
  }
}

std::vector<std::string> ShardArgs(int index, int num_shards,
                                   std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {
      "--port=0", "--shard_index=" + std::to_string(index),
      "--num_shards=" + std::to_string(num_shards), "--block_size=4",
      "--optimizer=sgd {} learning_rate: 1"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

TEST(PsServerProcessTest, TwoShardClusterServesAndExitsOnSigterm) {
  std::vector<Shard> shards;
  std::vector<std::string> addresses;
  for (int i = 0; i < 2; ++i) {
    shards.push_back(StartShard(ShardArgs(i, 2)));
    ASSERT_FALSE(shards.back().address.empty());
    addresses.push_back(shards.back().address);
  }
  RawCluster raw(addresses, 4);
  for (uint32_t i = 0; i < 2; ++i) {
    v1::ClusterInfo info;
    grpc::Status status = raw.stub(i).GetClusterInfo(
        MakeContext().get(), v1::GetClusterInfoRequest(), &info);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(info.shard_index(), i);
    EXPECT_EQ(info.num_shards(), 2u);
    EXPECT_EQ(info.block_size(), 4u);
    EXPECT_EQ(info.consistency(), "async");
  }

  const uint64_t size = 11;
  const std::vector<float> initial = Iota(size);
  std::vector<bool> created;
  ASSERT_TRUE(raw.Create("w", {size}, initial, &created).ok());
  EXPECT_THAT(created, ElementsAreArray({true, true}));
  std::vector<float> g(size);
  for (size_t j = 0; j < size; ++j) g[j] = static_cast<float>(j % 3) - 1.0f;
  ASSERT_TRUE(raw.Push("w", {.worker_id = "p", .seq = 1}, g).ok());
  std::vector<float> expected = initial;
  for (size_t j = 0; j < size; ++j) expected[j] -= g[j];
  Snapshot pulled = raw.MustPullAll("w", size);
  EXPECT_THAT(pulled.values, ElementsAreArray(expected));
  EXPECT_THAT(pulled.versions, ElementsAreArray({1u, 1u, 1u}));

  Snapshot answer;
  ASSERT_TRUE(raw.Push("w", {.worker_id = "p", .seq = 2}, g, &answer).ok());
  for (size_t j = 0; j < size; ++j) expected[j] -= g[j];
  EXPECT_THAT(answer.values, ElementsAreArray(expected));

  // A wrong-shard slice is refused by the real binary too.
  const uint32_t owner = raw.OwnerOf("w", 0);
  v1::PullRequest request;
  v1::Slice* slice = request.add_slices();
  slice->set_variable("w");
  slice->set_length(1);
  v1::PullResponse response;
  grpc::Status status =
      raw.stub(1 - owner).Pull(MakeContext().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(),
              HasSubstr("shard " + std::to_string(owner)));

  for (Shard& shard : shards) ExpectCleanExit(*shard.child, SIGTERM);
}

TEST(PsServerProcessTest, HealthAnswersServing) {
  Shard shard = StartShard({"--port=0"});
  ASSERT_FALSE(shard.address.empty());
  auto channel =
      grpc::CreateChannel(shard.address, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  auto context = MakeContext();
  std::promise<grpc::Status> done;
  stub.UnaryCall(context.get(), "/grpc.health.v1.Health/Check",
                 grpc::StubOptions(), &request, &response,
                 [&](grpc::Status status) { done.set_value(status); });
  grpc::Status status = done.get_future().get();  // bounded by the deadline
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  // HealthCheckResponse{status: SERVING (1)}.
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));
  ExpectCleanExit(*shard.child, SIGINT);
}

TEST(PsServerProcessTest, SigtermWhileASyncPushWaitsStillExitsZero) {
  Shard shard =
      StartShard({"--port=0", "--block_size=4", "--consistency=sync",
                  "--num_workers=2", "--optimizer=sgd {} learning_rate: 1"});
  ASSERT_FALSE(shard.address.empty());
  RawCluster raw({shard.address}, 4);
  ASSERT_TRUE(raw.Create("w", {4}, Iota(4)).ok());
  // One worker of two pushes step 0; its PushPull waits for the other.
  grpc::Status waiting_status;
  std::thread waiting([&] {
    Snapshot answer;
    waiting_status = raw.Push("w", {.worker_id = "a", .seq = 1, .step = 0},
                              {1, 1, 1, 1}, &answer);
  });
  // Probe with a second push of worker "a" for the same step. Either the
  // first push is in and the probe is refused at once (a already pushed
  // step 0), or the probe got in first, waits until its deadline, and the
  // first push then waits as its repeat. Both ways the first push is in
  // flight, waiting, once the probe returns.
  v1::PushRequest probe;
  probe.set_worker_id("a");
  probe.set_seq(2);
  probe.set_epoch(1);  // a session the shard takes from the push
  probe.set_step(0);
  v1::Slice* g = probe.add_gradients();
  g->set_variable("w");
  g->set_length(4);
  g->set_data(testutil::Encode({1, 1, 1, 1}));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(1));
  v1::PushResponse ignored;
  grpc::Status probe_status = raw.stub(0).Push(&context, probe, &ignored);
  EXPECT_THAT(probe_status.error_code(),
              ::testing::AnyOf(grpc::StatusCode::ALREADY_EXISTS,
                               grpc::StatusCode::DEADLINE_EXCEEDED))
      << probe_status.error_message();
  ExpectCleanExit(*shard.child, SIGTERM);
  waiting.join();
  EXPECT_FALSE(waiting_status.ok()) << "a step without its quorum answered";
}

// With nothing in flight, SIGTERM must not wait out the shutdown grace
// period (5 s), whatever calls came before. `keep_channel_open`: the client
// stays connected, as a worker between steps does.
void ExpectPromptExitAfterCalls(bool keep_channel_open) {
  for (const auto& [what, call] : FinishedCalls()) {
    SCOPED_TRACE(what);
    Shard shard = StartShard({"--port=0", "--block_size=4"});
    ASSERT_FALSE(shard.address.empty());
    auto raw = std::make_unique<RawCluster>(
        std::vector<std::string>{shard.address}, 4);
    call(*raw);
    if (!keep_channel_open) raw.reset();
    const auto start = Clock::now();
    shard.child->Signal(SIGTERM);
    std::optional<int> status = shard.child->WaitForExit(kExitTimeout);
    const auto took = Clock::now() - start;
    ASSERT_TRUE(status.has_value());
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0);
    EXPECT_LT(took, std::chrono::seconds(2))
        << "exit took "
        << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
        << " ms with nothing in flight";
  }
}

TEST(PsServerProcessTest, SigtermIsPromptOnceClientsDisconnected) {
  ExpectPromptExitAfterCalls(/*keep_channel_open=*/false);
}

// A worker between steps keeps its channel open; the shard must not wait for
// it to disconnect once nothing is in flight.
TEST(PsServerProcessTest, SigtermIsPromptWhileClientsStayConnected) {
  ExpectPromptExitAfterCalls(/*keep_channel_open=*/true);
}

struct BadFlags {
  std::string what;
  std::vector<std::string> args;
};

TEST(PsServerProcessTest, BadFlagCombinationsExitWithOneLine) {
  const std::vector<BadFlags> cases = {
      {"shard_index >= num_shards", {"--shard_index=2", "--num_shards=2"}},
      {"quorum > num_workers",
       {"--consistency=sync", "--num_workers=2", "--quorum=3"}},
      {"sync without num_workers", {"--consistency=sync"}},
      {"invalid optimizer", {"--optimizer=adam { beta1: 2 }"}},
      {"unparsable optimizer", {"--optimizer=not a config"}},
      {"optimizer without a rule", {"--optimizer=learning_rate: 0.1"}},
      {"unknown consistency", {"--consistency=bogus"}},
      {"zero block_size", {"--block_size=0"}},
      {"zero shards", {"--num_shards=0"}},
      {"port out of range", {"--port=70000"}},
      {"zero max_message_mb", {"--max_message_mb=0"}},
      {"zero malloc_arenas", {"--malloc_arenas=0"}},
      {"negative update_threads", {"--update_threads=-1"}},
      {"update_threads above 64", {"--update_threads=65"}},
      {"memory_limit_mb below -1", {"--memory_limit_mb=-2"}},
      {"memory_limit_mb beyond 2^40", {"--memory_limit_mb=1099511627777"}},
      {"grpc_arg without grpc.", {"--grpc_arg=http2.bdp_probe=0"}},
      {"grpc_arg not an integer", {"--grpc_arg=grpc.http2.bdp_probe=off"}},
      {"unknown flag", {"--no_such_flag=1"}},
  };
  for (const BadFlags& c : cases) {
    SCOPED_TRACE(c.what);
    std::vector<std::string> args = {"--port=0"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    std::unique_ptr<ChildProcess> child = StartServer(args);
    ASSERT_NE(child, nullptr);
    const std::string err = child->ReadAllStderr(kExitTimeout);
    const std::string out = child->ReadAllStdout(std::chrono::seconds(5));
    std::optional<int> status = child->WaitForExit(kExitTimeout);
    ASSERT_TRUE(status.has_value()) << "still running";
    ASSERT_TRUE(WIFEXITED(*status)) << "wait status " << *status;
    EXPECT_NE(WEXITSTATUS(*status), 0);
    EXPECT_EQ(out, "") << "it started listening";
    ASSERT_FALSE(err.empty());
    EXPECT_EQ(err.find('\n'), err.size() - 1) << "not one line: " << err;
  }
}

TEST(PsServerProcessTest, HelpListsEveryFlagAndExitsZero) {
  std::unique_ptr<ChildProcess> child = StartServer({"--help"});
  ASSERT_NE(child, nullptr);
  const std::string out = child->ReadAllStdout(kExitTimeout);
  std::optional<int> status = child->WaitForExit(kExitTimeout);
  ASSERT_TRUE(status.has_value());
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
  for (const char* flag :
       {"host", "port", "shard_index", "num_shards", "block_size",
        "consistency", "num_workers", "quorum", "optimizer", "max_message_mb",
        "memory_limit_mb", "malloc_arenas"}) {
    const std::string name = std::string("--") + flag + " (";
    const size_t at = out.find(name);
    ASSERT_NE(at, std::string::npos) << flag << " missing from:\n" << out;
    // Its entry, up to the next flag, gives the default.
    const size_t next = out.find("\n    --", at + 1);
    EXPECT_THAT(out.substr(at, next - at), HasSubstr("default:")) << flag;
  }
  EXPECT_THAT(out, HasSubstr("default: \"127.0.0.1\""));
  EXPECT_THAT(out, HasSubstr("default: 16384"));
}

}  // namespace
}  // namespace ps
