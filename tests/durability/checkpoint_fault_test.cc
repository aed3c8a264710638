// Damage to checkpoints with real ps_server processes: kill -9 while
// checkpoints are written, flipped bytes and missing files, and a folder
// made with another shard layout.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "tests/durability/shard_process.h"

namespace ps::durability {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kSgd[] = "sgd {} learning_rate: 1";

class CheckpointFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = MakeTempDir("ckpt-fault");
    ASSERT_FALSE(root_.empty());
  }
  void TearDown() override {
    cluster_.reset();  // kills every child
    std::error_code error;
    fs::remove_all(root_, error);
  }

  ProcessCluster& NewCluster(uint32_t num_shards, uint64_t block_size) {
    cluster_ =
        std::make_unique<ProcessCluster>(root_, num_shards, block_size, kSgd);
    return *cluster_;
  }

  std::string root_;
  std::unique_ptr<ProcessCluster> cluster_;
};

std::unique_ptr<Client> Connect(const ProcessCluster& cluster) {
  ClientOptions options;
  options.addresses = cluster.addresses();
  options.worker_id = "setup";
  auto client = Client::Connect(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

// The complete checkpoint parts in a shard's folder, oldest first.
std::vector<fs::path> CheckpointFolders(const std::string& dir) {
  std::vector<fs::path> folders;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("ckpt-", 0) == 0 &&
        name.find("-shard-") != std::string::npos &&
        name.find(".tmp") == std::string::npos) {
      folders.push_back(entry.path());
    }
  }
  std::sort(folders.begin(), folders.end());
  return folders;
}

// With SGD, lr 1 and gradient -(1 + i % 7), value i after s steps is
// s * (1 + i % 7): the values name the step.
float Pattern(size_t i) { return 1.0f + static_cast<float>(i % 7); }

std::vector<float> PatternGradient(size_t n) {
  std::vector<float> gradient(n);
  for (size_t i = 0; i < n; ++i) gradient[i] = -Pattern(i);
  return gradient;
}

// Creates "w" of `n` values on the running cluster; with `push`, pushes
// PatternGradient(n) to it once.
void CreateW(const ProcessCluster& cluster, size_t n, bool push = false) {
  std::unique_ptr<Client> client = Connect(cluster);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("w", {n}).ok());
  if (push) {
    ASSERT_TRUE(client->Push("w", PatternGradient(n)).ok());
  }
}

// The step that every block of `pulled` is at, checking that each value
// matches it; fails the test and returns -1 when they disagree.
int64_t UniformStep(const Values& pulled) {
  if (pulled.versions.empty()) return -1;
  const uint64_t step = pulled.versions.front();
  for (uint64_t version : pulled.versions) {
    if (version != step) {
      ADD_FAILURE() << "blocks at versions " << step << " and " << version;
      return -1;
    }
  }
  for (size_t i = 0; i < pulled.values.size(); ++i) {
    const uint64_t flat = pulled.flat_index[i];
    if (pulled.values[i] != static_cast<float>(step) * Pattern(flat)) {
      ADD_FAILURE() << "value " << flat << " is " << pulled.values[i]
                    << ", not that of step " << step;
      return -1;
    }
  }
  return static_cast<int64_t>(step);
}

