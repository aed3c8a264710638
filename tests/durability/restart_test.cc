// Restart after kill -9 with real ps_server processes: optimizer state comes
// back exactly, workers ride through a shard's restart, a retried push is
// applied once, and SIGTERM leaves a checkpoint behind.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "client/client.h"
#include "tests/durability/shard_process.h"

namespace ps::durability {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr uint64_t kBlockSize = 16;

// The gradient of step t: deterministic, different per value and per step.
std::vector<float> Gradient(uint64_t t, size_t n, float salt) {
  std::vector<float> gradient(n);
  for (size_t i = 0; i < n; ++i) {
    gradient[i] = std::sin(0.37f * static_cast<float>(i) +
                           0.91f * static_cast<float>(t) + salt) *
                  (1.0f + 0.25f * static_cast<float>(i % 5));
  }
  return gradient;
}

// The loss reported with step t (Eve uses it).
double Loss(uint64_t t) { return 2.0 / (1.0 + 0.1 * static_cast<double>(t)); }

std::vector<float> Ramp(size_t n, float scale) {
  std::vector<float> values(n);
  for (size_t i = 0; i < n; ++i) values[i] = scale * static_cast<float>(i % 23);
  return values;
}

// Enough attempts to ride out a restart of a few seconds.
RetryPolicy Patient() {
  RetryPolicy retry;
  retry.max_attempts = 60;
  retry.initial_backoff = absl::Milliseconds(20);
  retry.max_backoff = absl::Milliseconds(300);
  retry.jitter = 0.2;
  return retry;
}

std::unique_ptr<Client> Connect(const ProcessCluster& cluster,
                                const std::string& worker_id) {
  ClientOptions options;
  options.addresses = cluster.addresses();
  options.worker_id = worker_id;
  options.retry = Patient();
  options.call_timeout = absl::Seconds(10);
  auto client = Client::Connect(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

std::vector<float> PullAll(Client& client, const std::string& name,
                           size_t size) {
  std::vector<float> values(size);
  const absl::Status status = client.Pull(name, values);
  EXPECT_TRUE(status.ok()) << status;
  return values;
}

class RestartTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = MakeTempDir("restart");
    ASSERT_FALSE(root_.empty());
  }
  void TearDown() override {
    clusters_.clear();  // kills every child
    std::error_code error;
    fs::remove_all(root_, error);
  }

  ProcessCluster& NewCluster(const std::string& name, uint32_t num_shards,
                             const std::string& optimizer,
                             bool checkpoints = true) {
    const std::string dir = (fs::path(root_) / name).string();
    fs::create_directories(dir);
    clusters_.push_back(std::make_unique<ProcessCluster>(
        dir, num_shards, kBlockSize, optimizer, checkpoints));
    return *clusters_.back();
  }

  std::string root_;
  std::vector<std::unique_ptr<ProcessCluster>> clusters_;
};

// Adam for "w" (the default) and Eve for "e" (an override): after a kill -9
// the shard holds exactly what it held at the checkpoint, and replaying the
// lost steps to it reproduces the uninterrupted run bit for bit, which needs
// m, v, t (and Eve's d and f_hat) restored.
TEST_F(RestartTest, KilledShardResumesTheExactTrajectory) {
  constexpr char kAdam[] = "adam {} learning_rate: 0.01";
  constexpr size_t kW = 300, kE = 200;
  constexpr uint32_t kVictim = 1;
  v1::OptimizerConfig eve;
  eve.mutable_eve();
  eve.set_learning_rate(0.02);

  ProcessCluster& reference = NewCluster("reference", 2, kAdam, false);
  ProcessCluster& run = NewCluster("run", 2, kAdam);
  ASSERT_TRUE(reference.StartAll().ok());
  ASSERT_TRUE(run.StartAll().ok());
  ASSERT_GE(run.BlocksOf(kVictim, "w", kW).size(), 5u);
  ASSERT_GE(run.BlocksOf(0, "w", kW).size(), 5u);
  std::unique_ptr<Client> reference_client = Connect(reference, "trainer");
  std::unique_ptr<Client> client = Connect(run, "trainer");
  ASSERT_NE(reference_client, nullptr);
  ASSERT_NE(client, nullptr);
  for (Client* c : {reference_client.get(), client.get()}) {
    ASSERT_TRUE(c->CreateVariable("w", {kW}, Ramp(kW, 0.1f)).ok());
    ASSERT_TRUE(c->CreateVariable("e", {kE}, Ramp(kE, -0.05f), eve).ok());
  }
  auto train = [](Client& c, uint64_t first, uint64_t last) {
    for (uint64_t t = first; t <= last; ++t) {
      const std::vector<float> gw = Gradient(t, kW, 0.0f);
      const std::vector<float> ge = Gradient(t, kE, 1.5f);
      const NamedGradient gradients[] = {{"w", gw}, {"e", ge}};
      PushOptions options;
      options.step = t;
      options.loss = Loss(t);
      const absl::Status status = c.Push(gradients, options);
      ASSERT_TRUE(status.ok()) << "step " << t << ": " << status;
    }
  };

  constexpr uint64_t kCheckpointed = 6, kLost = 12, kLast = 15;
  train(*reference_client, 1, kCheckpointed);
  train(*client, 1, kCheckpointed);
  for (uint32_t i = 0; i < 2; ++i) {
    auto written = run.Checkpoint(i);
    ASSERT_TRUE(written.ok()) << written.status();
    EXPECT_GT(written->bytes(), 0u);
    EXPECT_THAT(written->path(), HasSubstr(run.checkpoint_dir(i)));
  }
  auto w_at_checkpoint = run.PullShard(kVictim, "w", kW);
  auto e_at_checkpoint = run.PullShard(kVictim, "e", kE);
  ASSERT_TRUE(w_at_checkpoint.ok() && e_at_checkpoint.ok());

  train(*reference_client, kCheckpointed + 1, kLost);
  train(*client, kCheckpointed + 1, kLost);
  auto w_before_kill = run.PullShard(kVictim, "w", kW);
  ASSERT_TRUE(w_before_kill.ok());
  ASSERT_FALSE(SameBits(w_before_kill->values, w_at_checkpoint->values));

  run.Kill(kVictim);
  ASSERT_TRUE(run.Start(kVictim).ok());
  EXPECT_THAT(run.LastStderr(kVictim), HasSubstr("loaded checkpoint"));

  auto w_restored = run.PullShard(kVictim, "w", kW);
  auto e_restored = run.PullShard(kVictim, "e", kE);
  ASSERT_TRUE(w_restored.ok()) << w_restored.status();
  ASSERT_TRUE(e_restored.ok()) << e_restored.status();
  EXPECT_TRUE(SameBits(w_restored->values, w_at_checkpoint->values));
  EXPECT_TRUE(SameBits(e_restored->values, e_at_checkpoint->values));
  EXPECT_THAT(w_restored->versions, ::testing::Each(kCheckpointed));
  EXPECT_THAT(e_restored->versions, ::testing::Each(kCheckpointed));

  // Replay the lost steps to the restarted shard only: the other shard kept
  // them. A new worker id, as a worker restarted from its own checkpoint
  // would have; the trainer's own seqs are all above the restored table.
  uint64_t seq = 1;
  for (uint64_t t = kCheckpointed + 1; t <= kLost; ++t) {
    ASSERT_TRUE(run.PushShard(kVictim, "w", Gradient(t, kW, 0.0f), "replayer",
                              seq++, t, Loss(t))
                    .ok());
    ASSERT_TRUE(run.PushShard(kVictim, "e", Gradient(t, kE, 1.5f), "replayer",
                              seq++, t, Loss(t))
                    .ok());
  }
  for (uint32_t i = 0; i < 2; ++i) {
    for (auto [name, size] : {std::pair{"w", kW}, std::pair{"e", kE}}) {
      auto expected = reference.PullShard(i, name, size);
      auto actual = run.PullShard(i, name, size);
      ASSERT_TRUE(expected.ok() && actual.ok());
      EXPECT_TRUE(SameBits(actual->values, expected->values))
          << "shard " << i << " variable " << name;
      EXPECT_EQ(actual->versions, expected->versions);
    }
  }

  // The trainer carries on through its own client, which reconnects.
  train(*reference_client, kLost + 1, kLast);
  train(*client, kLost + 1, kLast);
  EXPECT_TRUE(
      SameBits(PullAll(*client, "w", kW), PullAll(*reference_client, "w", kW)));
  EXPECT_TRUE(
      SameBits(PullAll(*client, "e", kE), PullAll(*reference_client, "e", kE)));
}

// A worker whose shard is checkpointed, killed and restarted between two of
// its steps finishes its run without seeing an error, and nothing is lost:
// the result is the uninterrupted run's, bit for bit.
TEST_F(RestartTest, WorkerRidesThroughRestartRightAfterCheckpoint) {
  constexpr char kAdam[] = "adam { amsgrad: true } learning_rate: 0.01";
  constexpr size_t kN = 250;
  constexpr uint32_t kVictim = 0;
  constexpr uint64_t kSteps = 30, kKillAfter = 10;
  ProcessCluster& reference = NewCluster("reference", 2, kAdam, false);
  ProcessCluster& run = NewCluster("run", 2, kAdam);
  ASSERT_TRUE(reference.StartAll().ok());
  ASSERT_TRUE(run.StartAll().ok());
  std::unique_ptr<Client> reference_client = Connect(reference, "worker");
  std::unique_ptr<Client> client = Connect(run, "worker");
  ASSERT_NE(reference_client, nullptr);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(reference_client->CreateVariable("w", {kN}, Ramp(kN, 1)).ok());
  ASSERT_TRUE(client->CreateVariable("w", {kN}, Ramp(kN, 1)).ok());

  std::vector<float> expected(kN);
  for (uint64_t t = 1; t <= kSteps; ++t) {
    PushOptions options;
    options.step = t;
    ASSERT_TRUE(reference_client
                    ->PushPull("w", Gradient(t, kN, 0.5f), expected, options)
                    .ok());
  }

  // The worker trains on its own thread; this one checkpoints, kills and
  // restarts (a child dies with the thread that spawned it).
  absl::Notification paused, resume;
  std::vector<float> values(kN);
  absl::Status worker_status;
  Clock::time_point step_done_at;
  std::thread worker([&] {
    for (uint64_t t = 1; t <= kSteps && worker_status.ok(); ++t) {
      PushOptions options;
      options.step = t;
      worker_status =
          client->PushPull("w", Gradient(t, kN, 0.5f), values, options);
      if (!worker_status.ok()) {
        worker_status = absl::Status(
            worker_status.code(),
            absl::StrCat("step ", t, ": ", worker_status.message()));
      }
      if (t == kKillAfter + 1) step_done_at = Clock::now();
      if (t == kKillAfter) {
        paused.Notify();
        resume.WaitForNotification();
      }
    }
    if (!paused.HasBeenNotified()) paused.Notify();
  });
  absl::Cleanup join = [&] {
    if (!resume.HasBeenNotified()) resume.Notify();
    worker.join();
  };

  paused.WaitForNotification();
  ASSERT_TRUE(worker_status.ok()) << worker_status;
  ASSERT_TRUE(run.Checkpoint(kVictim).ok());
  run.Kill(kVictim);
  const Clock::time_point killed_at = Clock::now();
  resume.Notify();
  // Down for longer than gRPC's default first reconnect backoff (1 s), so
  // that a channel that ignores the retry policy would show.
  std::this_thread::sleep_for(std::chrono::milliseconds(3000));
  ASSERT_TRUE(run.Start(kVictim).ok());
  const Clock::time_point back_at = Clock::now();
  std::move(join).Invoke();

  ASSERT_TRUE(worker_status.ok()) << worker_status;
  EXPECT_THAT(run.LastStderr(kVictim), HasSubstr("loaded checkpoint"));
  EXPECT_TRUE(SameBits(values, expected));
  EXPECT_TRUE(SameBits(PullAll(*client, "w", kN), expected));
  const auto ms = [](Clock::duration d) {
    return static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
  };
  RecordProperty("shard_down_ms", ms(back_at - killed_at));
  RecordProperty("step_after_kill_ms", ms(step_done_at - killed_at));
  // The client reaches the shard about as soon as its retry policy says
  // (waits of at most max_backoff, 300 ms + jitter), not after gRPC's own
  // reconnect backoff (1 s growing by 1.6x, so ~2 s late here).
  EXPECT_LT(ms(step_done_at - back_at), 1200);
}

// Kills at random moments, while pushes and checkpoints are in flight: the
// worker (SGD, lr 1, gradient -1, so each value counts the updates applied
// to its block) never sees an error, and no push is ever applied twice.
// Every answer of the killed shard is either one more than the last
// (normal), or at most the last (rolled back to a checkpoint, then applied).
TEST_F(RestartTest, WorkerRidesThroughKillsAtRandomMoments) {
  constexpr size_t kN = 64;
  constexpr uint32_t kVictim = 1;
  constexpr uint64_t kSteps = 400;
  constexpr int kKills = 3;
  ProcessCluster& run = NewCluster("run", 2, "sgd {} learning_rate: 1");
  ASSERT_TRUE(run.StartAll().ok());
  std::unique_ptr<Client> client = Connect(run, "worker");
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("w", {kN}).ok());
  const std::vector<uint64_t> victim_blocks = run.BlocksOf(kVictim, "w", kN);
  const std::vector<uint64_t> other_blocks = run.BlocksOf(1 - kVictim, "w", kN);
  ASSERT_FALSE(victim_blocks.empty());
  ASSERT_FALSE(other_blocks.empty());

