// Elastic sync and bounded staleness over real gRPC: in-process shards on
// loopback port 0, driven with the generated stubs (DESIGN.md,
// "Consistency"). Leases are short (about a second) and every wait is
// bounded by deadlines far longer, so a loaded machine slows these tests
// down without failing them.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/optimizer_config.h"
#include "proto/ps/v1/ps.grpc.pb.h"
#include "server/server.h"
#include "tests/server/raw_cluster.h"

namespace ps {
namespace {

using ::ps::testutil::Iota;
using ::ps::testutil::MakeContext;
using ::ps::testutil::PushArgs;
using ::ps::testutil::RawCluster;
using ::ps::testutil::Snapshot;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

struct ElasticConfig {
  uint32_t num_shards = 2;
  Consistency consistency = Consistency::kSync;
  uint32_t num_workers = 0;
  uint32_t quorum = 0;
  uint32_t staleness = 0;
  absl::Duration lease = absl::Seconds(1);
  std::string checkpoint_root;  // empty: no checkpoints
};

// Shards of one cluster with SGD (learning rate 1) and block size 4.
class ElasticCluster {
 public:
  explicit ElasticCluster(const ElasticConfig& config) : config_(config) {
    for (uint32_t shard = 0; shard < config.num_shards; ++shard) Start(shard);
    if (!ok()) return;
    auto raw = RawCluster::Connect(addresses_);
    EXPECT_TRUE(raw.ok()) << raw.status();
    if (raw.ok()) raw_ = *std::move(raw);
  }

  ~ElasticCluster() {
    raw_.reset();
    for (auto& server : servers_) {
      if (server != nullptr) server->Shutdown().IgnoreError();
    }
  }

  bool ok() const {
    for (const auto& server : servers_) {
      if (server == nullptr) return false;
    }
    return servers_.size() == config_.num_shards;
  }
  RawCluster& raw() { return *raw_; }

  // Stops shard `shard` (writing its final checkpoint) and starts it again
  // on a new port, from that checkpoint.
  void Restart(uint32_t shard) {
    ASSERT_TRUE(servers_[shard]->Shutdown().ok());
    servers_[shard].reset();
    Start(shard);
    ASSERT_TRUE(ok());
    raw_ = std::make_unique<RawCluster>(addresses_, 4);
  }

  std::unique_ptr<RawCluster> NewClient() {
    return std::make_unique<RawCluster>(addresses_, 4);
  }

  v1::Stats Stats(uint32_t shard) {
    auto channel = grpc::CreateChannel(addresses_[shard],
                                       grpc::InsecureChannelCredentials());
    auto admin = v1::AdminService::NewStub(channel);
    v1::Stats stats;
    grpc::Status status =
        admin->GetStats(MakeContext().get(), v1::GetStatsRequest(), &stats);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return stats;
  }

 private:
  void Start(uint32_t shard) {
    ServerOptions options;
    options.shard_index = shard;
    options.num_shards = config_.num_shards;
    options.block_size = 4;
    options.consistency = config_.consistency;
    options.num_workers = config_.num_workers;
    options.quorum = config_.quorum;
    options.staleness = config_.staleness;
    options.lease_timeout = config_.lease;
    options.default_optimizer =
        *ParseOptimizerConfig("sgd {} learning_rate: 1");
    if (!config_.checkpoint_root.empty()) {
      options.checkpoint_dir =
          absl::StrCat(config_.checkpoint_root, "/shard-", shard);
    }
    auto server = ParameterServer::Start(options);
    EXPECT_TRUE(server.ok()) << server.status();
    if (servers_.size() <= shard) {
      servers_.resize(shard + 1);
      addresses_.resize(shard + 1);
    }
    if (!server.ok()) return;
    addresses_[shard] = (*server)->address();
    servers_[shard] = *std::move(server);
  }