// kill -9 at random moments of a loop of push, checkpoint, push, checkpoint
// ...: every restart serves the state of a complete checkpoint, the newest
// one acknowledged or the one in flight at the kill.
TEST_F(CheckpointFaultTest, KillDuringCheckpointWritesAlwaysLeavesOneLoadable) {
  // 4 MiB of values, so that each checkpoint takes some milliseconds.
  constexpr size_t kN = size_t{1} << 20;
  constexpr int kKills = 15;
  ProcessCluster& cluster = NewCluster(1, 65536);
  cluster.flags(0).checkpoint_keep = 2;
  ASSERT_TRUE(cluster.StartAll().ok());
  ASSERT_NO_FATAL_FAILURE(CreateW(cluster, kN));
  ASSERT_TRUE(cluster.Checkpoint(0).ok());
  const std::vector<float> gradient = PatternGradient(kN);

  std::mt19937 rng(7);
  uint64_t seq = 0;
  int64_t step = 0;
  int during_checkpoint = 0;
  std::vector<double> checkpoint_ms;
  // Kills land 20 to 200 ms into the loop; after a round in which the loop
  // completed no checkpoint (each takes longer under a sanitizer or on a
  // loaded machine), twice as late, up to 32 times.
  int kill_later = 1;
  for (int kill = 0; kill < kKills; ++kill) {
    // What the loop has done: the step of the newest acknowledged checkpoint
    // and of the newest requested one (one more while one is in flight).
    std::atomic<int64_t> acknowledged{step}, requested{step};
    std::atomic<bool> failed{false};
    std::thread loop([&, next = step]() mutable {
      while (true) {
        if (!cluster.PushShard(0, "w", gradient, "looper", ++seq).ok()) break;
        ++next;
        requested = next;
        const auto start = Clock::now();
        auto written = cluster.Checkpoint(0);
        if (!written.ok()) break;
        checkpoint_ms.push_back(
            std::chrono::duration<double, std::milli>(Clock::now() - start)
                .count());
        acknowledged = next;
      }
      failed = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(
        kill_later * std::uniform_int_distribution<>(20, 200)(rng)));
    cluster.Kill(0);
    loop.join();
    ASSERT_TRUE(failed);
    if (acknowledged == step) kill_later = std::min(2 * kill_later, 32);
    if (requested != acknowledged) ++during_checkpoint;

    ASSERT_TRUE(cluster.Start(0).ok()) << "after kill " << kill;
    const std::string log = cluster.LastStderr(0);
    EXPECT_THAT(log, HasSubstr("loaded checkpoint"));
    EXPECT_THAT(log, Not(HasSubstr("skipping checkpoint")));
    auto pulled = cluster.PullShard(0, "w", kN);
    ASSERT_TRUE(pulled.ok()) << pulled.status();
    step = UniformStep(*pulled);
    ASSERT_GE(step, 0);
    EXPECT_TRUE(step == acknowledged || step == requested)
        << "kill " << kill << ": restored step " << step << ", acknowledged "
        << acknowledged << ", requested " << requested;
  }
  // A kill between a checkpoint's rename and the pruning of old ones leaves
  // extra folders; the next complete checkpoint prunes down to `keep`.
  ASSERT_TRUE(cluster.Checkpoint(0).ok());
  EXPECT_EQ(CheckpointFolders(cluster.checkpoint_dir(0)).size(), 2u);
  for (const auto& entry : fs::directory_iterator(cluster.checkpoint_dir(0))) {
    EXPECT_THAT(entry.path().filename().string(), Not(HasSubstr(".tmp")));
  }
  std::sort(checkpoint_ms.begin(), checkpoint_ms.end());
  ASSERT_FALSE(checkpoint_ms.empty());
  RecordProperty("kills_during_checkpoint", during_checkpoint);
  RecordProperty("checkpoints", static_cast<int>(checkpoint_ms.size()));
  RecordProperty(
      "median_checkpoint_us",
      static_cast<int>(1000 * checkpoint_ms[checkpoint_ms.size() / 2]));
  // Most of the loop's time is spent writing checkpoints, so some kills must
  // have landed in one.
  EXPECT_GT(during_checkpoint, 0);
}

enum class Damage { kFlipBlocks, kFlipManifest, kFlipState, kDropBlocks };

struct DamageCase {
  Damage damage;
  const char* name;
  const char* reason;  // in the warning
};

void PrintTo(const DamageCase& c, std::ostream* os) { *os << c.name; }

class CorruptCheckpointTest : public CheckpointFaultTest,
                              public ::testing::WithParamInterface<DamageCase> {
};

void FlipByteInTheMiddle(const fs::path& file) {
  std::fstream stream(file, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(stream.is_open()) << file;
  const auto size = static_cast<std::streamoff>(fs::file_size(file));
  ASSERT_GT(size, 8);
  stream.seekg(size / 2);
  char byte = 0;
  stream.read(&byte, 1);
  byte = static_cast<char>(byte ^ 0x5a);
  stream.seekp(size / 2);
  stream.write(&byte, 1);
  ASSERT_TRUE(stream.good());
}

// A damaged newest checkpoint is skipped with a warning naming it and why,
// and the one before loads; later checkpoints go on from there.
TEST_P(CorruptCheckpointTest, NewestIsSkippedAndThePreviousLoads) {
  constexpr size_t kN = 40;
  ProcessCluster& cluster = NewCluster(1, 16);
  ASSERT_TRUE(cluster.StartAll().ok());
  ASSERT_NO_FATAL_FAILURE(CreateW(cluster, kN));
  const std::vector<float> gradient = PatternGradient(kN);
  ASSERT_TRUE(cluster.PushShard(0, "w", gradient, "worker", 1).ok());
  auto previous = cluster.Checkpoint(0);
  ASSERT_TRUE(previous.ok()) << previous.status();
  ASSERT_TRUE(cluster.PushShard(0, "w", gradient, "worker", 2).ok());
  auto newest = cluster.Checkpoint(0);
  ASSERT_TRUE(newest.ok()) << newest.status();
  cluster.Kill(0);

  const fs::path folder(newest->path());
  switch (GetParam().damage) {
    case Damage::kFlipBlocks:
      FlipByteInTheMiddle(folder / "blocks.bin");
      break;
    case Damage::kFlipManifest:
      FlipByteInTheMiddle(folder / "MANIFEST");
      break;
    case Damage::kFlipState:
      FlipByteInTheMiddle(folder / "state.pb");
      break;
    case Damage::kDropBlocks:
      fs::remove(folder / "blocks.bin");
      break;
  }
  ASSERT_FALSE(HasFailure());

  ASSERT_TRUE(cluster.Start(0).ok());
  const std::string log = cluster.LastStderr(0);
  EXPECT_THAT(log, HasSubstr(absl::StrCat("skipping checkpoint ",
                                          newest->number(), " in ")));
  EXPECT_THAT(log, HasSubstr(absl::StrCat("its part ",
                                          folder.filename().string(), " ")));
  EXPECT_THAT(log, HasSubstr(GetParam().reason));
  EXPECT_THAT(log,
              HasSubstr(absl::StrCat("loaded checkpoint ", previous->number(),
                                     " from ", previous->path())));
  auto pulled = cluster.PullShard(0, "w", kN);
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(UniformStep(*pulled), 1);

  // Training goes on from the previous checkpoint, and the next checkpoint
  // is the one a restart loads, not the damaged one.
  ASSERT_TRUE(cluster.PushShard(0, "w", gradient, "worker", 3).ok());
  auto next = cluster.Checkpoint(0);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_GT(next->path(), newest->path());
  cluster.Kill(0);
  ASSERT_TRUE(cluster.Start(0).ok());
  EXPECT_THAT(cluster.LastStderr(0),
              HasSubstr(absl::StrCat("loaded checkpoint ", next->number(),
                                     " from ", next->path())));
  pulled = cluster.PullShard(0, "w", kN);
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(UniformStep(*pulled), 2);
}

INSTANTIATE_TEST_SUITE_P(
    Damages, CorruptCheckpointTest,
    ::testing::Values(DamageCase{Damage::kFlipBlocks, "FlippedByteInBlocks",
                                 "blocks.bin fails its checksum"},
                      DamageCase{Damage::kFlipManifest, "FlippedByteInManifest",
                                 "MANIFEST fails its checksum"},
                      DamageCase{Damage::kFlipState, "FlippedByteInState",
                                 "state.pb fails its checksum"},
                      DamageCase{Damage::kDropBlocks, "MissingBlocks",
                                 "blocks.bin: No such file"}),
    [](const ::testing::TestParamInfo<DamageCase>& info) {
      return std::string(info.param.name);
    });

// Refused starts: another shape needs every part, which per-shard folders
// do not hold: the process exits non-zero with one line on stderr naming
// both the checkpoint's value and the flag's; the checkpoint is untouched.
TEST_F(CheckpointFaultTest, CheckpointOfAnotherLayoutIsRefused) {
  constexpr size_t kN = 100;
  ProcessCluster& cluster = NewCluster(2, 16);
  ASSERT_TRUE(cluster.StartAll().ok());
  ASSERT_NO_FATAL_FAILURE(CreateW(cluster, kN, /*push=*/true));
  ASSERT_TRUE(cluster.Checkpoint(0).ok());
  cluster.Kill(0);

  struct Case {
    uint32_t num_shards;
    uint64_t block_size;
    std::vector<std::string> named;
  };
  const Case cases[] = {
      {3, 16, {"num_shards=2", "num_shards=3"}},
      {2, 32, {"block_size=16", "block_size=32"}},
      {1,
       64,
       {"num_shards=2", "num_shards=1", "block_size=16", "block_size=64"}},
  };
  int n = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrCat("num_shards=", c.num_shards,
                              " block_size=", c.block_size));
    ShardFlags flags = cluster.flags(0);
    flags.num_shards = c.num_shards;
    flags.block_size = c.block_size;
    const std::string stderr_path =
        (fs::path(root_) / absl::StrCat("refused", ++n, ".stderr")).string();
    auto process = ShardProcess::Spawn(flags, 0, stderr_path);
    ASSERT_NE(process, nullptr);
    EXPECT_FALSE(process->WaitListening(kStartTimeout).has_value());
    const std::optional<int> status = process->WaitForExit(kExitTimeout);
    ASSERT_TRUE(status.has_value()) << "still running";
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) != 0) << *status;
    const std::string log = process->StderrText();
    const std::vector<std::string> lines =
        absl::StrSplit(log, '\n', absl::SkipEmpty());
    EXPECT_EQ(lines.size(), 1u) << log;
    for (const std::string& value : c.named) {
      EXPECT_THAT(log, HasSubstr(value));
    }
  }

  ASSERT_TRUE(cluster.Start(0).ok());
  auto pulled = cluster.PullShard(0, "w", kN);
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(UniformStep(*pulled), 1);
}

