// Cluster checkpoints with real ps_server processes: one folder shared by
// two shards, numbered for the cluster, listed, and restored after kill -9;
// a shard that went back alone says so; a checkpoint missing a part is
// skipped; a checkpoint restores into another number of shards.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "tests/durability/shard_process.h"

namespace ps::durability {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr uint64_t kBlockSize = 16;
constexpr size_t kSize = 200;
constexpr char kAdam[] = "adam {} learning_rate: 0.01";

std::vector<float> Gradient(uint64_t t) {
  std::vector<float> gradient(kSize);
  for (size_t i = 0; i < kSize; ++i) {
    gradient[i] =
        std::sin(0.37f * static_cast<float>(i) + 0.91f * static_cast<float>(t));
  }
  return gradient;
}

std::unique_ptr<Client> Connect(const ProcessCluster& cluster) {
  ClientOptions options;
  options.addresses = cluster.addresses();
  options.worker_id = "trainer";
  options.retry.max_attempts = 60;
  options.retry.initial_backoff = absl::Milliseconds(20);
  options.retry.max_backoff = absl::Milliseconds(300);
  options.call_timeout = absl::Seconds(10);
  auto client = Client::Connect(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

void Train(Client& client, uint64_t first, uint64_t last) {
  for (uint64_t t = first; t <= last; ++t) {
    const std::vector<float> gradient = Gradient(t);
    PushOptions options;
    options.step = t;
    ASSERT_TRUE(client.Push("w", gradient, options).ok());
  }
}

std::vector<float> PullAll(Client& client) {
  std::vector<float> values(kSize);
  EXPECT_TRUE(client.Pull("w", values).ok());
  return values;
}

absl::StatusOr<v1::Stats> Stats(ProcessCluster& cluster, uint32_t i) {
  auto context = MakeContext();
  v1::Stats stats;
  grpc::Status status =
      cluster.admin(i).GetStats(context.get(), v1::GetStatsRequest(), &stats);
  if (!status.ok()) return absl::UnavailableError(status.error_message());
  return stats;
}

class ClusterCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = MakeTempDir("cluster-ckpt");
    ASSERT_FALSE(root_.empty());
    shared_ = (fs::path(root_) / "shared").string();
  }
  void TearDown() override {
    clusters_.clear();
    std::error_code error;
    fs::remove_all(root_, error);
  }

  // Shards that all use the folder shared_.
  ProcessCluster& NewCluster(const std::string& name, uint32_t num_shards,
                             uint64_t block_size = kBlockSize) {
    const std::string dir = (fs::path(root_) / name).string();
    fs::create_directories(dir);
    clusters_.push_back(
        std::make_unique<ProcessCluster>(dir, num_shards, block_size, kAdam));
    for (uint32_t i = 0; i < num_shards; ++i) {
      clusters_.back()->flags(i).checkpoint_dir = shared_;
    }
    return *clusters_.back();
  }

  std::vector<std::string> Entries() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(shared_)) {
      names.push_back(entry.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  std::string root_;
  std::string shared_;
  std::vector<std::unique_ptr<ProcessCluster>> clusters_;
};

TEST_F(ClusterCheckpointTest, SharedFolderKillAndRestartOneShard) {
  ProcessCluster& run = NewCluster("run", 2);
  ASSERT_TRUE(run.StartAll().ok());
  auto client = Connect(run);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("w", {kSize}).ok());
  Train(*client, 1, 5);
  const std::vector<float> at_checkpoint = PullAll(*client);

  auto written = run.Checkpoint(0);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(written->number(), 1u);
  ASSERT_EQ(written->parts_size(), 2);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(written->parts(i).shard_index(), static_cast<uint32_t>(i));
    EXPECT_GT(written->parts(i).bytes(), 0u);
    EXPECT_THAT(written->parts(i).path(),
                HasSubstr(absl::StrCat("ckpt-00000000000000000001-shard-", i,
                                       "-of-2")));
  }
  EXPECT_EQ(written->bytes(),
            written->parts(0).bytes() + written->parts(1).bytes());
  EXPECT_GE(written->cut_spread_seconds(), 0.0);
  // The next is 2 on every shard; each part beside the other's.
  auto second = run.Checkpoint(0);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->number(), 2u);
  EXPECT_THAT(Entries(),
              ::testing::IsSupersetOf({"ckpt-00000000000000000002-shard-0-of-2",
                                       "ckpt-00000000000000000002-shard-1-of-2",
                                       "ckpt-00000000000000000002.cluster"}));
  // Only shard 0 coordinates.
  auto context = MakeContext();
  v1::CheckpointResponse refused;
  EXPECT_EQ(run.admin(1)
                .Checkpoint(context.get(), v1::CheckpointRequest(), &refused)
                .error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  // A hostile part number is refused; nothing is written.
  context = MakeContext();
  v1::WriteCheckpointPartRequest bad;
  bad.set_number(~uint64_t{0});
  v1::CheckpointPart part;
  EXPECT_EQ(
      run.admin(1).WriteCheckpointPart(context.get(), bad, &part).error_code(),
      grpc::StatusCode::INVALID_ARGUMENT);
  context = MakeContext();
  v1::CommitCheckpointRequest forged;
  forged.set_number(9);
  forged.set_block_size(kBlockSize);
  forged.add_parts();
  v1::CommitCheckpointResponse committed;
  EXPECT_EQ(run.admin(1)
                .CommitCheckpoint(context.get(), forged, &committed)
                .error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  context = MakeContext();
  v1::ListCheckpointsResponse listed;
  ASSERT_TRUE(
      run.admin(0)
          .ListCheckpoints(context.get(), v1::ListCheckpointsRequest(), &listed)
          .ok());
  ASSERT_EQ(listed.checkpoints_size(), 2);
  EXPECT_EQ(listed.checkpoints(0).number(), 2u);
  EXPECT_EQ(listed.checkpoints(1).number(), 1u);

  // The others go on; shard 1 is killed and comes back at checkpoint 2.
  Train(*client, 6, 9);
  run.Kill(1);
  ASSERT_TRUE(run.Start(1).ok());
  EXPECT_THAT(run.LastStderr(1), HasSubstr("loaded checkpoint 2"));
  EXPECT_THAT(run.LastStderr(1), HasSubstr("went back to checkpoint 2"));
  auto stats = Stats(run, 1);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->restored_checkpoint(), 2u);
  EXPECT_EQ(stats->rolled_back(), 1u);
  auto others = Stats(run, 0);
  ASSERT_TRUE(others.ok());
  EXPECT_EQ(others->rolled_back(), 0u);

  // Shard 1's values are the checkpointed ones; shard 0's went on.
  const std::vector<float> now = PullAll(*client);
  const PartitionPlan& plan = run.plan();
  for (uint64_t k = 0; k < plan.NumBlocks(kSize); ++k) {
    const FlatRange range = plan.BlockRange(kSize, k);
    for (uint64_t j = range.offset; j < range.offset + range.length; ++j) {
      if (plan.ShardOf("w", k) == 1) {
        EXPECT_EQ(now[j], at_checkpoint[j]) << j;
      } else {
        EXPECT_NE(now[j], at_checkpoint[j]) << j;
      }
    }
  }
  // The cluster resumes.
  Train(*client, 10, 11);
  EXPECT_NE(PullAll(*client), now);
}

