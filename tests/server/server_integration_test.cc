// Shards started in-process on port 0, driven over real gRPC with the
// generated stubs, each block routed to its owner by PartitionPlan.
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/optimizer_config.h"
#include "server/server.h"
#include "tests/server/raw_cluster.h"

namespace ps {
namespace {

using ::ps::testutil::CreateRequest;
using ::ps::testutil::Decode;
using ::ps::testutil::Encode;
using ::ps::testutil::FinishedCalls;
using ::ps::testutil::Iota;
using ::ps::testutil::MakeContext;
using ::ps::testutil::MakeSlice;
using ::ps::testutil::Minus;
using ::ps::testutil::NamedCall;
using ::ps::testutil::PushArgs;
using ::ps::testutil::RangeSlice;
using ::ps::testutil::RawCluster;
using ::ps::testutil::Snapshot;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

struct ClusterConfig {
  uint32_t num_shards = 2;
  uint64_t block_size = 4;
  Consistency consistency = Consistency::kAsync;
  uint32_t num_workers = 0;
  uint32_t quorum = 0;
  std::string optimizer = "sgd {} learning_rate: 1";
  int max_message_mb = 256;
  uint64_t memory_limit_bytes = 0;
};

// `num_shards` shards of one cluster, each on its own loopback port.
class InProcessCluster {
 public:
  explicit InProcessCluster(const ClusterConfig& config) : config_(config) {
    auto optimizer = ParseOptimizerConfig(config.optimizer);
    EXPECT_TRUE(optimizer.ok()) << optimizer.status();
    std::vector<std::string> addresses;
    for (uint32_t shard = 0; shard < config.num_shards; ++shard) {
      ServerOptions options;
      options.host = "127.0.0.1";
      options.port = 0;
      options.shard_index = shard;
      options.num_shards = config.num_shards;
      options.block_size = config.block_size;
      options.consistency = config.consistency;
      options.num_workers = config.num_workers;
      options.quorum = config.quorum;
      options.max_message_mb = config.max_message_mb;
      options.memory_limit_bytes = config.memory_limit_bytes;
      if (optimizer.ok()) options.default_optimizer = *optimizer;
      auto server = ParameterServer::Start(options);
      EXPECT_TRUE(server.ok()) << server.status();
      if (!server.ok()) continue;
      EXPECT_GT((*server)->port(), 0);
      EXPECT_EQ((*server)->address(),
                absl::StrCat("127.0.0.1:", (*server)->port()));
      addresses.push_back((*server)->address());
      servers_.push_back(*std::move(server));
    }
    addresses_ = addresses;
    raw_ = NewClient();
  }

  ~InProcessCluster() {
    raw_.reset();
    for (auto& server : servers_) server->Shutdown().IgnoreError();
  }

  bool ok() const { return servers_.size() == config_.num_shards; }
  RawCluster& raw() { return *raw_; }
  const std::vector<std::string>& addresses() const { return addresses_; }
  const ClusterConfig& config() const { return config_; }

  // Another client's view: its own channels to the same shards, connected
  // as every client connects.
  std::unique_ptr<RawCluster> NewClient() const {
    auto client = RawCluster::Connect(addresses_);
    EXPECT_TRUE(client.ok()) << client.status();
    if (!client.ok()) {
      return std::make_unique<RawCluster>(addresses_, config_.block_size);
    }
    EXPECT_EQ((*client)->plan().block_size(), config_.block_size);
    return *std::move(client);
  }