  // The worker trains on its own thread, checking every answer; this one
  // checkpoints, kills and restarts (a child dies with the thread that
  // spawned it).
  std::atomic<bool> abandon{false};
  std::atomic<int> kills{0};
  absl::Notification worker_done;
  std::vector<float> values(kN);
  absl::Status worker_status;
  uint64_t rollbacks = 0;
  std::thread worker([&] {
    const std::vector<float> gradient(kN, -1.0f);
    std::vector<float> previous(kN, 0.0f);
    absl::Cleanup notify = [&] { worker_done.Notify(); };
    for (uint64_t t = 1; t <= kSteps && !abandon; ++t) {
      PushOptions options;
      options.step = t;
      worker_status = client->PushPull("w", gradient, values, options);
      if (!worker_status.ok()) break;
      for (uint64_t k : other_blocks) {
        const FlatRange range = run.plan().BlockRange(kN, k);
        for (uint64_t i = range.offset; i < range.offset + range.length; ++i) {
          ASSERT_EQ(values[i], static_cast<float>(t)) << "value " << i;
        }
      }
      for (uint64_t k : victim_blocks) {
        const FlatRange range = run.plan().BlockRange(kN, k);
        const float before = previous[range.offset];
        const float now = values[range.offset];
        ASSERT_TRUE(now == before + 1 || now <= before)
            << "step " << t << ", block " << k << ": " << before << " -> "
            << now << " (a push applied twice?)";
        if (now <= before) ++rollbacks;
        for (uint64_t i = range.offset; i < range.offset + range.length; ++i) {
          ASSERT_EQ(values[i], now);
        }
      }
      previous = values;
      // Pace the run so that it spans the kills.
      if (kills < kKills) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    }
  });
  absl::Cleanup stop = [&] {
    abandon = true;
    worker.join();
  };