  const ElasticConfig config_;
  std::vector<std::unique_ptr<ParameterServer>> servers_;
  std::vector<std::string> addresses_;
  std::unique_ptr<RawCluster> raw_;
};

// Opens `worker`'s session on every shard (epoch 0 on each is enough for
// these tests: no push asks for exactly-once).
void Open(RawCluster& raw, const std::string& worker) {
  for (uint32_t shard = 0; shard < raw.num_shards(); ++shard) {
    v1::OpenSessionRequest request;
    request.set_worker_id(worker);
    v1::OpenSessionResponse response;
    grpc::Status status =
        raw.stub(shard).OpenSession(MakeContext().get(), request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
}

grpc::Status LeaveOn(RawCluster& raw, uint32_t shard, const std::string& worker,
                     uint64_t epoch = 0, bool* was_member = nullptr) {
  v1::LeaveRequest request;
  request.set_worker_id(worker);
  request.set_epoch(epoch);
  v1::LeaveResponse response;
  grpc::Status status =
      raw.stub(shard).Leave(MakeContext().get(), request, &response);
  if (was_member != nullptr) *was_member = response.was_member();
  return status;
}

void Leave(RawCluster& raw, const std::string& worker) {
  for (uint32_t shard = 0; shard < raw.num_shards(); ++shard) {
    grpc::Status status = LeaveOn(raw, shard, worker);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
}

// Keeps the leases of some workers on every shard, as ps::Client does for
// its worker: a heartbeat every 100 ms.
class Heartbeater {
 public:
  explicit Heartbeater(ElasticCluster& cluster)
      : client_(cluster.NewClient()), thread_([this] { Run(); }) {}
  ~Heartbeater() {
    stop_ = true;
    thread_.join();
  }
  void Add(const std::string& worker) {
    absl::MutexLock lock(&mu_);
    workers_.push_back(worker);
  }

 private:
  void Run() {
    while (!stop_) {
      std::vector<std::string> workers;
      {
        absl::MutexLock lock(&mu_);
        workers = workers_;
      }
      for (const std::string& worker : workers) {
        for (uint32_t shard = 0; shard < client_->num_shards(); ++shard) {
          v1::HeartbeatRequest request;
          request.set_worker_id(worker);
          v1::HeartbeatResponse response;
          client_->stub(shard)
              .Heartbeat(MakeContext().get(), request, &response)
              .ok();
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  std::unique_ptr<RawCluster> client_;
  absl::Mutex mu_;
  std::vector<std::string> workers_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> stop_ = false;
  std::thread thread_;
};

// Small integers that differ per (worker, step, index); exact in float32.
std::vector<float> Gradient(size_t n, int worker, int step) {
  std::vector<float> g(n);
  for (size_t j = 0; j < n; ++j) {
    g[j] = static_cast<float>(
        (worker * 7 + step * 3 + static_cast<int>(j)) % 9 - 4);
  }
  return g;
}

// The values after one sync step of SGD (learning rate 1) whose pushes came
// from `workers`, computed as the shard does: the sum, then the mean.
std::vector<float> SyncStep(std::vector<float> values,
                            const std::vector<int>& workers, int step) {
  std::vector<float> sum(values.size(), 0.0f);
  for (int worker : workers) {
    const std::vector<float> g = Gradient(values.size(), worker, step);
    for (size_t j = 0; j < values.size(); ++j) sum[j] += g[j];
  }
  for (size_t j = 0; j < values.size(); ++j) {
    values[j] += -1.0f * (sum[j] / static_cast<float>(workers.size()));
  }
  return values;
}

const v1::WorkerStats* FindWorker(const v1::Stats& stats,
                                  const std::string& worker) {
  for (const v1::WorkerStats& w : stats.workers()) {
    if (w.worker_id() == worker) return &w;
  }
  return nullptr;
}

constexpr uint64_t kSize = 11;  // three blocks of 4: two shards hold some

// ------------------------------------------------------------- elastic sync

// A worker that stops pushing (killed mid-job) is dropped when its lease
// runs out: the others finish their step in about a lease, not a client's
// deadline, and the step is the mean of the workers that pushed it.
TEST(ElasticSyncTest, WorkerThatStopsIsDroppedAndTheOthersGoOn) {
  ElasticCluster cluster({.num_workers = 3, .lease = absl::Seconds(2)});
  ASSERT_TRUE(cluster.ok());
  const std::vector<float> initial = Iota(kSize);
  ASSERT_TRUE(cluster.raw().Create("w", {kSize}, initial).ok());
  for (int worker = 0; worker < 3; ++worker) {
    Open(cluster.raw(), absl::StrCat("w", worker));
  }
  // w0 and w1 keep their leases on both shards while they wait on one.
  Heartbeater heartbeats(cluster);
  heartbeats.Add("w0");
  heartbeats.Add("w1");

  // Step 0 with all three; step 1 with w0 and w1 only.
  std::vector<float> expected = SyncStep(initial, {0, 1, 2}, 0);
  expected = SyncStep(expected, {0, 1}, 1);
  std::vector<Snapshot> answers(2);
  std::vector<absl::Duration> step1_took(2);
  std::vector<std::thread> threads;
  for (int worker = 0; worker < 3; ++worker) {
    threads.emplace_back([&, worker] {
      auto client = cluster.NewClient();
      const std::string id = absl::StrCat("w", worker);
      Snapshot answer;
      grpc::Status status = client->Push("w", {.worker_id = id, .step = 0},
                                         Gradient(kSize, worker, 0), &answer);
      ASSERT_TRUE(status.ok()) << id << ": " << status.error_message();
      if (worker == 2) return;  // w2 dies here
      const absl::Time start = absl::Now();
      status = client->Push("w", {.worker_id = id, .step = 1},
                            Gradient(kSize, worker, 1), &answers[worker]);
      step1_took[worker] = absl::Now() - start;
      ASSERT_TRUE(status.ok()) << id << ": " << status.error_message();
    });
  }
  for (auto& thread : threads) thread.join();
  for (int worker = 0; worker < 2; ++worker) {
    EXPECT_THAT(answers[worker].values, ElementsAreArray(expected));
    // The lease (2 s) plus scheduling, far below the call's 30 s deadline.
    EXPECT_LT(step1_took[worker], absl::Seconds(20));
  }
  for (uint32_t shard = 0; shard < 2; ++shard) {
    const v1::Stats stats = cluster.Stats(shard);
    EXPECT_EQ(stats.members(), 2u);
    EXPECT_EQ(stats.lease_drops(), 1u);
    const v1::WorkerStats* w2 = FindWorker(stats, "w2");
    ASSERT_NE(w2, nullptr);
    EXPECT_EQ(w2->state(), "dropped");
    const v1::WorkerStats* w0 = FindWorker(stats, "w0");
    ASSERT_NE(w0, nullptr);
    EXPECT_EQ(w0->state(), "member");
    EXPECT_EQ(w0->step(), 1u);
  }

  // w2 comes back (a restarted process opens its session again): it
  // rejoins, and step 2 waits for it.
  Open(cluster.raw(), "w2");
  heartbeats.Add("w2");
  expected = SyncStep(expected, {0, 1, 2}, 2);
  threads.clear();
  std::vector<Snapshot> step2(3);
  for (int worker = 0; worker < 3; ++worker) {
    threads.emplace_back([&, worker] {
      auto client = cluster.NewClient();
      grpc::Status status =
          client->Push("w", {.worker_id = absl::StrCat("w", worker), .step = 2},
                       Gradient(kSize, worker, 2), &step2[worker]);
      EXPECT_TRUE(status.ok()) << status.error_message();
    });
  }
  for (auto& thread : threads) thread.join();
  for (int worker = 0; worker < 3; ++worker) {
    EXPECT_THAT(step2[worker].values, ElementsAreArray(expected));
  }
  EXPECT_EQ(cluster.Stats(0).members(), 3u);
}

// 10, 10 and 7 steps: each worker leaves when it is done (like DDP's
// join()), and the others go on. Steps 0..6 are the mean of three workers,
// steps 7..9 of two, exactly.
TEST(ElasticSyncTest, UnevenStepCountsAllFinish) {
  ElasticCluster cluster({.num_workers = 3, .lease = absl::Seconds(30)});
  ASSERT_TRUE(cluster.ok());
  const std::vector<float> initial = Iota(kSize, -2.0f);
  ASSERT_TRUE(cluster.raw().Create("w", {kSize}, initial).ok());
  const std::vector<int> steps = {10, 10, 7};
  for (int worker = 0; worker < 3; ++worker) {
    Open(cluster.raw(), absl::StrCat("w", worker));
  }
  std::vector<float> expected = initial;
  for (int s = 0; s < 10; ++s) {
    expected = s < 7 ? SyncStep(expected, {0, 1, 2}, s)
                     : SyncStep(expected, {0, 1}, s);
  }
  std::vector<Snapshot> last(3);
  std::vector<std::thread> threads;
  for (int worker = 0; worker < 3; ++worker) {
    threads.emplace_back([&, worker] {
      auto client = cluster.NewClient();
      const std::string id = absl::StrCat("w", worker);
      for (int s = 0; s < steps[worker]; ++s) {
        grpc::Status status = client->Push(
            "w", {.worker_id = id, .step = static_cast<uint64_t>(s)},
            Gradient(kSize, worker, s), &last[worker]);
        ASSERT_TRUE(status.ok())
            << id << " step " << s << ": " << status.error_message();
      }
      Leave(*client, id);
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_THAT(last[0].values, ElementsAreArray(expected));
  EXPECT_THAT(last[1].values, ElementsAreArray(expected));
  EXPECT_THAT(cluster.raw().MustPullAll("w", kSize).values,
              ElementsAreArray(expected));
  const v1::Stats stats = cluster.Stats(0);
  EXPECT_EQ(stats.members(), 0u);
  EXPECT_EQ(stats.lease_drops(), 0u);
  ASSERT_NE(FindWorker(stats, "w2"), nullptr);
  EXPECT_EQ(FindWorker(stats, "w2")->state(), "left");
  EXPECT_EQ(FindWorker(stats, "w2")->step(), 6u);
}

// --quorum=2 of 3 with a straggler: the fast two finish and leave; the
// straggler's late step is refused (ABORTED, naming the current step), and
// from there it goes on alone instead of waiting for a quorum that never
// comes.
TEST(ElasticSyncTest, StragglerFinishesAfterTheQuorumLeft) {
  ElasticCluster cluster({.num_shards = 3,
                          .num_workers = 3,
                          .quorum = 2,
                          .lease = absl::Seconds(30)});
  ASSERT_TRUE(cluster.ok());
  const std::vector<float> initial = Iota(kSize);
  ASSERT_TRUE(cluster.raw().Create("w", {kSize}, initial).ok());
  for (int worker = 0; worker < 3; ++worker) {
    Open(cluster.raw(), absl::StrCat("w", worker));
  }
  std::vector<float> expected = initial;
  for (int s = 0; s < 5; ++s) expected = SyncStep(expected, {0, 1}, s);
  std::vector<std::thread> threads;
  for (int worker = 0; worker < 2; ++worker) {
    threads.emplace_back([&, worker] {
      auto client = cluster.NewClient();
      const std::string id = absl::StrCat("w", worker);
      for (int s = 0; s < 5; ++s) {
        grpc::Status status = client->Push(
            "w", {.worker_id = id, .step = static_cast<uint64_t>(s)},
            Gradient(kSize, worker, s));
        ASSERT_TRUE(status.ok()) << status.error_message();
      }
      Leave(*client, id);
    });
  }
  for (auto& thread : threads) thread.join();

  RawCluster& straggler = cluster.raw();
  grpc::Status status = straggler.Push("w", {.worker_id = "w2", .step = 0},
                                       Gradient(kSize, 2, 0));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_THAT(status.error_message(), HasSubstr("current step is 5"));
  for (int s = 5; s < 8; ++s) {
    Snapshot answer;
    status = straggler.Push(
        "w", {.worker_id = "w2", .step = static_cast<uint64_t>(s)},
        Gradient(kSize, 2, s), &answer);
    ASSERT_TRUE(status.ok()) << status.error_message();
    expected = SyncStep(expected, {2}, s);
    EXPECT_THAT(answer.values, ElementsAreArray(expected)) << "step " << s;
  }
}

// A shard that restarts from its checkpoint counts the workers with a
// session as members again: a step still waits for both.
TEST(ElasticSyncTest, MembershipSurvivesAShardRestart) {
  const std::string root = (std::filesystem::path(::testing::TempDir()) /
                            absl::StrCat("elastic_restart_", ::getpid()))
                               .string();
  std::filesystem::remove_all(root);
  ElasticCluster cluster({.num_shards = 1,
                          .num_workers = 2,
                          .lease = absl::Seconds(30),
                          .checkpoint_root = root});
  ASSERT_TRUE(cluster.ok());
  const std::vector<float> initial = Iota(kSize);
  ASSERT_TRUE(cluster.raw().Create("w", {kSize}, initial).ok());
  Open(cluster.raw(), "w0");
  Open(cluster.raw(), "w1");
  ASSERT_EQ(cluster.Stats(0).members(), 2u);
  cluster.Restart(0);
  EXPECT_EQ(cluster.Stats(0).members(), 2u);

  // w0's step waits for w1, then holds the mean of both.
  auto w0 = std::async(std::launch::async, [&] {
    Snapshot answer;
    grpc::Status status = cluster.NewClient()->Push(
        "w", {.worker_id = "w0", .step = 0}, Gradient(kSize, 0, 0), &answer);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return answer;
  });
  EXPECT_EQ(w0.wait_for(std::chrono::milliseconds(500)),
            std::future_status::timeout);
  Snapshot answer;
  ASSERT_TRUE(cluster.raw()
                  .Push("w", {.worker_id = "w1", .step = 0},
                        Gradient(kSize, 1, 0), &answer)
                  .ok());
  const std::vector<float> expected = SyncStep(initial, {0, 1}, 0);
  EXPECT_THAT(answer.values, ElementsAreArray(expected));
  EXPECT_THAT(w0.get().values, ElementsAreArray(expected));
  std::filesystem::remove_all(root);
}

// Heartbeat and Leave refuse what they cannot take, and change nothing.
TEST(ElasticSyncTest, BadMembershipCallsAreRefusedAndChangeNothing) {
  ElasticCluster cluster(
      {.num_shards = 1, .num_workers = 1, .lease = absl::Seconds(30)});
  ASSERT_TRUE(cluster.ok());
  RawCluster& raw = cluster.raw();
  v1::OpenSessionRequest open;
  open.set_worker_id("w0");
  v1::OpenSessionResponse opened;
  ASSERT_TRUE(raw.stub(0).OpenSession(MakeContext().get(), open, &opened).ok());

  EXPECT_EQ(LeaveOn(raw, 0, "").error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::HeartbeatRequest heartbeat;
  v1::HeartbeatResponse beat;
  EXPECT_EQ(
      raw.stub(0).Heartbeat(MakeContext().get(), heartbeat, &beat).error_code(),
      grpc::StatusCode::INVALID_ARGUMENT);
  // An older session (a fenced process) cannot make the worker leave.
  grpc::Status fenced = LeaveOn(raw, 0, "w0", opened.epoch() - 1);
  EXPECT_EQ(fenced.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(fenced.error_message(), HasSubstr("fenced"));
  EXPECT_EQ(cluster.Stats(0).members(), 1u);

  heartbeat.set_worker_id("w0");
  heartbeat.set_epoch(opened.epoch());
  ASSERT_TRUE(
      raw.stub(0).Heartbeat(MakeContext().get(), heartbeat, &beat).ok());
  EXPECT_EQ(beat.members(), 1u);
  bool was_member = false;
  ASSERT_TRUE(LeaveOn(raw, 0, "w0", opened.epoch(), &was_member).ok());
  EXPECT_TRUE(was_member);
  ASSERT_TRUE(LeaveOn(raw, 0, "w0", opened.epoch(), &was_member).ok());
  EXPECT_FALSE(was_member);
  EXPECT_EQ(cluster.Stats(0).members(), 0u);
}

// ------------------------------------------------------------------- ssp

// PushPull of `worker`'s step `step` on every shard, in a thread.
std::future<grpc::Status> PushPullAsync(ElasticCluster& cluster,
                                        const std::string& worker, int id,
                                        int step, Snapshot* answer) {
  return std::async(std::launch::async, [&cluster, worker, id, step, answer] {
    return cluster.NewClient()->Push(
        "w", {.worker_id = worker, .step = static_cast<uint64_t>(step)},
        Gradient(kSize, id, step), answer);
  });
}

// Staleness 0: a worker's PushPull of step s is answered once every member
// pushed step s, with all of their gradients applied (one update each, as
// async applies them).
TEST(SspTest, StalenessZeroWaitsForEveryMember) {
  ElasticCluster cluster({.consistency = Consistency::kSsp,
                          .staleness = 0,
                          .lease = absl::Seconds(30)});
  ASSERT_TRUE(cluster.ok());
  const std::vector<float> initial = Iota(kSize);
  ASSERT_TRUE(cluster.raw().Create("w", {kSize}, initial).ok());
  Open(cluster.raw(), "a");
  Open(cluster.raw(), "b");
  std::vector<float> expected = initial;
  for (int s = 0; s < 3; ++s) {
    Snapshot a_answer;
    auto a = PushPullAsync(cluster, "a", 0, s, &a_answer);
    EXPECT_EQ(a.wait_for(std::chrono::milliseconds(300)),
              std::future_status::timeout)
        << "a ran ahead of b at step " << s;
    Snapshot b_answer;
    grpc::Status b = cluster.NewClient()->Push(
        "w", {.worker_id = "b", .step = static_cast<uint64_t>(s)},
        Gradient(kSize, 1, s), &b_answer);
    ASSERT_TRUE(b.ok()) << b.error_message();
    const grpc::Status a_status = a.get();
    ASSERT_TRUE(a_status.ok()) << a_status.error_message();
    for (int worker : {0, 1}) {
      const std::vector<float> g = Gradient(kSize, worker, s);
      for (size_t j = 0; j < kSize; ++j) expected[j] += -1.0f * g[j];
    }
    EXPECT_THAT(a_answer.values, ElementsAreArray(expected)) << "step " << s;
    EXPECT_THAT(b_answer.values, ElementsAreArray(expected)) << "step " << s;
  }
  const v1::Stats stats = cluster.Stats(0);
  EXPECT_EQ(stats.consistency(), "ssp");
  EXPECT_EQ(FindWorker(stats, "a")->step(), 2u);
}

// A large staleness is async: one member runs 20 steps while the other has
// pushed none.
TEST(SspTest, LargeStalenessIsAsync) {
  ElasticCluster cluster({.consistency = Consistency::kSsp,
                          .staleness = 1000,
                          .lease = absl::Seconds(30)});
  ASSERT_TRUE(cluster.ok());
  ASSERT_TRUE(cluster.raw().Create("w", {kSize}, Iota(kSize)).ok());
  Open(cluster.raw(), "a");
  Open(cluster.raw(), "b");
  for (int s = 0; s < 20; ++s) {
    Snapshot answer;
    ASSERT_TRUE(cluster.raw()
                    .Push("w",
                          {.worker_id = "a", .step = static_cast<uint64_t>(s)},
                          Gradient(kSize, 0, s), &answer)
                    .ok());
  }
  const v1::Stats stats = cluster.Stats(0);
  EXPECT_EQ(FindWorker(stats, "a")->step(), 19u);
  EXPECT_EQ(FindWorker(stats, "a")->steps_behind(), 0);
  EXPECT_EQ(FindWorker(stats, "b")->steps_behind(), 20);
}

// Staleness 1: a PushPull that would run two steps ahead of the slowest
// member waits; at its deadline it fails with DEADLINE_EXCEEDED naming the
// bound; a slowest member that is dropped lets the wait go on.
TEST(SspTest, WaitEndsAtTheDeadlineOrWhenTheSlowestIsDropped) {
  ElasticCluster cluster({.num_shards = 1,
                          .consistency = Consistency::kSsp,
                          .staleness = 1,
                          .lease = absl::Seconds(3)});
  ASSERT_TRUE(cluster.ok());
  ASSERT_TRUE(cluster.raw().Create("w", {kSize}, Iota(kSize)).ok());
  Open(cluster.raw(), "a");
  Open(cluster.raw(), "b");
  RawCluster& raw = cluster.raw();
  // Step 0 computes step 1 next: within 1 of b (at clock 0).
  Snapshot answer;
  ASSERT_TRUE(raw.Push("w", {.worker_id = "a", .step = 0},
                       Gradient(kSize, 0, 0), &answer)
                  .ok());
  // Step 1 would compute step 2: two ahead of b. A short deadline.
  v1::PushRequest request;
  request.set_worker_id("a");
  request.set_step(1);
  for (uint64_t offset = 0; offset < kSize; offset += 4) {
    v1::Slice* slice = request.add_gradients();
    slice->set_variable("w");
    slice->set_offset(offset);
    slice->set_length(std::min<uint64_t>(4, kSize - offset));
    const std::vector<float> g(slice->length(), 1.0f);
    slice->set_data(testutil::Encode(g));
  }
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(1500));
  v1::PullResponse response;
  grpc::Status status = raw.stub(0).PushPull(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // The server's own answer, when it arrives before the client's deadline,
  // names the bound.
  if (status.error_message() != "Deadline Exceeded") {
    EXPECT_THAT(status.error_message(), HasSubstr("staleness 1"));
  }

  // Now b stops: once it is dropped (lease 3 s), a's wait ends.
  request.set_step(2);
  const absl::Time start = absl::Now();
  status = raw.stub(0).PushPull(MakeContext().get(), request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_LT(absl::Now() - start, absl::Seconds(25));
  EXPECT_EQ(cluster.Stats(0).lease_drops(), 1u);
}

}  // namespace
}  // namespace ps