 private:
  ClusterConfig config_;
  std::vector<std::unique_ptr<ParameterServer>> servers_;
  std::vector<std::string> addresses_;
  std::unique_ptr<RawCluster> raw_;
};

grpc::Status PullOne(RawCluster& raw, uint32_t shard, const v1::Slice& slice,
                     v1::PullResponse* response,
                     v1::DType dtype = v1::FLOAT32) {
  v1::PullRequest request;
  request.set_dtype(dtype);
  *request.add_slices() = slice;
  return raw.stub(shard).Pull(MakeContext().get(), request, response);
}

grpc::Status PushSlices(RawCluster& raw, uint32_t shard,
                        const std::vector<v1::Slice>& slices,
                        bool push_pull = false,
                        v1::PullResponse* answer = nullptr) {
  v1::PushRequest request;
  request.set_worker_id("bad-input");
  for (const v1::Slice& slice : slices) *request.add_gradients() = slice;
  v1::PullResponse pull_response;
  if (push_pull) {
    return raw.stub(shard).PushPull(
        MakeContext().get(), request,
        answer != nullptr ? answer : &pull_response);
  }
  v1::PushResponse response;
  return raw.stub(shard).Push(MakeContext().get(), request, &response);
}

grpc::Status CreateOn(RawCluster& raw, uint32_t shard,
                      const v1::CreateVariableRequest& request,
                      v1::CreateVariableResponse* response = nullptr) {
  v1::CreateVariableResponse ignored;
  return raw.stub(shard).CreateVariable(
      MakeContext().get(), request, response != nullptr ? response : &ignored);
}

// Small integers that differ per (a, b, index); exact in float32.
std::vector<float> IntegerGradient(size_t n, int a, int b) {
  std::vector<float> g(n);
  for (size_t j = 0; j < n; ++j) {
    g[j] = static_cast<float>((a * 7 + b * 3 + static_cast<int>(j)) % 9 - 4);
  }
  return g;
}

// ------------------------------------------------------------ cluster info

TEST(ServerClusterInfoTest, EveryShardDescribesTheCluster) {
  InProcessCluster cluster({.num_shards = 3, .block_size = 5});
  ASSERT_TRUE(cluster.ok());
  for (uint32_t shard = 0; shard < 3; ++shard) {
    v1::ClusterInfo info;
    grpc::Status status = cluster.raw().stub(shard).GetClusterInfo(
        MakeContext().get(), v1::GetClusterInfoRequest(), &info);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(info.shard_index(), shard);
    EXPECT_EQ(info.num_shards(), 3u);
    EXPECT_EQ(info.block_size(), 5u);
    EXPECT_EQ(info.consistency(), "async");
    EXPECT_EQ(info.num_workers(), 0u);
  }
}

TEST(ServerClusterInfoTest, SyncShardsReportWorkersAndQuorum) {
  InProcessCluster cluster({.num_shards = 2,
                            .block_size = 8,
                            .consistency = Consistency::kSync,
                            .num_workers = 3,
                            .quorum = 2});
  ASSERT_TRUE(cluster.ok());
  InProcessCluster full_quorum(
      {.num_shards = 1, .consistency = Consistency::kSync, .num_workers = 4});
  ASSERT_TRUE(full_quorum.ok());
  for (uint32_t shard = 0; shard < 2; ++shard) {
    v1::ClusterInfo info;
    ASSERT_TRUE(cluster.raw()
                    .stub(shard)
                    .GetClusterInfo(MakeContext().get(),
                                    v1::GetClusterInfoRequest(), &info)
                    .ok());
    EXPECT_EQ(info.shard_index(), shard);
    EXPECT_EQ(info.num_shards(), 2u);
    EXPECT_EQ(info.block_size(), 8u);
    EXPECT_EQ(info.consistency(), "sync");
    EXPECT_EQ(info.num_workers(), 3u);
    EXPECT_EQ(info.quorum(), 2u);
  }
  v1::ClusterInfo info;
  ASSERT_TRUE(full_quorum.raw()
                  .stub(0)
                  .GetClusterInfo(MakeContext().get(),
                                  v1::GetClusterInfoRequest(), &info)
                  .ok());
  EXPECT_EQ(info.num_workers(), 4u);
  EXPECT_EQ(info.quorum(), 4u);  // defaults to num_workers
}

TEST(ServerOptionsTest, BadCombinationsAreRefused) {
  struct Case {
    std::string what;
    ServerOptions options;
  };
  std::vector<Case> cases;
  cases.push_back({"shard_index >= num_shards", {}});
  cases.back().options.shard_index = 2;
  cases.back().options.num_shards = 2;
  cases.push_back({"zero shards", {}});
  cases.back().options.num_shards = 0;
  cases.push_back({"zero block_size", {}});
  cases.back().options.block_size = 0;
  cases.push_back({"sync without workers", {}});
  cases.back().options.consistency = Consistency::kSync;
  cases.push_back({"quorum > num_workers", {}});
  cases.back().options.consistency = Consistency::kSync;
  cases.back().options.num_workers = 2;
  cases.back().options.quorum = 3;
  cases.push_back({"bad optimizer", {}});
  cases.back().options.default_optimizer.mutable_adam()->set_beta1(2.0);
  for (const Case& c : cases) {
    auto server = ParameterServer::Start(c.options);
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument)
        << c.what << ": " << server.status();
  }
}

// ----------------------------------------------------------------- health

// The status a grpc.health.v1.Health/Check answer carries (field 1, a
// varint), or -1. Debian ships no generated health stubs, so the messages
// are encoded by hand: HealthCheckRequest{service = 1} and
// HealthCheckResponse{status = 1}, SERVING = 1.
int HealthStatus(const std::string& bytes) {
  if (bytes.empty()) return 0;  // UNKNOWN, the proto3 default
  if (bytes.size() == 2 && bytes[0] == 0x08) return bytes[1];
  return -1;
}

// Calls `method` with raw bytes through the generic stub.
grpc::Status GenericCall(const std::shared_ptr<grpc::Channel>& channel,
                         const std::string& method, const std::string& bytes,
                         std::string* answer = nullptr) {
  grpc::GenericStub stub(channel);
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  auto context = MakeContext();
  absl::Notification done;
  grpc::Status result;
  stub.UnaryCall(context.get(), method, grpc::StubOptions(), &request,
                 &response, [&](grpc::Status status) {
                   result = std::move(status);
                   done.Notify();
                 });
  done.WaitForNotification();  // bounded by the context's deadline
  if (result.ok() && answer != nullptr) {
    std::vector<grpc::Slice> slices;
    answer->clear();
    if (response.Dump(&slices).ok()) {
      for (const grpc::Slice& s : slices) {
        answer->append(reinterpret_cast<const char*>(s.begin()), s.size());
      }
    }
  }
  return result;
}

TEST(ServerHealthTest, AnswersServing) {
  InProcessCluster cluster({.num_shards = 2});
  ASSERT_TRUE(cluster.ok());
  for (uint32_t shard = 0; shard < 2; ++shard) {
    std::string answer;
    grpc::Status status =
        GenericCall(cluster.raw().channel(shard),
                    "/grpc.health.v1.Health/Check", "", &answer);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(HealthStatus(answer), 1) << "SERVING";
  }
}

// ---------------------------------------------------------------- routing

struct Layout {
  uint32_t num_shards;
  uint64_t block_size;