  std::mt19937 rng(20240605);
  for (int k = 0; k < kKills; ++k) {
    const auto kill_at =
        Clock::now() + std::chrono::milliseconds(
                           std::uniform_int_distribution<>(150, 450)(rng));
    while (Clock::now() < kill_at) {
      ASSERT_TRUE(run.Checkpoint(kVictim).ok());
      std::this_thread::sleep_for(std::chrono::milliseconds(
          std::uniform_int_distribution<>(0, 20)(rng)));
    }
    run.Kill(kVictim);
    ++kills;
    std::this_thread::sleep_for(std::chrono::milliseconds(
        std::uniform_int_distribution<>(50, 300)(rng)));
    ASSERT_TRUE(run.Start(kVictim).ok());
  }
  EXPECT_TRUE(worker_done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  std::move(stop).Invoke();
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(worker_status.ok()) << worker_status;
  RecordProperty("rollbacks", static_cast<int>(rollbacks));

  // What the shard holds agrees with what the worker saw last.
  auto victim = run.PullShard(kVictim, "w", kN);
  ASSERT_TRUE(victim.ok()) << victim.status();
  for (size_t b = 0; b < victim_blocks.size(); ++b) {
    const FlatRange range = run.plan().BlockRange(kN, victim_blocks[b]);
    EXPECT_EQ(static_cast<float>(victim->versions[b]), values[range.offset]);
    EXPECT_LE(victim->versions[b], kSteps);
  }
}

// A push acknowledged before the checkpoint and retried raw, with the same
// (worker_id, seq), after kill -9 and restart: acknowledged, not applied
// again. One that came after the checkpoint was lost with the shard, and its
// retry is applied once.
TEST_F(RestartTest, RetriedPushAfterRestoreIsNotAppliedTwice) {
  constexpr size_t kN = 100;
  constexpr uint32_t kVictim = 1;
  ProcessCluster& run = NewCluster("run", 2, "sgd {} learning_rate: 1");
  ASSERT_TRUE(run.StartAll().ok());
  std::unique_ptr<Client> client = Connect(run, "setup");
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("w", {kN}).ok());
  const std::vector<float> minus_one(kN, -1.0f);
  const size_t owned = run.BlocksOf(kVictim, "w", kN).size();
  auto expect_values = [&](float value, uint64_t version) {
    auto pulled = run.PullShard(kVictim, "w", kN);
    ASSERT_TRUE(pulled.ok()) << pulled.status();
    EXPECT_THAT(pulled->values, ::testing::Each(value));
    EXPECT_EQ(pulled->versions, std::vector<uint64_t>(owned, version));
  };