// When every checkpoint is damaged the shard refuses to start rather than
// silently starting empty, and says how to start empty on purpose.
TEST_F(CheckpointFaultTest, AllCheckpointsDamagedRefusesToStart) {
  constexpr size_t kN = 40;
  ProcessCluster& cluster = NewCluster(1, 16);
  ASSERT_TRUE(cluster.StartAll().ok());
  ASSERT_NO_FATAL_FAILURE(CreateW(cluster, kN));
  ASSERT_TRUE(cluster.PushShard(0, "w", PatternGradient(kN), "worker", 1).ok());
  auto only = cluster.Checkpoint(0);
  ASSERT_TRUE(only.ok()) << only.status();
  cluster.Kill(0);
  FlipByteInTheMiddle(fs::path(only->path()) / "blocks.bin");
  ASSERT_FALSE(HasFailure());

  const std::string stderr_path =
      (fs::path(root_) / "all_damaged.stderr").string();
  auto process = ShardProcess::Spawn(cluster.flags(0), 0, stderr_path);
  ASSERT_NE(process, nullptr);
  EXPECT_FALSE(process->WaitListening(kStartTimeout).has_value());
  const std::optional<int> status = process->WaitForExit(kExitTimeout);
  ASSERT_TRUE(status.has_value()) << "still running";
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) != 0) << *status;
  const std::string log = process->StderrText();
  EXPECT_THAT(log, HasSubstr(absl::StrCat("skipping checkpoint ",
                                          only->number(), " in ")));
  EXPECT_THAT(log, HasSubstr(fs::path(only->path()).filename().string()));
  EXPECT_THAT(log, HasSubstr("can be loaded"));
  EXPECT_THAT(log, HasSubstr("move them aside"));
}