TEST_F(ClusterCheckpointTest, MissingPartIsSkippedAndOtherShapesRestore) {
  ProcessCluster& two = NewCluster("two", 2);
  ASSERT_TRUE(two.StartAll().ok());
  auto client = Connect(two);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("w", {kSize}).ok());
  Train(*client, 1, 3);
  ASSERT_TRUE(two.Checkpoint(0).ok());
  const std::vector<float> at_1 = PullAll(*client);
  Train(*client, 4, 6);
  ASSERT_TRUE(two.Checkpoint(0).ok());
  client.reset();
  two.Kill(0);
  two.Kill(1);
  fs::remove_all(fs::path(shared_) / "ckpt-00000000000000000002-shard-1-of-2");

  // Three shards of another block_size, from the same folder.
  ProcessCluster& three = NewCluster("three", 3, 8);
  ASSERT_TRUE(three.StartAll().ok());
  for (uint32_t i = 0; i < 3; ++i) {
    const std::string log = three.LastStderr(i);
    EXPECT_THAT(log, HasSubstr("skipping checkpoint 2"));
    EXPECT_THAT(log, HasSubstr("ckpt-00000000000000000002-shard-1-of-2"));
    EXPECT_THAT(log, HasSubstr("re-sharded checkpoint 1 from 2 shards"));
  }
  client = Connect(three);
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(PullAll(*client), at_1);
  Train(*client, 4, 5);
  EXPECT_NE(PullAll(*client), at_1);
}

}  // namespace
}  // namespace ps::durability