  ASSERT_TRUE(run.PushShard(kVictim, "w", minus_one, "retrier", 7).ok());
  ASSERT_TRUE(run.PushShard(kVictim, "w", minus_one, "retrier", 7).ok());
  expect_values(1, 1);
  ASSERT_TRUE(run.Checkpoint(kVictim).ok());
  ASSERT_TRUE(run.PushShard(kVictim, "w", minus_one, "retrier", 8).ok());
  expect_values(2, 2);

  run.Kill(kVictim);
  ASSERT_TRUE(run.Start(kVictim).ok());
  expect_values(1, 1);

  grpc::Status retried = run.PushShard(kVictim, "w", minus_one, "retrier", 7);
  EXPECT_TRUE(retried.ok()) << retried.error_message();
  expect_values(1, 1);
  retried = run.PushShard(kVictim, "w", minus_one, "retrier", 8);
  EXPECT_TRUE(retried.ok()) << retried.error_message();
  expect_values(2, 2);
  retried = run.PushShard(kVictim, "w", minus_one, "retrier", 8);
  EXPECT_TRUE(retried.ok()) << retried.error_message();
  expect_values(2, 2);
}

// Sync mode: a step half aggregated when the checkpoint was taken (one of
// two workers has pushed) is not half kept across kill -9: the restarted
// shard goes back to the checkpoint's cut, before step 2, and closes the
// sessions it restored. The waiting push is refused (never acknowledged),
// each worker's next blocking push resumes (a new session, the values
// after step 1, the step counter at 2), and step 2 is then pushed again by
// both and applied once.
TEST_F(RestartTest, HalfAggregatedSyncStepIsRedoneAfterARestart) {
  constexpr size_t kN = 40;
  ProcessCluster& run = NewCluster("run", 1, "sgd {} learning_rate: 1");
  run.flags(0).extra = {"--consistency=sync", "--num_workers=2"};
  ASSERT_TRUE(run.StartAll().ok());
  std::unique_ptr<Client> a = Connect(run, "a");
  std::unique_ptr<Client> b = Connect(run, "b");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(a->CreateVariable("w", {kN}).ok());
  const std::vector<float> minus_one(kN, -1.0f), minus_three(kN, -3.0f);
  std::vector<float> values_a(kN), values_b(kN);
  PushOptions step;
  step.step = 1;
  {
    auto pending = a->PushPullAsync("w", minus_one, values_a, step);
    ASSERT_TRUE(b->PushPull("w", minus_three, values_b, step).ok());
    ASSERT_TRUE(pending.get().ok());
  }
  EXPECT_THAT(values_a, ::testing::Each(2.0f));  // 0 - mean(-1, -3)
  EXPECT_EQ(a->sync_step(), 2u);

  step.step = 2;
  auto pending = a->PushPullAsync("w", minus_one, values_a, step);
  // Until the server holds a's part, a checkpoint would not include it.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_EQ(pending.wait_for(std::chrono::seconds(0)),
            std::future_status::timeout);
  auto checkpoint = run.Checkpoint(0);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_TRUE(checkpoint->parts(0).sync_cut());
  EXPECT_EQ(checkpoint->parts(0).sync_step(), 2u);
  run.Kill(0);
  ASSERT_TRUE(run.Start(0).ok());
  const absl::Status a_status = pending.get();
  EXPECT_EQ(a_status.code(), absl::StatusCode::kFailedPrecondition) << a_status;
  EXPECT_THAT(std::string(a_status.message()),
              HasSubstr("rolled back to checkpoint"));

  // b's push meets the roll-back: it resumes instead of applying.
  ASSERT_TRUE(b->PushPull("w", minus_three, values_b, step).ok());
  EXPECT_THAT(values_b, ::testing::Each(2.0f));
  EXPECT_EQ(b->rollbacks(), 1u);
  EXPECT_EQ(b->resume_step(), 2u);
  EXPECT_EQ(b->sync_step(), 2u);
  ASSERT_TRUE(a->PushPull("w", minus_one, values_a).ok());
  EXPECT_THAT(values_a, ::testing::Each(2.0f));
  EXPECT_EQ(a->sync_step(), 2u);

  // Step 2 again, by both, from the client's step counter.
  auto again = a->PushPullAsync("w", minus_one, values_a, PushOptions());
  ASSERT_TRUE(b->PushPull("w", minus_three, values_b).ok());
  ASSERT_TRUE(again.get().ok());
  EXPECT_THAT(values_a, ::testing::Each(4.0f));
  EXPECT_THAT(values_b, ::testing::Each(4.0f));
  EXPECT_EQ(b->sync_step(), 3u);
  auto pulled = run.PullShard(0, "w", kN);
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_THAT(pulled->values, ::testing::Each(4.0f));
  EXPECT_THAT(pulled->versions, ::testing::Each(2u));

  // The step counter came back too: step 2 is over.
  PushOptions stale;
  stale.step = 2;
  EXPECT_EQ(b->Push("w", minus_three, stale).code(),
            absl::StatusCode::kAborted);
}