  friend void PrintTo(const Layout& layout, std::ostream* out) {
    *out << layout.num_shards << " shards, block_size " << layout.block_size;
  }
};

class ServerRoutingTest : public ::testing::TestWithParam<Layout> {
 protected:
  ClusterConfig Config() const {
    return {.num_shards = GetParam().num_shards,
            .block_size = GetParam().block_size};
  }
};

struct VariableSpec {
  std::string name;
  std::vector<uint64_t> shape;
  uint64_t size;
};

const std::vector<VariableSpec>& Variables() {
  static const auto* variables = new std::vector<VariableSpec>{
      {"embedding/a", {37}, 37},
      {"dense/kernel", {3, 7}, 21},
      {"bias", {1}, 1},
      {"cube", {3, 1, 5}, 15},
  };
  return *variables;
}

TEST_P(ServerRoutingTest, CreatePushPullAcrossShards) {
  InProcessCluster cluster(Config());
  ASSERT_TRUE(cluster.ok());
  RawCluster& raw = cluster.raw();
  for (const VariableSpec& v : Variables()) {
    SCOPED_TRACE(v.name);
    const std::vector<float> initial = Iota(v.size, 10.0f);
    std::vector<bool> created;
    ASSERT_TRUE(raw.Create(v.name, v.shape, initial, &created).ok());
    for (uint32_t shard = 0; shard < raw.num_shards(); ++shard) {
      EXPECT_TRUE(created[shard]) << shard;
    }
    // Every worker may create it; the first initial values win.
    ASSERT_TRUE(
        raw.Create(v.name, v.shape, Iota(v.size, 500.0f), &created).ok());
    for (uint32_t shard = 0; shard < raw.num_shards(); ++shard) {
      EXPECT_FALSE(created[shard]) << shard;
    }
    Snapshot pulled = raw.MustPullAll(v.name, v.size);
    EXPECT_THAT(pulled.values, ElementsAreArray(initial));
    EXPECT_THAT(pulled.versions, ElementsAreArray(std::vector<uint64_t>(
                                     pulled.versions.size(), 0)));

    const std::vector<float> g1 = IntegerGradient(v.size, 1, 2);
    ASSERT_TRUE(raw.Push(v.name, {.worker_id = "w", .seq = 1}, g1).ok());
    const std::vector<float> after1 = Minus(initial, g1);
    pulled = raw.MustPullAll(v.name, v.size);
    EXPECT_THAT(pulled.values, ElementsAreArray(after1));
    EXPECT_THAT(pulled.versions, ElementsAreArray(std::vector<uint64_t>(
                                     pulled.versions.size(), 1)));

    const std::vector<float> g2 = IntegerGradient(v.size, 5, 1);
    Snapshot answer;
    ASSERT_TRUE(
        raw.Push(v.name, {.worker_id = "w", .seq = 2}, g2, &answer).ok());
    const std::vector<float> after2 = Minus(after1, g2);
    EXPECT_THAT(answer.values, ElementsAreArray(after2));
    EXPECT_THAT(answer.versions, ElementsAreArray(std::vector<uint64_t>(
                                     answer.versions.size(), 2)));
    EXPECT_THAT(raw.MustPullAll(v.name, v.size).values,
                ElementsAreArray(after2));
  }
}

TEST_P(ServerRoutingTest, EveryBlockLivesOnItsOwnerOnly) {
  InProcessCluster cluster(Config());
  ASSERT_TRUE(cluster.ok());
  RawCluster& raw = cluster.raw();
  const VariableSpec& v = Variables()[0];
  const std::vector<float> initial = Iota(v.size);
  ASSERT_TRUE(raw.Create(v.name, v.shape, initial).ok());
  const PartitionPlan& plan = raw.plan();
  std::vector<int> blocks_per_shard(raw.num_shards(), 0);
  for (uint64_t k = 0; k < plan.NumBlocks(v.size); ++k) {
    const FlatRange range = plan.BlockRange(v.size, k);
    const uint32_t owner = plan.ShardOf(v.name, k);
    ++blocks_per_shard[owner];
    for (uint32_t shard = 0; shard < raw.num_shards(); ++shard) {
      v1::PullResponse response;
      grpc::Status status =
          PullOne(raw, shard, RangeSlice(v.name, range.offset, range.length),
                  &response);
      if (shard == owner) {
        ASSERT_TRUE(status.ok()) << status.error_message();
        EXPECT_THAT(Decode(response.values(0)),
                    ElementsAreArray(std::vector<float>(
                        initial.begin() + range.offset,
                        initial.begin() + range.offset + range.length)));
      } else {
        EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
            << "block " << k << " on shard " << shard;
        EXPECT_THAT(status.error_message(),
                    HasSubstr(absl::StrCat("shard ", owner)));
      }
    }
  }
  // Consecutive blocks go round the shards.
  for (uint32_t shard = 0; shard < raw.num_shards(); ++shard) {
    EXPECT_GE(blocks_per_shard[shard],
              static_cast<int>(plan.NumBlocks(v.size) / raw.num_shards()));
  }
}

TEST_P(ServerRoutingTest, PullsOfRangesInsideBlocks) {
  InProcessCluster cluster(Config());
  ASSERT_TRUE(cluster.ok());
  RawCluster& raw = cluster.raw();
  const VariableSpec& v = Variables()[0];
  const std::vector<float> initial = Iota(v.size, -3.0f);
  ASSERT_TRUE(raw.Create(v.name, v.shape, initial).ok());
  const PartitionPlan& plan = raw.plan();
  // Every sub-range of every block, one of each block per request (the
  // ranges of one request must not overlap).
  std::vector<std::pair<uint32_t, v1::PullRequest>> requests;
  for (uint32_t shard = 0; shard < raw.num_shards(); ++shard) {
    std::vector<v1::PullRequest> of_shard;
    for (uint64_t k = 0; k < plan.NumBlocks(v.size); ++k) {
      if (plan.ShardOf(v.name, k) != shard) continue;
      const FlatRange range = plan.BlockRange(v.size, k);
      size_t j = 0;
      for (uint64_t begin = range.offset; begin < range.offset + range.length;
           ++begin) {
        for (uint64_t end = begin + 1; end <= range.offset + range.length;
             ++end, ++j) {
          if (j == of_shard.size()) of_shard.emplace_back();
          *of_shard[j].add_slices() = RangeSlice(v.name, begin, end - begin);
        }
      }
    }
    for (v1::PullRequest& request : of_shard) {
      requests.emplace_back(shard, std::move(request));
    }
  }
  ASSERT_FALSE(requests.empty());
  for (const auto& [shard, request] : requests) {
    v1::PullResponse response;
    grpc::Status status =
        raw.stub(shard).Pull(MakeContext().get(), request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(response.values_size(), request.slices_size());
    for (int i = 0; i < response.values_size(); ++i) {
      const v1::Slice& asked = request.slices(i);
      const v1::Slice& got = response.values(i);
      EXPECT_EQ(got.offset(), asked.offset());
      EXPECT_EQ(got.length(), asked.length());
      EXPECT_EQ(got.version(), 0u);
      EXPECT_THAT(Decode(got),
                  ElementsAreArray(std::vector<float>(
                      initial.begin() + asked.offset(),
                      initial.begin() + asked.offset() + asked.length())));
    }
  }
}

// Every bad input of the issue, each followed by a check that nothing
// changed and the shard still serves.
TEST_P(ServerRoutingTest, BadInputsAreRefusedAndChangeNothing) {
  InProcessCluster cluster(Config());
  ASSERT_TRUE(cluster.ok());
  RawCluster& raw = cluster.raw();
  const PartitionPlan& plan = raw.plan();
  const uint32_t shards = raw.num_shards();
  const std::string w = "w";
  // Six and a bit blocks: every shard owns at least two whole blocks.
  const uint64_t size = 6 * GetParam().block_size + 1;
  ASSERT_TRUE(raw.Create(w, {size}, Iota(size)).ok());
  ASSERT_TRUE(raw.Create("v", {5}, Iota(5, 100.0f)).ok());
  // Give the blocks a non-zero version first.
  ASSERT_TRUE(
      raw.Push(w, {.worker_id = "setup", .seq = 1}, IntegerGradient(size, 1, 1))
          .ok());
  const Snapshot w_before = raw.MustPullAll(w, size);
  const Snapshot v_before = raw.MustPullAll("v", 5);

  auto expect_unchanged = [&](const std::string& what) {
    Snapshot w_after = raw.MustPullAll(w, size);
    Snapshot v_after = raw.MustPullAll("v", 5);
    EXPECT_THAT(w_after.values, ElementsAreArray(w_before.values)) << what;
    EXPECT_THAT(w_after.versions, ElementsAreArray(w_before.versions)) << what;
    EXPECT_THAT(v_after.values, ElementsAreArray(v_before.values)) << what;
    EXPECT_THAT(v_after.versions, ElementsAreArray(v_before.versions)) << what;
  };

  // Block 1 of w, its owner, and a shard that does not own it.
  const FlatRange b1 = plan.BlockRange(size, 1);
  const uint32_t owner = plan.ShardOf(w, 1);
  // Every whole block of w that `owner` holds, all good.
  std::vector<v1::Slice> owner_blocks;
  for (uint64_t k = 0; k < plan.NumBlocks(size); ++k) {
    if (plan.ShardOf(w, k) != owner) continue;
    const FlatRange r = plan.BlockRange(size, k);
    owner_blocks.push_back(MakeSlice(w, r.offset, Iota(r.length)));
  }
  ASSERT_GE(owner_blocks.size(), 2u);

  auto bad_block = [&](std::function<void(v1::Slice&)> spoil) {
    v1::Slice slice = MakeSlice(w, b1.offset, Iota(b1.length));
    spoil(slice);
    return slice;
  };
  struct PushCase {
    std::string what;
    v1::Slice bad;
    grpc::StatusCode code;
  };
  const std::vector<PushCase> push_cases = {
      {"NaN gradient", bad_block([](v1::Slice& s) {
         std::vector<float> g = Iota(s.length());
         g[1] = kNaN;
         s.set_data(Encode(g));
       }),
       grpc::StatusCode::INVALID_ARGUMENT},
      {"+Inf gradient", bad_block([](v1::Slice& s) {
         std::vector<float> g = Iota(s.length());
         g.back() = kInf;
         s.set_data(Encode(g));
       }),
       grpc::StatusCode::INVALID_ARGUMENT},
      {"-Inf gradient", bad_block([](v1::Slice& s) {
         std::vector<float> g = Iota(s.length());
         g.front() = -kInf;
         s.set_data(Encode(g));
       }),
       grpc::StatusCode::INVALID_ARGUMENT},
      {"NaN in bfloat16", bad_block([](v1::Slice& s) {
         std::vector<float> g = Iota(s.length());
         g[0] = kNaN;
         s.set_dtype(v1::BFLOAT16);
         s.set_data(Encode(g, v1::BFLOAT16));
       }),
       grpc::StatusCode::INVALID_ARGUMENT},
      {"data not whole floats",
       bad_block([](v1::Slice& s) { s.mutable_data()->pop_back(); }),
       grpc::StatusCode::INVALID_ARGUMENT},
      {"data longer than length", bad_block([](v1::Slice& s) {
         s.set_data(Encode(Iota(s.length() + 1)));
       }),
       grpc::StatusCode::INVALID_ARGUMENT},
      {"data shorter than length", bad_block([](v1::Slice& s) {
         s.set_data(Encode(Iota(s.length() - 1)));
       }),
       grpc::StatusCode::INVALID_ARGUMENT},
      {"no data", bad_block([](v1::Slice& s) { s.clear_data(); }),
       grpc::StatusCode::INVALID_ARGUMENT},
      {"half a block", bad_block([](v1::Slice& s) {
         s.set_length(s.length() / 2);
         s.set_data(Encode(Iota(s.length())));
       }),
       grpc::StatusCode::INVALID_ARGUMENT},
      {"unknown variable",
       bad_block([](v1::Slice& s) { s.set_variable("no-such-variable"); }),
       grpc::StatusCode::NOT_FOUND},
  };
  for (const PushCase& c : push_cases) {
    SCOPED_TRACE(c.what);
    // Alone, then after the owner's good blocks, by Push and by PushPull.
    std::vector<v1::Slice> mixed = owner_blocks;
    for (v1::Slice& s : mixed) {
      if (s.offset() == b1.offset) s = c.bad;
    }
    for (const auto& slices : {std::vector<v1::Slice>{c.bad}, mixed}) {
      for (bool push_pull : {false, true}) {
        v1::PullResponse answer;
        grpc::Status status =
            PushSlices(raw, owner, slices, push_pull, &answer);
        EXPECT_EQ(status.error_code(), c.code) << status.error_message();
        EXPECT_FALSE(status.error_message().empty());
        EXPECT_EQ(answer.values_size(), 0);
      }
    }
    expect_unchanged(c.what);
  }

  // A block listed twice.
  {
    std::vector<v1::Slice> twice = owner_blocks;
    twice.push_back(owner_blocks.front());
    grpc::Status status = PushSlices(raw, owner, twice);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << status.error_message();
    expect_unchanged("block twice");
  }

  // A gradient of another shard's block: FAILED_PRECONDITION naming the
  // owner, also when the push holds good blocks of the shard it is sent to.
  for (uint32_t shard = 0; shard < shards; ++shard) {
    if (shard == owner) continue;
    std::vector<v1::Slice> slices;
    for (uint64_t k = 0; k < plan.NumBlocks(size); ++k) {
      if (plan.ShardOf(w, k) != shard) continue;
      const FlatRange r = plan.BlockRange(size, k);
      slices.push_back(MakeSlice(w, r.offset, Iota(r.length)));
    }
    slices.push_back(MakeSlice(w, b1.offset, Iota(b1.length)));
    grpc::Status status = PushSlices(raw, shard, slices);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
        << status.error_message();
    EXPECT_THAT(status.error_message(),
                HasSubstr(absl::StrCat("shard ", owner)));
    expect_unchanged("another shard's gradient");

    v1::PullResponse response;
    status = PullOne(raw, shard, RangeSlice(w, b1.offset, 1), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
        << status.error_message();
    EXPECT_THAT(status.error_message(),
                HasSubstr(absl::StrCat("shard ", owner)));
  }

  // Ranges outside the variable: INVALID_ARGUMENT on every shard, whichever
  // shard the block past the end would belong to.
  const uint64_t blocks = plan.NumBlocks(size);
  const uint64_t bs = plan.block_size();
  for (uint32_t shard = 0; shard < shards; ++shard) {
    SCOPED_TRACE(absl::StrCat("shard ", shard));
    for (uint64_t k = blocks; k < blocks + shards; ++k) {
      grpc::Status status =
          PushSlices(raw, shard, {MakeSlice(w, k * bs, Iota(bs))});
      EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
          << "push to block " << k << ": " << status.error_message();
      v1::PullResponse response;
      status = PullOne(raw, shard, RangeSlice(w, k * bs, 1), &response);
      EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
          << "pull of block " << k << ": " << status.error_message();
    }
    const std::vector<std::pair<uint64_t, uint64_t>> outside = {
        {size, 1},
        {size - 1, 2},
        {0, 0},
        {std::numeric_limits<uint64_t>::max(), 1},
        {1, std::numeric_limits<uint64_t>::max()},
    };
    for (auto [offset, length] : outside) {
      v1::PullResponse response;
      grpc::Status status =
          PullOne(raw, shard, RangeSlice(w, offset, length), &response);
      EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
          << offset << "+" << length << ": " << status.error_message();
    }
    // Unknown variables.
    v1::PullResponse response;
    grpc::Status status =
        PullOne(raw, shard, RangeSlice("no-such-variable", 0, 1), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_THAT(status.error_message(), HasSubstr("no-such-variable"));
    // An unknown dtype.
    status = PullOne(raw, shard, RangeSlice(w, 0, 1), &response,
                     static_cast<v1::DType>(42));
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    // A pull crossing a block boundary.
    v1::PullResponse response;
    grpc::Status status =
        PullOne(raw, owner, RangeSlice(w, b1.offset + 1, bs), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << status.error_message();
  }
  expect_unchanged("ranges");

  // Creates: zero or negative dimensions, another shape.
  for (uint32_t shard = 0; shard < shards; ++shard) {
    SCOPED_TRACE(absl::StrCat("shard ", shard));
    for (std::vector<uint64_t> shape :
         {std::vector<uint64_t>{0}, std::vector<uint64_t>{4, 0, 2},
          std::vector<uint64_t>{std::numeric_limits<uint64_t>::max()},
          std::vector<uint64_t>{3, uint64_t(-2)}}) {
      grpc::Status status = CreateOn(raw, shard, CreateRequest("zero", shape));
      EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
          << status.error_message();
    }
    v1::PullResponse response;
    EXPECT_EQ(
        PullOne(raw, shard, RangeSlice("zero", 0, 1), &response).error_code(),
        grpc::StatusCode::NOT_FOUND)
        << "a refused create left a variable behind";

    for (std::vector<uint64_t> shape :
         {std::vector<uint64_t>{size - 1}, std::vector<uint64_t>{size, 1},
          std::vector<uint64_t>{1, size}}) {
      grpc::Status status = CreateOn(raw, shard, CreateRequest(w, shape));
      EXPECT_EQ(status.error_code(), grpc::StatusCode::ALREADY_EXISTS)
          << status.error_message();
    }
  }
  expect_unchanged("creates");

  // Initial values of another shard's block: FAILED_PRECONDITION naming the
  // owner, and nothing created there. NaN initial values: INVALID_ARGUMENT.
  {
    v1::CreateVariableRequest request = CreateRequest("fresh", {size});
    *request.add_initial_values() =
        MakeSlice("fresh", b1.offset, Iota(b1.length));
    const uint32_t fresh_owner = plan.ShardOf("fresh", 1);
    const uint32_t not_owner = (fresh_owner + 1) % shards;
    grpc::Status status = CreateOn(raw, not_owner, request);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
        << status.error_message();
    EXPECT_THAT(status.error_message(),
                HasSubstr(absl::StrCat("shard ", fresh_owner)));

    v1::CreateVariableRequest nan = CreateRequest("fresh", {size});
    std::vector<float> values = Iota(b1.length);
    values[0] = kNaN;
    *nan.add_initial_values() = MakeSlice("fresh", b1.offset, values);
    status = CreateOn(raw, fresh_owner, nan);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << status.error_message();
    for (uint32_t shard = 0; shard < shards; ++shard) {
      v1::PullResponse response;
      EXPECT_EQ(PullOne(raw, shard, RangeSlice("fresh", 0, 1), &response)
                    .error_code(),
                grpc::StatusCode::NOT_FOUND);
    }
  }

  // After all that, a good push still applies, exactly once.
  const std::vector<float> g = IntegerGradient(size, 3, 4);
  ASSERT_TRUE(raw.Push(w, {.worker_id = "after", .seq = 1}, g).ok());
  EXPECT_THAT(raw.MustPullAll(w, size).values,
              ElementsAreArray(Minus(w_before.values, g)));
}

TEST_P(ServerRoutingTest, RepeatedSeqIsAppliedOnce) {
  InProcessCluster cluster(Config());
  ASSERT_TRUE(cluster.ok());
  RawCluster& raw = cluster.raw();
  const uint64_t size = 23;
  const std::vector<float> initial = Iota(size);
  ASSERT_TRUE(raw.Create("w", {size}, initial).ok());
  const std::vector<float> g = IntegerGradient(size, 2, 2);
  Snapshot first, repeat;
  ASSERT_TRUE(raw.Push("w", {.worker_id = "r", .seq = 5}, g, &first).ok());
  // A retry of the same (worker, seq), e.g. after UNAVAILABLE.
  ASSERT_TRUE(raw.Push("w", {.worker_id = "r", .seq = 5}, g, &repeat).ok());
  ASSERT_TRUE(raw.Push("w", {.worker_id = "r", .seq = 5}, g).ok());
  const std::vector<float> expected = Minus(initial, g);
  EXPECT_THAT(first.values, ElementsAreArray(expected));
  EXPECT_THAT(repeat.values, ElementsAreArray(expected));
  EXPECT_THAT(repeat.versions, ElementsAreArray(first.versions));
  Snapshot now = raw.MustPullAll("w", size);
  EXPECT_THAT(now.values, ElementsAreArray(expected));
  EXPECT_THAT(now.versions,
              ElementsAreArray(std::vector<uint64_t>(now.versions.size(), 1)));
}

TEST_P(ServerRoutingTest, HalfPrecisionPulls) {
  InProcessCluster cluster(Config());
  ASSERT_TRUE(cluster.ok());
  RawCluster& raw = cluster.raw();
  // 1 + 2^-10 and 1 + 2^-8 are exact in float16; bfloat16 (8 significant
  // bits) rounds both to 1 (the second is a tie, to even).
  const std::vector<float> base = {
      1.5f, -2.25f, 0.375f, 1.0f + 0x1p-10f, 1.0f + 0x1p-8f, -96.0f, 0.0f};
  std::vector<float> initial, as_bf16, as_fp16;
  for (int i = 0; i < 3; ++i) {
    for (float x : base) {
      initial.push_back(x);
      as_fp16.push_back(x);
      as_bf16.push_back(x == 1.0f + 0x1p-10f || x == 1.0f + 0x1p-8f ? 1.0f : x);
    }
  }
  const uint64_t size = initial.size();
  ASSERT_TRUE(raw.Create("h", {size}, initial).ok());
  for (auto [dtype, expected] :
       {std::pair{v1::BFLOAT16, as_bf16}, std::pair{v1::FLOAT16, as_fp16},
        std::pair{v1::FLOAT32, initial}}) {
    Snapshot pulled;
    grpc::Status status = raw.PullAll("h", size, &pulled, dtype);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_THAT(pulled.values, ElementsAreArray(expected))
        << v1::DType_Name(dtype);
  }
  // The wire size is 2 bytes a value.
  v1::PullResponse response;
  ASSERT_TRUE(PullOne(raw, raw.OwnerOf("h", 0), RangeSlice("h", 0, 3),
                      &response, v1::FLOAT16)
                  .ok());
  EXPECT_EQ(response.values(0).data().size(), 6u);

  // PushPull answers in pull_dtype; the shard keeps float32.
  Snapshot answer;
  std::vector<float> zero(size, 0.0f);
  ASSERT_TRUE(raw.Push("h", {.worker_id = "x", .pull_dtype = v1::BFLOAT16},
                       zero, &answer)
                  .ok());
  EXPECT_THAT(answer.values, ElementsAreArray(as_bf16));
  EXPECT_THAT(raw.MustPullAll("h", size).values, ElementsAreArray(initial));
}

INSTANTIATE_TEST_SUITE_P(Layouts, ServerRoutingTest,
                         ::testing::Values(Layout{2, 4}, Layout{3, 4},
                                           Layout{3, 5}, Layout{2, 16}),
                         [](const auto& info) {
                           return absl::StrCat(info.param.num_shards,
                                               "Shards_Block",
                                               info.param.block_size);
                         });

// ------------------------------------------------------------ concurrency

TEST(ServerConcurrencyTest, EightWorkersLoseNoUpdate) {
  InProcessCluster cluster({.num_shards = 3, .block_size = 5});
  ASSERT_TRUE(cluster.ok());
  struct Var {
    std::string name;
    uint64_t size;
  };
  const std::vector<Var> vars = {{"w", 37}, {"u", 11}};
  std::vector<std::vector<float>> initial;
  for (const Var& v : vars) {
    initial.push_back(Iota(v.size, 1000.0f));
    ASSERT_TRUE(cluster.raw().Create(v.name, {v.size}, initial.back()).ok());
  }
  constexpr int kWorkers = 8;
  constexpr int kSteps = 40;
  std::atomic<int> failures{0};
  std::vector<std::thread> workers;
  for (int worker = 0; worker < kWorkers; ++worker) {
    workers.emplace_back([&, worker] {
      std::unique_ptr<RawCluster> client = cluster.NewClient();
      for (int step = 0; step < kSteps; ++step) {
        for (size_t v = 0; v < vars.size(); ++v) {
          const PushArgs args{
              .worker_id = absl::StrCat("worker-", worker),
              .seq = static_cast<uint64_t>(step * vars.size() + v + 1)};
          const std::vector<float> g = IntegerGradient(
              vars[v].size, worker, step * 2 + static_cast<int>(v));
          Snapshot answer;
          grpc::Status status =
              client->Push(vars[v].name, args, g,
                           (step + worker) % 2 == 0 ? &answer : nullptr);
          if (!status.ok()) {
            ++failures;
            ADD_FAILURE() << status.error_message();
            return;
          }
        }
      }
    });
  }
  for (auto& thread : workers) thread.join();
  EXPECT_EQ(failures.load(), 0);
  for (size_t v = 0; v < vars.size(); ++v) {
    std::vector<float> expected = initial[v];
    for (int worker = 0; worker < kWorkers; ++worker) {
      for (int step = 0; step < kSteps; ++step) {
        const std::vector<float> g = IntegerGradient(
            vars[v].size, worker, step * 2 + static_cast<int>(v));
        for (size_t j = 0; j < g.size(); ++j) expected[j] -= g[j];
      }
    }
    Snapshot got = cluster.raw().MustPullAll(vars[v].name, vars[v].size);
    EXPECT_THAT(got.values, ElementsAreArray(expected)) << vars[v].name;
    EXPECT_THAT(got.versions,
                ElementsAreArray(std::vector<uint64_t>(
                    got.versions.size(), uint64_t{kWorkers * kSteps})))
        << vars[v].name;
  }
}

// ------------------------------------------------------------------- sync

TEST(ServerSyncTest, ThreeWorkersSeeExactlyTheMeanStepEachStep) {
  constexpr float kLr = 0.5f;
  InProcessCluster cluster({.num_shards = 2,
                            .block_size = 4,
                            .consistency = Consistency::kSync,
                            .num_workers = 3,
                            .optimizer = "sgd {} learning_rate: 0.5"});
  ASSERT_TRUE(cluster.ok());
  const uint64_t size = 11;
  const std::vector<float> initial = Iota(size, 3.0f);
  ASSERT_TRUE(cluster.raw().Create("w", {size}, initial).ok());
  constexpr int kWorkers = 3;
  constexpr int kSteps = 6;
  // expected[s]: the values after step s - 1 (expected[0]: initial).
  std::vector<std::vector<float>> expected = {initial};
  for (int s = 0; s < kSteps; ++s) {
    std::vector<float> next = expected.back();
    std::vector<float> sum(size, 0.0f);
    for (int worker = 0; worker < kWorkers; ++worker) {
      const std::vector<float> g = IntegerGradient(size, worker + 1, s);
      for (size_t j = 0; j < size; ++j) sum[j] += g[j];
    }
    for (size_t j = 0; j < size; ++j) {
      next[j] += -kLr * (sum[j] / static_cast<float>(kWorkers));
    }
    expected.push_back(next);
  }

  std::vector<std::vector<Snapshot>> answers(kWorkers,
                                             std::vector<Snapshot>(kSteps));
  std::vector<std::thread> workers;
  for (int worker = 0; worker < kWorkers; ++worker) {
    workers.emplace_back([&, worker] {
      std::unique_ptr<RawCluster> client = cluster.NewClient();
      for (int s = 0; s < kSteps; ++s) {
        const PushArgs args{.worker_id = absl::StrCat("worker-", worker),
                            .seq = static_cast<uint64_t>(s + 1),
                            .step = static_cast<uint64_t>(s)};
        grpc::Status status =
            client->Push("w", args, IntegerGradient(size, worker + 1, s),
                         &answers[worker][s]);
        if (!status.ok()) {
          ADD_FAILURE() << "worker " << worker << " step " << s << ": "
                        << status.error_message();
          return;
        }
      }
    });
  }
  for (auto& thread : workers) thread.join();
  for (int worker = 0; worker < kWorkers; ++worker) {
    for (int s = 0; s < kSteps; ++s) {
      EXPECT_THAT(answers[worker][s].values, ElementsAreArray(expected[s + 1]))
          << "worker " << worker << " step " << s;
      EXPECT_THAT(answers[worker][s].versions,
                  ElementsAreArray(std::vector<uint64_t>(
                      answers[worker][s].versions.size(), s + 1)));
    }
  }

  // A stale step is ABORTED on every shard, naming the current step, and
  // changes nothing.
  RawCluster& raw = cluster.raw();
  for (uint32_t shard = 0; shard < 2; ++shard) {
    grpc::Status status =
        raw.Push("w", {.worker_id = "worker-0", .seq = 100, .step = 2},
                 IntegerGradient(size, 9, 9), nullptr, shard);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::ABORTED)
        << status.error_message();
    EXPECT_THAT(status.error_message(),
                HasSubstr(absl::StrCat("current step is ", kSteps)));
  }
  Snapshot now = raw.MustPullAll("w", size);
  EXPECT_THAT(now.values, ElementsAreArray(expected.back()));
  EXPECT_THAT(now.versions, ElementsAreArray(std::vector<uint64_t>(
                                now.versions.size(), kSteps)));
}

TEST(ServerSyncTest, QuorumOfTwoAbortsTheLateWorker) {
  InProcessCluster cluster({.num_shards = 3,
                            .block_size = 4,
                            .consistency = Consistency::kSync,
                            .num_workers = 3,
                            .quorum = 2});
  ASSERT_TRUE(cluster.ok());
  const uint64_t size = 13;
  const std::vector<float> initial = Iota(size);
  ASSERT_TRUE(cluster.raw().Create("w", {size}, initial).ok());
  const std::vector<float> g0 = IntegerGradient(size, 0, 0);
  const std::vector<float> g1 = IntegerGradient(size, 1, 0);
  std::vector<Snapshot> answers(2);
  std::vector<std::thread> workers;
  for (int worker = 0; worker < 2; ++worker) {
    workers.emplace_back([&, worker] {
      grpc::Status status = cluster.NewClient()->Push(
          "w", {.worker_id = absl::StrCat("w", worker), .seq = 1, .step = 0},
          worker == 0 ? g0 : g1, &answers[worker]);
      EXPECT_TRUE(status.ok()) << status.error_message();
    });
  }
  for (auto& thread : workers) thread.join();
  std::vector<float> expected = initial;
  for (size_t j = 0; j < size; ++j) {
    expected[j] += -1.0f * ((g0[j] + g1[j]) / 2.0f);
  }
  EXPECT_THAT(answers[0].values, ElementsAreArray(expected));
  EXPECT_THAT(answers[1].values, ElementsAreArray(expected));

  Snapshot late;
  grpc::Status status =
      cluster.raw().Push("w", {.worker_id = "w2", .seq = 1, .step = 0},
                         IntegerGradient(size, 2, 0), &late);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ABORTED)
      << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("current step is 1"));
  EXPECT_THAT(cluster.raw().MustPullAll("w", size).values,
              ElementsAreArray(expected));
}

// ---------------------------------------------------------------- shutdown

// Shutdown waits for calls in flight, up to a grace period; with none in
// flight it must return at once, whatever calls came before.
TEST(ServerShutdownTest, IsPromptWhenNothingIsInFlight) {
  std::vector<NamedCall> calls = FinishedCalls();
  calls.push_back({"refused Push", [](RawCluster& raw) {
                     EXPECT_FALSE(raw.Push("nope", {}, {1, 1, 1, 1}).ok());
                   }});
  for (const auto& [what, call] : calls) {
    SCOPED_TRACE(what);
    ServerOptions options;
    options.block_size = 4;
    options.default_optimizer.mutable_sgd();
    auto server = ParameterServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    RawCluster raw({(*server)->address()}, 4);
    call(raw);
    const auto start = std::chrono::steady_clock::now();
    (*server)->Shutdown().IgnoreError();
    (*server)->Wait();
    const auto took = std::chrono::steady_clock::now() - start;
    EXPECT_LT(took, std::chrono::seconds(2))
        << "Shutdown took "
        << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
        << " ms with nothing in flight";
  }
}

// ------------------------------------------------------------ robustness

TEST(ServerRobustnessTest, GarbageBytesToEveryMethodLeaveTheShardServing) {
  InProcessCluster cluster({.num_shards = 2, .block_size = 4});
  ASSERT_TRUE(cluster.ok());
  RawCluster& raw = cluster.raw();
  const std::vector<float> initial = Iota(9);
  ASSERT_TRUE(raw.Create("w", {9}, initial).ok());
  const std::vector<std::string> methods = {
      "/ps.v1.ParameterService/GetClusterInfo",
      "/ps.v1.ParameterService/CreateVariable",
      "/ps.v1.ParameterService/Push",
      "/ps.v1.ParameterService/Pull",
      "/ps.v1.ParameterService/PushPull",
  };
  std::mt19937 random(12345);
  auto random_bytes = [&](size_t n) {
    std::string bytes(n, '\0');
    for (char& c : bytes) c = static_cast<char>(random() & 0xff);
    return bytes;
  };
  // Bytes no message parses: a tag with wire type 7, a field whose length
  // runs past the end, a varint longer than ten bytes, a zero tag.
  const std::vector<std::string> unparsable = {
      "\x0f" + random_bytes(40),
      std::string("\x0a\x64", 2) + "abc",
      std::string(20, '\xff'),
      std::string("\x00\x01", 2),
  };
  for (uint32_t shard = 0; shard < 2; ++shard) {
    for (const std::string& method : methods) {
      SCOPED_TRACE(method);
      for (const std::string& bytes : unparsable) {
        grpc::Status status =
            GenericCall(raw.channel(shard), method, bytes, nullptr);
        EXPECT_FALSE(status.ok());
        EXPECT_NE(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
        EXPECT_NE(status.error_code(), grpc::StatusCode::UNAVAILABLE);
      }
      // Random bytes: whatever they parse to, an answer comes back.
      for (int i = 0; i < 50; ++i) {
        grpc::Status status = GenericCall(raw.channel(shard), method,
                                          random_bytes(1 + random() % 300));
        EXPECT_NE(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
        EXPECT_NE(status.error_code(), grpc::StatusCode::UNAVAILABLE);
      }
    }
  }
  // Well-formed but hostile requests.
  for (uint32_t shard = 0; shard < 2; ++shard) {
    v1::PullRequest pull;
    for (int i = 0; i < 1000; ++i) {
      *pull.add_slices() = RangeSlice("w", std::numeric_limits<uint64_t>::max(),
                                      std::numeric_limits<uint64_t>::max());
    }
    v1::PullResponse response;
    EXPECT_EQ(
        raw.stub(shard).Pull(MakeContext().get(), pull, &response).error_code(),
        grpc::StatusCode::INVALID_ARGUMENT);
    v1::PushRequest push;
    v1::Slice* huge = push.add_gradients();
    *huge = RangeSlice("w", 0, std::numeric_limits<uint64_t>::max() / 2);
    huge->set_data("abcd");
    v1::PushResponse ignored;
    EXPECT_EQ(
        raw.stub(shard).Push(MakeContext().get(), push, &ignored).error_code(),
        grpc::StatusCode::INVALID_ARGUMENT);
    v1::CreateVariableRequest create =
        CreateRequest("big", {uint64_t{1} << 30, uint64_t{1} << 30});
    EXPECT_EQ(CreateOn(raw, shard, create).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }

  // Both shards still serve, with the values unchanged.
  for (uint32_t shard = 0; shard < 2; ++shard) {
    v1::ClusterInfo info;
    grpc::Status status = raw.stub(shard).GetClusterInfo(
        MakeContext().get(), v1::GetClusterInfoRequest(), &info);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(info.shard_index(), shard);
    std::string health;
    ASSERT_TRUE(GenericCall(raw.channel(shard), "/grpc.health.v1.Health/Check",
                            "", &health)
                    .ok());
    EXPECT_EQ(HealthStatus(health), 1);
  }
  // Random bytes may have parsed into a create or a push somewhere; "w"
  // itself can only have changed through a push naming it, which random
  // bytes cannot spell with valid data for a whole block.
  EXPECT_THAT(raw.MustPullAll("w", 9).values, ElementsAreArray(initial));
  const std::vector<float> g = IntegerGradient(9, 1, 1);
  ASSERT_TRUE(raw.Push("w", {.worker_id = "after", .seq = 1}, g).ok());
  EXPECT_THAT(raw.MustPullAll("w", 9).values,
              ElementsAreArray(Minus(initial, g)));
}

TEST(ServerRobustnessTest, MessageLargerThanTheLimitIsResourceExhausted) {
  InProcessCluster cluster(
      {.num_shards = 1, .block_size = 1 << 20, .max_message_mb = 1});
  ASSERT_TRUE(cluster.ok());
  RawCluster& raw = cluster.raw();
  const uint64_t size = 300000;  // 1.2 MB of float32
  ASSERT_TRUE(raw.Create("w", {size}, {}).ok());
  grpc::Status status = raw.Push("w", {}, std::vector<float>(size, 1.0f));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  Snapshot now = raw.MustPullAll("w", 1000);
  EXPECT_EQ(now.values.size(), 1000u);
}

// A variable that would not fit in the shard's memory limit is refused
// before the shard allocates it, instead of taking the process down.
TEST(ServerRobustnessTest, VariableBeyondTheMemoryLimitIsResourceExhausted) {
  InProcessCluster cluster(
      {.num_shards = 1, .block_size = 1024, .memory_limit_bytes = 1 << 20});
  ASSERT_TRUE(cluster.ok());
  RawCluster& raw = cluster.raw();
  // 2^37 values: 512 GiB of float32, far beyond any test machine.
  for (const std::vector<uint64_t>& shape :
       {std::vector<uint64_t>{300000}, {1ull << 19, 1ull << 18}}) {
    grpc::Status status = raw.Create("big", shape, {});
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
        << status.error_message();
    EXPECT_THAT(status.error_message(),
                AllOf(HasSubstr("'big'"), HasSubstr("--memory_limit_mb")));
  }
  ASSERT_TRUE(raw.Create("small", {1000}, {}).ok());
  EXPECT_EQ(raw.MustPullAll("small", 1000).values.size(), 1000u);
}

}  // namespace
}  // namespace ps
