// Sync mode's consistent cut and whole-cluster roll-back with real ps_server
// processes (docs/checkpoints.md): every part of a sync checkpoint holds the
// state before one step; a shard killed with SIGKILL and restarted from a
// checkpoint takes the whole cluster back to it, and two workers whose data
// order is chosen by step carry on through it with no code for it in their
// loop, ending bit for bit where an uninterrupted run ends.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "client/client.h"
#include "tests/durability/shard_process.h"

namespace ps::durability {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr uint64_t kBlockSize = 16;
constexpr size_t kSize = 200;
constexpr char kAdam[] = "adam {} learning_rate: 0.01";
// The table beside "w": rows of kDim, kIds per worker and step, drawn from
// ids that grow with the step (so rows are created after a checkpoint).
constexpr uint32_t kDim = 8;
constexpr size_t kIds = 6;

// Worker `worker`'s gradient at step `step`: it depends on the values it
// was computed on, so a gradient of values that were undone would change
// the trajectory.
std::vector<float> Gradient(int worker, uint64_t step,
                            const std::vector<float>& values) {
  std::vector<float> gradient(kSize);
  for (size_t i = 0; i < kSize; ++i) {
    gradient[i] =
        0.5f * values[i] + std::sin(0.37f * static_cast<float>(i) +
                                    0.91f * static_cast<float>(step) +
                                    1.3f * static_cast<float>(worker));
  }
  return gradient;
}

// The ids worker `worker` pushes rows of at `step`, without repeats.
std::vector<uint64_t> StepIds(int worker, uint64_t step) {
  // mt19937_64's sequence is fixed by the standard.
  std::mt19937_64 random(step * 16 + static_cast<uint64_t>(worker));
  std::vector<uint64_t> ids;
  while (ids.size() < kIds) {
    const uint64_t id = random() % (20 + 2 * step);
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  }
  return ids;
}

// Their row gradients, which depend on the rows they were computed on.
std::vector<float> RowGradient(int worker, uint64_t step,
                               const std::vector<float>& rows) {
  std::vector<float> gradient(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    gradient[i] = 0.25f * rows[i] + std::cos(0.53f * static_cast<float>(i) +
                                             0.71f * static_cast<float>(step) +
                                             0.4f * static_cast<float>(worker));
  }
  return gradient;
}

std::vector<float> InitialValues() {
  std::vector<float> values(kSize);
  for (size_t i = 0; i < kSize; ++i) {
    values[i] = std::cos(0.11f * static_cast<float>(i));
  }
  return values;
}

std::unique_ptr<Client> Connect(const std::vector<std::string>& addresses,
                                const std::string& worker_id) {
  ClientOptions options;
  options.addresses = addresses;
  options.worker_id = worker_id;
  options.retry.initial_backoff = absl::Milliseconds(20);
  options.retry.max_backoff = absl::Milliseconds(300);
  options.call_timeout = absl::Seconds(20);
  auto client = Client::Connect(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

// One worker: the training loop has no code for roll-backs. It reads its
// data by the client's step and leaves PushOptions::step unset.
struct Worker {
  std::unique_ptr<Client> client;
  std::vector<float> values;
  // The rows of the ids it pushes next, as the last step answered them.
  std::vector<float> rows;
  std::atomic<uint64_t> step = 0;  // the step it pushes next
  absl::Status status;
  // The test's pacing, not roll-back code: before step `wait_at` the
  // worker waits for `go_on` (so that it cannot finish before a restart).
  uint64_t wait_at = UINT64_MAX;
  const absl::Notification* go_on = nullptr;
};

void Train(Worker& worker, int index, uint64_t steps,
           const std::atomic<uint64_t>* limit) {
  Client& client = *worker.client;
  while (client.sync_step() < steps &&
         (limit == nullptr || client.sync_step() < limit->load())) {
    if (client.sync_step() == worker.wait_at && worker.go_on != nullptr) {
      worker.go_on->WaitForNotificationWithTimeout(absl::Seconds(60));
    }
    const uint64_t step = client.sync_step();
    const std::vector<float> gradient = Gradient(index, step, worker.values);
    // The rows of this step's ids, read before the step (as a model's
    // forward pass reads them).
    const std::vector<uint64_t> ids = StepIds(index, step);
    worker.rows.assign(ids.size() * kDim, 0);
    absl::Status status = client.PullRows("t", ids, worker.rows);
    if (!status.ok()) {
      worker.status = status;
      return;
    }
    const std::vector<float> row_gradient =
        RowGradient(index, step, worker.rows);
    const NamedUpdate update{"w", gradient, worker.values};
    const RowGradients rows{"t", ids, row_gradient, worker.rows};
    status = client.PushPull(std::span(&update, 1), std::span(&rows, 1));
    if (!status.ok()) {
      worker.status = status;
      return;
    }
    worker.step = client.sync_step();
  }
}

absl::StatusOr<v1::CheckpointResponse> Checkpoint(ProcessCluster& cluster) {
  auto context = MakeContext();
  v1::CheckpointResponse response;
  grpc::Status status = cluster.admin(0).Checkpoint(
      context.get(), v1::CheckpointRequest(), &response);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        status.error_message());
  }
  return response;
}

class SyncRollbackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = MakeTempDir("sync-rollback");
    ASSERT_FALSE(root_.empty());
  }
  void TearDown() override {
    clusters_.clear();
    std::error_code error;
    fs::remove_all(root_, error);
  }

  // Two sync shards for two workers, sharing one checkpoint folder.
  ProcessCluster& NewCluster(const std::string& name,
                             std::vector<std::string> extra = {}) {
    const std::string dir = (fs::path(root_) / name).string();
    fs::create_directories(dir);
    clusters_.push_back(
        std::make_unique<ProcessCluster>(dir, 2, kBlockSize, kAdam));
    for (uint32_t i = 0; i < 2; ++i) {
      ShardFlags& flags = clusters_.back()->flags(i);
      flags.checkpoint_dir = (fs::path(dir) / "ckpt").string();
      flags.extra = {"--consistency=sync", "--num_workers=2"};
      flags.extra.insert(flags.extra.end(), extra.begin(), extra.end());
    }
    return *clusters_.back();
  }

  // Connects both workers and creates "w" with the same initial values,
  // and table "t" (Adam, rows from a seeded normal).
  void StartWorkers(ProcessCluster& cluster, Worker (&workers)[2]) {
    for (int w = 0; w < 2; ++w) {
      workers[w].client =
          Connect(cluster.addresses(), absl::StrCat("worker", w));
      ASSERT_NE(workers[w].client, nullptr);
      ASSERT_TRUE(workers[w]
                      .client->CreateVariable("w", {kSize}, InitialValues())
                      .ok());
      TableOptions table;
      table.init.set_seed(7);
      table.init.mutable_normal()->set_stddev(0.1f);
      ASSERT_TRUE(workers[w].client->CreateTable("t", kDim, table).ok());
      workers[w].values.assign(kSize, 0);
      ASSERT_TRUE(workers[w].client->Pull("w", workers[w].values).ok());
      EXPECT_EQ(workers[w].client->sync_step(), 0u);
    }
  }

  // Every part of `checkpoint` is one cut before the same step K, and each
  // block of each part has applied exactly K steps.
  void ExpectOneCut(ProcessCluster& cluster,
                    const v1::CheckpointResponse& checkpoint) {
    ASSERT_EQ(checkpoint.parts_size(), 2);
    const uint64_t step = checkpoint.parts(0).sync_step();
    for (uint32_t i = 0; i < 2; ++i) {
      const v1::CheckpointPart& part = checkpoint.parts(i);
      EXPECT_TRUE(part.sync_cut()) << "checkpoint " << checkpoint.number();
      EXPECT_EQ(part.sync_step(), step) << "checkpoint " << checkpoint.number();
      // Every block takes one update per step from step 0 on.
      EXPECT_EQ(part.block_steps(),
                step * cluster.BlocksOf(i, "w", kSize).size())
          << "checkpoint " << checkpoint.number() << ", shard " << i;
    }
  }

  std::string root_;
  std::vector<std::unique_ptr<ProcessCluster>> clusters_;
};