// A folder the shard cannot write stops it at start-up, before it takes a
// push that its next restart would lose.
TEST_F(CheckpointFaultTest, AFolderThatCannotBeWrittenStopsTheStart) {
  ProcessCluster& cluster = NewCluster(1, 16);
  // Under a regular file: no process can create it, root included.
  const fs::path file = fs::path(root_) / "a-file";
  std::ofstream(file) << "not a folder";
  cluster.flags(0).checkpoint_dir = (file / "ckpt").string();
  const std::string stderr_path =
      (fs::path(root_) / "unwritable.stderr").string();
  auto process = ShardProcess::Spawn(cluster.flags(0), 0, stderr_path);
  ASSERT_NE(process, nullptr);
  EXPECT_FALSE(process->WaitListening(kStartTimeout).has_value());
  const std::optional<int> status = process->WaitForExit(kExitTimeout);
  ASSERT_TRUE(status.has_value()) << "still running";
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) != 0) << *status;
  EXPECT_THAT(
      process->StderrText(),
      HasSubstr(absl::StrCat("checkpoint folder ", (file / "ckpt").string(),
                             " cannot be used")));
}

// SIGTERM whose final checkpoint fails (the folder went away, as a volume
// can) exits non-zero, saying that pushes were lost.
TEST_F(CheckpointFaultTest, AFailedFinalCheckpointExitsNonZero) {
  constexpr size_t kN = 40;
  ProcessCluster& cluster = NewCluster(1, 16);
  ASSERT_TRUE(cluster.StartAll().ok());
  ASSERT_NO_FATAL_FAILURE(CreateW(cluster, kN, /*push=*/true));
  const fs::path dir = cluster.checkpoint_dir(0);
  fs::remove_all(dir);
  std::ofstream(dir) << "not a folder any more";
  const std::optional<int> status = cluster.Terminate(0);
  ASSERT_TRUE(status.has_value()) << "hung";
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 1) << *status;
  EXPECT_THAT(cluster.LastStderr(0),
              HasSubstr("final checkpoint failed, so the pushes since the "
                        "last complete one are lost"));
}

}  // namespace
}  // namespace ps::durability