// Sync training through a shard killed and restored from an older
// checkpoint: the whole cluster goes back to it, and the workers, with the
// client's default retries and a loop that reads its step from the client
// (no code for the roll-back), redo the steps since and carry on to the
// end, every block applying every step once.
TEST_F(RestartTest, SyncWorkersCarryOnThroughAShardRestoredFromThePast) {
  constexpr size_t kN = 64;
  constexpr uint64_t kSteps = 30;
  ProcessCluster& run = NewCluster("run", 2, "sgd {} learning_rate: 0.01");
  for (uint32_t i = 0; i < 2; ++i) {
    run.flags(i).extra = {"--consistency=sync", "--num_workers=2"};
  }
  ASSERT_TRUE(run.StartAll().ok());
  std::atomic<uint64_t> done[2] = {0, 0};
  std::atomic<uint64_t> rollbacks[2] = {0, 0};
  absl::Status failures[2];
  // The workers wait before step 10 until a checkpoint was written, and
  // before step 20 until shard 1 has been killed and restarted from it.
  absl::Notification checkpointed, restarted;
  auto work = [&](int w) {
    ClientOptions options;
    options.addresses = run.addresses();
    options.worker_id = absl::StrCat("worker-", w);
    options.call_timeout = absl::Seconds(10);
    auto client = Client::Connect(options);  // default retry policy
    if (!client.ok()) {
      failures[w] = client.status();
      return;
    }
    if (auto created = (*client)->CreateVariable("w", {kN}); !created.ok()) {
      failures[w] = created.status();
      return;
    }
    std::vector<float> values(kN);
    while ((*client)->sync_step() < kSteps) {
      const uint64_t t = (*client)->sync_step();
      if (t == 10) {
        checkpointed.WaitForNotificationWithTimeout(absl::Seconds(60));
      }
      if (t == 20) restarted.WaitForNotificationWithTimeout(absl::Seconds(60));
      absl::Status status =
          (*client)->PushPull("w", Gradient(t, kN, 0.5f * w), values);
      if (!status.ok()) {
        failures[w] = absl::Status(
            status.code(), absl::StrCat("step ", t, ": ", status.message()));
        return;
      }
      done[w] = std::max(done[w].load(), (*client)->sync_step());
    }
    rollbacks[w] = (*client)->rollbacks();
  };
  auto reached = [&](uint64_t step) {
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while ((done[0] < step || done[1] < step) && absl::Now() < deadline &&
           failures[0].ok() && failures[1].ok()) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    return done[0] >= step && done[1] >= step;
  };
  std::thread a(work, 0), b(work, 1);
  const bool at_10 = reached(10);
  const bool written = at_10 && run.Checkpoint(1).ok();
  checkpointed.Notify();
  const bool at_20 = written && reached(20);
  if (at_20) {
    run.Kill(1);
    EXPECT_TRUE(run.Start(1).ok());
  }
  restarted.Notify();
  a.join();
  b.join();
  ASSERT_TRUE(at_20);
  EXPECT_TRUE(failures[0].ok()) << failures[0];
  EXPECT_TRUE(failures[1].ok()) << failures[1];
  EXPECT_EQ(done[0].load(), kSteps);
  EXPECT_EQ(done[1].load(), kSteps);
  EXPECT_EQ(rollbacks[0].load(), 1u);
  EXPECT_EQ(rollbacks[1].load(), 1u);
  for (uint32_t i = 0; i < 2; ++i) {
    auto kept = run.PullShard(i, "w", kN);
    ASSERT_TRUE(kept.ok()) << kept.status();
    EXPECT_THAT(kept->versions, ::testing::Each(kSteps)) << "shard " << i;
  }
  EXPECT_THAT(run.LastStderr(1), HasSubstr("the cluster went back to"));
}