TEST_F(SyncRollbackTest, EveryPartOfASyncCheckpointHoldsTheSameStep) {
  // Shard 0 also makes periodic checkpoints, every second.
  ProcessCluster& cluster = NewCluster("cut", {});
  cluster.flags(0).checkpoint_interval_s = 1;
  ASSERT_TRUE(cluster.StartAll().ok());
  Worker workers[2];
  StartWorkers(cluster, workers);
  // Both workers stop at one step (a worker that stopped alone would leave
  // the other waiting for its push).
  std::atomic<uint64_t> limit = UINT64_MAX;
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] { Train(workers[w], w, UINT64_MAX, &limit); });
  }
  // Checkpoints asked for while both workers push as fast as they can.
  std::vector<v1::CheckpointResponse> asked;
  for (int k = 0; k < 5; ++k) {
    absl::SleepFor(absl::Milliseconds(400));
    auto checkpoint = Checkpoint(cluster);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    asked.push_back(*checkpoint);
  }
  limit = std::max(workers[0].step.load(), workers[1].step.load()) + 2;
  for (std::thread& thread : threads) thread.join();
  for (int w = 0; w < 2; ++w) {
    ASSERT_TRUE(workers[w].status.ok()) << workers[w].status;
  }
  uint64_t last_step = 0;
  for (const v1::CheckpointResponse& checkpoint : asked) {
    ExpectOneCut(cluster, checkpoint);
    EXPECT_GE(checkpoint.parts(0).sync_step(), last_step);
    last_step = checkpoint.parts(0).sync_step();
  }
  // Training went on between them.
  EXPECT_GT(asked.back().parts(0).sync_step(),
            asked.front().parts(0).sync_step());

  // The periodic ones (and those asked for) as the manifests list them.
  auto context = MakeContext();
  v1::ListCheckpointsResponse listed;
  ASSERT_TRUE(
      cluster.admin(1)
          .ListCheckpoints(context.get(), v1::ListCheckpointsRequest(), &listed)
          .ok());
  ASSERT_GE(listed.checkpoints_size(), 3);
  for (const v1::CheckpointResponse& checkpoint : listed.checkpoints()) {
    ExpectOneCut(cluster, checkpoint);
  }

  // A hold longer than the bound is refused and holds nothing.
  v1::HoldSyncStepsRequest bad;
  bad.set_hold_seconds(1e9);
  v1::HoldSyncStepsResponse held;
  auto bad_context = MakeContext();
  grpc::Status refused =
      cluster.admin(1).HoldSyncSteps(bad_context.get(), bad, &held);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(refused.error_message(), HasSubstr("hold_seconds"));
}

// Bad requests of the new verbs: refused with a clear code and message,
// and nothing changes.
TEST_F(SyncRollbackTest, BadRollBackAndHoldRequestsAreRefusedAndChangeNothing) {
  ProcessCluster& sync = NewCluster("bad-sync");
  ASSERT_TRUE(sync.StartAll().ok());
  Worker workers[2];
  StartWorkers(sync, workers);
  auto before = sync.PullShard(1, "w", kSize);
  ASSERT_TRUE(before.ok()) << before.status();

  auto roll_back = [](ProcessCluster& cluster, uint64_t number) {
    v1::RollBackRequest request;
    request.set_number(number);
    v1::RollBackResponse answer;
    auto context = MakeContext();
    return cluster.admin(1).RollBack(context.get(), request, &answer);
  };
  grpc::Status zero = roll_back(sync, 0);
  EXPECT_EQ(zero.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(zero.error_message(), HasSubstr("must be in 1.."));
  // No such checkpoint in its folder.
  grpc::Status missing = roll_back(sync, 5);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(missing.error_message(),
              HasSubstr("cannot go back to checkpoint 5"));
  auto after = sync.PullShard(1, "w", kSize);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(SameBits(after->values, before->values));
  // The workers' sessions were not closed: a step still goes through.
  std::thread other([&] {
    workers[1].status = workers[1].client->PushPull(
        "w", Gradient(1, 0, workers[1].values), workers[1].values);
  });
  EXPECT_TRUE(
      workers[0]
          .client
          ->PushPull("w", Gradient(0, 0, workers[0].values), workers[0].values)
          .ok());
  other.join();
  EXPECT_TRUE(workers[1].status.ok()) << workers[1].status;
  EXPECT_EQ(workers[0].client->rollbacks(), 0u);
  EXPECT_EQ(workers[0].client->sync_step(), 1u);

  // An async cluster has no sync steps to hold, cut or roll back.
  const std::string dir = (fs::path(root_) / "bad-async").string();
  fs::create_directories(dir);
  clusters_.push_back(
      std::make_unique<ProcessCluster>(dir, 2, kBlockSize, kAdam));
  ProcessCluster& async = *clusters_.back();
  for (uint32_t i = 0; i < 2; ++i) {
    async.flags(i).checkpoint_dir = (fs::path(dir) / "ckpt").string();
  }
  ASSERT_TRUE(async.StartAll().ok());
  v1::HoldSyncStepsResponse held;
  auto hold_context = MakeContext();
  grpc::Status hold = async.admin(1).HoldSyncSteps(
      hold_context.get(), v1::HoldSyncStepsRequest(), &held);
  EXPECT_EQ(hold.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(hold.error_message(), HasSubstr("--consistency=sync"));
  v1::WriteCheckpointPartRequest cut;
  cut.set_number(1);
  cut.set_sync_cut(true);
  cut.set_sync_step(3);
  v1::CheckpointPart part;
  auto cut_context = MakeContext();
  grpc::Status cut_status =
      async.admin(1).WriteCheckpointPart(cut_context.get(), cut, &part);
  EXPECT_EQ(cut_status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(cut_status.error_message(), HasSubstr("--consistency=sync"));
  grpc::Status async_roll_back = roll_back(async, 1);
  EXPECT_EQ(async_roll_back.error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(async_roll_back.error_message(), HasSubstr("--consistency=sync"));
  // The refused part left nothing behind: the cluster's first checkpoint
  // is still number 1.
  auto checkpoint = Checkpoint(async);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(checkpoint->number(), 1u);
  EXPECT_FALSE(checkpoint->parts(0).sync_cut());
}

// What one training run ended with.
struct RunResult {
  std::vector<float> values[2];
  std::vector<float> rows[2];  // every row any step touched
  uint64_t rollbacks[2] = {0, 0};
  uint64_t resume_step[2] = {0, 0};
  uint64_t checkpoint_step = 0;
  uint64_t steps_at_kill = 0;
};

TEST_F(SyncRollbackTest,
       KilledShardTakesTheClusterBackAndTrainingEndsBitForBit) {
  constexpr uint64_t kSteps = 80;
  constexpr uint64_t kCheckpointAt = 25;
  constexpr uint64_t kKillAt = 45;

  auto run = [&](const std::string& name, bool interrupt) -> RunResult {
    RunResult result;
    ProcessCluster& cluster = NewCluster(name);
    EXPECT_TRUE(cluster.StartAll().ok());
    Worker workers[2];
    StartWorkers(cluster, workers);
    absl::Notification restarted;
    if (interrupt) {
      for (Worker& worker : workers) {
        worker.wait_at = kKillAt + 5;
        worker.go_on = &restarted;
      }
    }
    std::vector<std::thread> threads;
    for (int w = 0; w < 2; ++w) {
      threads.emplace_back([&, w] { Train(workers[w], w, kSteps, nullptr); });
    }
    auto slowest = [&] {
      return std::min(workers[0].step.load(), workers[1].step.load());
    };
    if (interrupt) {
      while (slowest() < kCheckpointAt) absl::SleepFor(absl::Milliseconds(1));
      auto checkpoint = Checkpoint(cluster);
      EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
      if (checkpoint.ok()) {
        ExpectOneCut(cluster, *checkpoint);
        result.checkpoint_step = checkpoint->parts(0).sync_step();
      }
      while (slowest() < kKillAt) absl::SleepFor(absl::Milliseconds(1));
      cluster.Kill(1);
      result.steps_at_kill = slowest();
      absl::SleepFor(absl::Milliseconds(300));
      EXPECT_TRUE(cluster.Start(1).ok());
      restarted.Notify();
      EXPECT_THAT(
          cluster.LastStderr(1),
          HasSubstr(absl::StrCat("the cluster went back to checkpoint ",
                                 checkpoint.ok() ? checkpoint->number() : 0)));
    }
    for (std::thread& thread : threads) thread.join();
    for (int w = 0; w < 2; ++w) {
      EXPECT_TRUE(workers[w].status.ok()) << workers[w].status;
      EXPECT_EQ(workers[w].client->sync_step(), kSteps);
      result.rollbacks[w] = workers[w].client->rollbacks();
      result.resume_step[w] = workers[w].client->resume_step();
      result.values[w].assign(kSize, 0);
      EXPECT_TRUE(workers[w].client->Pull("w", result.values[w]).ok());
      std::vector<uint64_t> ids(20 + 2 * kSteps);
      std::iota(ids.begin(), ids.end(), 0);
      result.rows[w].assign(ids.size() * kDim, 0);
      EXPECT_TRUE(workers[w].client->PullRows("t", ids, result.rows[w]).ok());
    }
    if (interrupt) {
      // Shard 0 went back with shard 1, and says so; neither reports a
      // shard that went back alone.
      EXPECT_THAT(cluster.LastStderr(0), HasSubstr("went back to checkpoint"));
      for (uint32_t i = 0; i < 2; ++i) {
        auto context = MakeContext();
        v1::Stats stats;
        EXPECT_TRUE(cluster.admin(i)
                        .GetStats(context.get(), v1::GetStatsRequest(), &stats)
                        .ok());
        EXPECT_EQ(stats.rolled_back(), 0u) << "shard " << i;
      }
    }
    return result;
  };

  const RunResult interrupted = run("interrupted", true);
  const RunResult straight = run("straight", false);

  // The kill undid steps: the workers were past the checkpoint.
  EXPECT_GT(interrupted.steps_at_kill, interrupted.checkpoint_step);
  for (int w = 0; w < 2; ++w) {
    EXPECT_EQ(interrupted.rollbacks[w], 1u) << "worker " << w;
    EXPECT_EQ(interrupted.resume_step[w], interrupted.checkpoint_step)
        << "worker " << w;
    EXPECT_EQ(straight.rollbacks[w], 0u);
    EXPECT_TRUE(SameBits(interrupted.values[w], straight.values[w]))
        << "worker " << w;
    EXPECT_TRUE(SameBits(interrupted.rows[w], straight.rows[w]))
        << "worker " << w;
  }
  EXPECT_TRUE(SameBits(interrupted.values[0], interrupted.values[1]));
  EXPECT_TRUE(SameBits(interrupted.rows[0], interrupted.rows[1]));
}

}  // namespace
}  // namespace ps::durability