// SIGTERM writes a final checkpoint; the next start loads it.
TEST_F(RestartTest, GracefulShutdownWritesAFinalCheckpoint) {
  constexpr size_t kN = 50;
  ProcessCluster& run = NewCluster("run", 1, "adam {} learning_rate: 0.1");
  ASSERT_TRUE(run.StartAll().ok());
  std::vector<float> before(kN);
  {
    std::unique_ptr<Client> client = Connect(run, "worker");
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->CreateVariable("w", {kN}).ok());
    for (uint64_t t = 1; t <= 3; ++t) {
      ASSERT_TRUE(client->PushPull("w", Gradient(t, kN, 0), before).ok());
    }
  }
  ASSERT_FALSE(fs::exists(run.checkpoint_dir(0)) &&
               !fs::is_empty(run.checkpoint_dir(0)));

  const std::optional<int> status = run.Terminate(0);
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << *status;
  EXPECT_THAT(run.LastStderr(0), HasSubstr("final checkpoint"));
  // One shard: its part and the cluster manifest that makes it count.
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(run.checkpoint_dir(0))) {
    names.push_back(entry.path().filename().string());
  }
  EXPECT_THAT(names, ::testing::UnorderedElementsAre(
                         "ckpt-00000000000000000001-shard-0-of-1",
                         "ckpt-00000000000000000001.cluster"));

  ASSERT_TRUE(run.Start(0).ok());
  EXPECT_THAT(run.LastStderr(0), HasSubstr("loaded checkpoint"));
  auto restored = run.PullShard(0, "w", kN);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_TRUE(SameBits(restored->values, before));
  EXPECT_THAT(restored->versions, ::testing::Each(3u));
}

}  // namespace
}  // namespace ps::durability
