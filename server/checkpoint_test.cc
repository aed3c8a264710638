#include "server/checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/optimizer_config.h"
#include "server/store_impl.h"
#include "tests/server/fault_env.h"
#include "tests/server/messages.h"
#include "tests/server/store_driver.h"

namespace ps {
namespace {

namespace fs = std::filesystem;
using ::ps::testutil::CreateRequest;
using ::ps::testutil::FaultEnv;
using ::ps::testutil::MakeSlice;
using ::ps::testutil::PushNow;
using ::ps::testutil::PushRequest;
using ::ps::testutil::StartPush;

v1::OptimizerConfig Optimizer(const std::string& text) {
  auto config = ParseOptimizerConfig(text);
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : v1::OptimizerConfig();
}

StoreOptions Options(const std::string& optimizer, bool sync = false) {
  StoreOptions options;
  options.block_size = 4;
  options.default_optimizer = Optimizer(optimizer);
  options.sync = sync;
  options.num_workers = sync ? 2 : 0;
  options.quorum = options.num_workers;
  return options;
}

// Everything one block holds, for exact comparison.
struct BlockDump {
  std::vector<float> values;
  uint64_t step = 0;
  std::vector<float> momentum, square_avg, grad_avg, max_square_avg;
  double eve_d = 0, eve_f_hat = 0;
  bool eve_started = false;
  bool sync_started = false;
  uint64_t sync_next_step = 0;
  std::vector<float> sync_sum;
  std::vector<std::string> sync_workers;
  double sync_loss_sum = 0;
  uint32_t sync_losses = 0;
  std::vector<std::tuple<std::string, uint64_t, uint64_t, uint64_t>> applied;

  auto Tie() const {
    return std::tie(values, step, momentum, square_avg, grad_avg,
                    max_square_avg, eve_d, eve_f_hat, eve_started, sync_started,
                    sync_next_step, sync_sum, sync_workers, sync_loss_sum,
                    sync_losses, applied);
  }
  bool operator==(const BlockDump& other) const { return Tie() == other.Tie(); }
  friend std::ostream& operator<<(std::ostream& os, const BlockDump& b) {
    return os << "{values [" << absl::StrJoin(b.values, ",") << "] step "
              << b.step << " slots " << b.momentum.size() << "/"
              << b.square_avg.size() << "/" << b.grad_avg.size() << "/"
              << b.max_square_avg.size() << " sync " << b.sync_started << "@"
              << b.sync_next_step << " sum " << b.sync_sum.size() << " workers "
              << b.sync_workers.size() << " applied " << b.applied.size()
              << "}";
  }
};

// (variable, block index) -> what the block holds, plus each variable's
// optimizer as ListVariables reports it.
struct StoreDump {
  std::map<std::pair<std::string, uint64_t>, BlockDump> blocks;
  std::map<std::string, std::string> optimizers;
};

StoreDump Dump(const VariableStore& store) {
  StoreDump dump;
  for (const std::string& name : store.VariableNames()) {
    auto variable = store.Find(name);
    for (Block* block : variable->SortedBlocks()) {
      absl::ReaderMutexLock lock(&block->mu);
      BlockDump& b = dump.blocks[{name, block->index}];
      b.values = block->values;
      const optimizer::BlockOptimizerState& state = block->state;
      b.step = state.step;
      b.momentum = state.momentum;
      b.square_avg = state.square_avg;
      b.grad_avg = state.grad_avg;
      b.max_square_avg = state.max_square_avg;
      b.eve_d = state.eve.d;
      b.eve_f_hat = state.eve.f_hat;
      b.eve_started = state.eve.started;
      b.sync_started = block->sync.started;
      b.sync_next_step = block->sync.next_step;
      b.sync_sum = block->sync.sum;
      b.sync_workers.assign(block->sync.workers.begin(),
                            block->sync.workers.end());
      std::sort(b.sync_workers.begin(), b.sync_workers.end());
      b.sync_loss_sum = block->sync.loss_sum;
      b.sync_losses = block->sync.losses;
      for (const auto& [worker, seqs] : block->applied) {
        b.applied.emplace_back(worker, seqs.epoch, seqs.seqs.highest(),
                               seqs.seqs.window());
      }
      std::sort(b.applied.begin(), b.applied.end());
    }
  }
  const v1::ListVariablesResponse listed = store.ListVariables();
  for (const v1::VariableInfo& info : listed.variables()) {
    dump.optimizers[info.name()] =
        absl::StrCat(info.optimizer_override() ? "own " : "default ",
                     OptimizerConfigToText(info.optimizer()));
  }
  return dump;
}

// Pushes `gradient` (the same to every block) to every block of `name`.
void PushAll(VariableStore& store, const std::string& name,
             const std::string& worker, uint64_t seq, float gradient) {
  auto variable = store.Find(name);
  ASSERT_NE(variable, nullptr);
  std::vector<v1::Slice> slices;
  for (Block* block : variable->SortedBlocks()) {
    slices.push_back(
        MakeSlice(name, block->range.offset,
                  std::vector<float>(block->range.length,
                                     gradient + 0.25f * block->index)));
  }
  v1::PushRequest request = PushRequest(worker, seq, slices);
  request.set_loss(2.0);
  auto result = PushNow(store, request, /*with_values=*/false);
  ASSERT_TRUE(result->status.ok()) << result->status;
}

class CheckpointRoundTripTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           absl::StrCat(
               "checkpoint_test_",
               ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes a checkpoint of `store`, loads it into a fresh store made with
  // `options`, and returns that store.
  std::unique_ptr<VariableStore> RoundTrip(VariableStore& store,
                                           const StoreOptions& options) {
    Checkpointer writer({dir_.string(), 3}, &store);
    auto written = writer.Write();
    EXPECT_TRUE(written.ok()) << written.status();
    auto restored = std::make_unique<VariableStore>(options);
    Checkpointer reader({dir_.string(), 3}, restored.get());
    auto loaded = reader.LoadNewest();
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return restored;
  }

  fs::path dir_;
};

// Blocks are read one after another; each must come back as it was written,
// whatever the block before it held (another rule's slots, another size, an
// Eve feedback, an exactly-once record).
TEST_F(CheckpointRoundTripTest, MixedRulesSizesAndUnpushedVariables) {
  const StoreOptions options = Options("adam {} learning_rate: 0.1");
  VariableStore store(options);
  // Created in an order whose names sort differently, each with its own
  // shape; "c" and "f" are never pushed.
  auto create = [&](const std::string& name, uint64_t size,
                    const std::string& optimizer) {
    v1::CreateVariableRequest request = CreateRequest(name, {size});
    if (!optimizer.empty()) *request.mutable_optimizer() = Optimizer(optimizer);
    auto created = store.CreateVariable(request);
    ASSERT_TRUE(created.ok()) << created.status();
  };
  create("a", 10, "adam { amsgrad: true }");
  create("b", 6, "sgd {}");
  create("c", 7, "");
  create("d", 12, "rmsprop { centered: true momentum: 0.9 }");
  create("e", 4, "eve {}");
  create("f", 9, "momentum {}");
  create("g", 8, "");
  PushAll(store, "a", "w1", 1, 0.5f);
  PushAll(store, "a", "w1", 2, -0.5f);
  PushAll(store, "b", "", 0, 1.0f);
  PushAll(store, "d", "w2", 7, 0.3f);
  PushAll(store, "e", "w1", 3, 0.7f);
  PushAll(store, "g", "w3", 1, 0.1f);

  auto restored = RoundTrip(store, options);
  const StoreDump before = Dump(store);
  const StoreDump after = Dump(*restored);
  EXPECT_EQ(after.optimizers, before.optimizers);
  ASSERT_EQ(after.blocks.size(), before.blocks.size());
  for (const auto& [key, block] : before.blocks) {
    EXPECT_EQ(after.blocks.at(key), block)
        << "block " << key.second << " of '" << key.first << "'";
  }
  EXPECT_EQ(restored->StateBytes(), store.StateBytes());

  // Training goes on from the same state on both.
  PushAll(store, "c", "w1", 4, 1.0f);
  PushAll(*restored, "c", "w1", 4, 1.0f);
  PushAll(store, "b", "w3", 2, 1.0f);
  PushAll(*restored, "b", "w3", 2, 1.0f);
  EXPECT_EQ(Dump(*restored).blocks, Dump(store).blocks);
}

// A step being collected in sync mode comes back for its own blocks only.
TEST_F(CheckpointRoundTripTest, SyncStepMidwayAndExactlyOnceRecords) {
  const StoreOptions options = Options("sgd {} learning_rate: 1", true);
  VariableStore store(options);
  ASSERT_TRUE(store.CreateVariable(CreateRequest("a", {8})).ok());
  ASSERT_TRUE(store.CreateVariable(CreateRequest("b", {8})).ok());
  // Step 0 of "a" has one of its two pushes; "b" has none.
  auto waiting =
      StartPush(store, PushRequest("w1", 5,
                                   {MakeSlice("a", 0, {1, 2, 3, 4}),
                                    MakeSlice("a", 4, {5, 6, 7, 8})}));
  ASSERT_FALSE(waiting->done.HasBeenNotified());

  auto restored = RoundTrip(store, options);
  EXPECT_EQ(Dump(*restored).blocks, Dump(store).blocks);

  // On the restored store, w1's seq 5 is a repeat for "a" only: "b" applies
  // it, and w2's push completes "a"'s step with the mean of both.
  auto b_push =
      StartPush(*restored, PushRequest("w1", 5,
                                       {MakeSlice("b", 0, {1, 1, 1, 1}),
                                        MakeSlice("b", 4, {1, 1, 1, 1})}));
  auto b_other =
      StartPush(*restored, PushRequest("w2", 1,
                                       {MakeSlice("b", 0, {1, 1, 1, 1}),
                                        MakeSlice("b", 4, {1, 1, 1, 1})}));
  ASSERT_TRUE(b_other->WaitFor());
  EXPECT_TRUE(b_push->WaitFor());
  EXPECT_TRUE(b_push->status.ok()) << b_push->status;
  auto a_other =
      StartPush(*restored, PushRequest("w2", 2,
                                       {MakeSlice("a", 0, {3, 2, 1, 0}),
                                        MakeSlice("a", 4, {3, 2, 1, 0})}));
  ASSERT_TRUE(a_other->WaitFor());
  ASSERT_TRUE(a_other->status.ok()) << a_other->status;
  const StoreDump after = Dump(*restored);
  EXPECT_THAT(after.blocks.at({"a", 0}).values,
              ::testing::ElementsAre(-2, -2, -2, -2));
  EXPECT_THAT(after.blocks.at({"b", 1}).values,
              ::testing::ElementsAre(-1, -1, -1, -1));
  EXPECT_EQ(after.blocks.at({"b", 0}).step, 1u);
}

// Sessions come back with the checkpoint: a worker's older session stays
// fenced after a restart, and the sync step is where it was.
TEST_F(CheckpointRoundTripTest, SessionsAndTheSyncStepComeBack) {
  const StoreOptions options = Options("sgd {} learning_rate: 1", true);
  VariableStore store(options);
  ASSERT_TRUE(store.CreateVariable(CreateRequest("a", {4})).ok());
  const uint64_t old_epoch = store.OpenSession("w1", 0)->epoch;
  const uint64_t epoch = store.OpenSession("w1", 0)->epoch;
  for (uint64_t step = 0; step < 2; ++step) {
    auto p1 = StartPush(
        store, PushRequest("w1", step + 1, {MakeSlice("a", 0, {1, 1, 1, 1})},
                           step, epoch));
    auto p2 = StartPush(
        store,
        PushRequest("w2", step + 1, {MakeSlice("a", 0, {1, 1, 1, 1})}, step));
    ASSERT_TRUE(p1->WaitFor() && p2->WaitFor());
  }
  auto restored = RoundTrip(store, options);
  EXPECT_EQ(restored->OpenSession("w1", old_epoch).status().code(),
            absl::StatusCode::kAborted);
  auto reopened = restored->OpenSession("w1", epoch);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ(reopened->sync_step, 2u);
  // A retry of w1's last push is still a repeat after the restart.
  auto retry = StartPush(
      *restored,
      PushRequest("w1", 2, {MakeSlice("a", 0, {1, 1, 1, 1})}, 1, epoch));
  ASSERT_TRUE(retry->WaitFor());
  EXPECT_TRUE(retry->status.ok()) << retry->status;
  EXPECT_EQ(Dump(*restored).blocks, Dump(store).blocks);
}

// Checkpoints taken while variables are created and rules change are each
// one consistent cut: every one loads, with each variable whole.
TEST_F(CheckpointRoundTripTest, CheckpointsDuringCreationsAndRuleChangesLoad) {
  const StoreOptions options = Options("sgd {} learning_rate: 0.1");
  VariableStore store(options);
  std::atomic<bool> stop = false;
  std::thread creator([&] {
    for (int i = 0; i < 300 && !stop.load(); ++i) {
      const std::string name = absl::StrCat("v", i);
      ASSERT_TRUE(store.CreateVariable(CreateRequest(name, {9})).ok());
      PushAll(store, name, "", 0, 1.0f);
      ASSERT_TRUE(
          store.SetOptimizer("", Optimizer(i % 2 ? "adam {}" : "sgd {}"), false)
              .ok());
    }
  });
  Checkpointer writer({dir_.string(), 2}, &store);
  int loaded_variables = 0;
  for (int i = 0; i < 40; ++i) {
    auto written = writer.Write();
    ASSERT_TRUE(written.ok()) << written.status();
    VariableStore restored(options);
    Checkpointer reader({dir_.string(), 2}, &restored);
    auto loaded = reader.LoadNewest();
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    for (const std::string& name : restored.VariableNames()) {
      EXPECT_EQ(restored.Find(name)->NumRecords(), 3u) << name;
    }
    loaded_variables = static_cast<int>(restored.VariableNames().size());
  }
  stop = true;
  creator.join();
  EXPECT_GT(loaded_variables, 0);
}

// ------------------------------------------------------- a failing disk

class CheckpointFaultTest : public CheckpointRoundTripTest {
 protected:
  // A store with two variables under different rules, pushed once.
  void SetUp() override {
    CheckpointRoundTripTest::SetUp();
    store_ = std::make_unique<VariableStore>(options_);
    ASSERT_TRUE(store_->CreateVariable(CreateRequest("a", {10})).ok());
    v1::CreateVariableRequest b = CreateRequest("b", {6});
    *b.mutable_optimizer() = Optimizer("momentum {}");
    ASSERT_TRUE(store_->CreateVariable(b).ok());
    Push();
  }

  void Push() {
    ++seq_;
    PushAll(*store_, "a", "w", seq_, 0.1f * static_cast<float>(seq_));
    PushAll(*store_, "b", "w", seq_, -0.2f);
  }

  // What a fresh store loads from the folder.
  StoreDump Loaded() {
    VariableStore restored(options_);
    Checkpointer reader({dir_.string(), 3}, &restored);
    auto loaded = reader.LoadNewest();
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return Dump(restored);
  }

  std::vector<std::string> Entries() {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) {
      names.push_back(entry.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  // The complete checkpoints: their cluster manifests.
  size_t Complete() {
    size_t complete = 0;
    for (const std::string& name : Entries()) {
      complete += absl::EndsWith(name, ".cluster") ? 1 : 0;
    }
    return complete;
  }

  const StoreOptions options_ = Options("adam {} learning_rate: 0.1");
  std::unique_ptr<VariableStore> store_;
  uint64_t seq_ = 0;
  FaultEnv env_;
};

// Each file and folder operation of a checkpoint, failed in turn (a full
// disk, an I/O error, a write cut short): the write reports the error, no
// unfinished folder stays behind, and the folder loads the newest checkpoint
// that was reported written, or the one that failed only once it was
// complete (its folder's fsync after the rename).
TEST_F(CheckpointFaultTest, EveryFailingOperationLeavesTheLastGoodCheckpoint) {
  Checkpointer checkpointer({dir_.string(), 100, &env_}, store_.get());
  ASSERT_TRUE(checkpointer.Prepare().ok());
  env_.FailAt(-1, {});
  ASSERT_TRUE(checkpointer.Write().ok());
  const int operations = env_.seen();
  ASSERT_GE(operations, 10);  // files, fsyncs, rename, folder fsyncs
  StoreDump good = Dump(*store_);

  const FaultEnv::Fault faults[] = {
      {ENOSPC, false}, {EIO, false}, {ENOSPC, true}};
  for (int i = 0; i < operations; ++i) {
    for (const FaultEnv::Fault& fault : faults) {
      SCOPED_TRACE(absl::StrCat("operation ", i, ", errno ", fault.error,
                                fault.short_write ? ", short write" : ""));
      Push();
      const StoreDump attempted = Dump(*store_);
      const size_t complete_before = Complete();
      env_.FailAt(i, fault);
      auto written = checkpointer.Write();
      ASSERT_EQ(env_.failures(), 1);
      ASSERT_FALSE(written.ok()) << "operation " << i << " failed unseen";
      EXPECT_THAT(written.status().message(),
                  ::testing::HasSubstr("injected failure"));
      EXPECT_EQ(written.status().code(),
                fault.error == ENOSPC ? absl::StatusCode::kResourceExhausted
                                      : absl::StatusCode::kInternal);
      for (const std::string& name : Entries()) {
        EXPECT_FALSE(absl::StrContains(name, ".tmp")) << name;
      }
      const StoreDump loaded = Loaded();
      if (Complete() > complete_before) {
        // The cluster manifest renamed into place, then something after
        // it failed (its folder's fsync, the removal of old ones).
        EXPECT_EQ(loaded.blocks, attempted.blocks);
        good = attempted;
      } else {
        EXPECT_EQ(loaded.blocks, good.blocks);
      }
      env_.FailAt(-1, {});
      ASSERT_TRUE(checkpointer.Write().ok());
      good = attempted;
    }
  }
}

TEST_F(CheckpointFaultTest, PrepareRefusesAFolderItCannotWrite) {
  for (FaultEnv::Op op : {FaultEnv::Op::kCreate, FaultEnv::Op::kSync,
                          FaultEnv::Op::kMkdir, FaultEnv::Op::kSyncDir}) {
    env_.Heal();
    env_.FailAll(op, {EROFS});
    Checkpointer checkpointer({dir_.string(), 3, &env_}, store_.get());
    absl::Status status = checkpointer.Prepare();
    EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
    EXPECT_THAT(status.message(),
                ::testing::AllOf(::testing::HasSubstr(dir_.string()),
                                 ::testing::HasSubstr("--checkpoint_dir")));
  }
  env_.Heal();
  env_.FailAll(FaultEnv::Op::kAppend, {ENOSPC});
  Checkpointer full({dir_.string(), 3, &env_}, store_.get());
  EXPECT_EQ(full.Prepare().code(), absl::StatusCode::kResourceExhausted);
  // Nothing is left behind.
  EXPECT_THAT(Entries(), ::testing::IsEmpty());
}

TEST_F(CheckpointFaultTest, PrepareRemovesWhatACrashLeftUnfinished) {
  Checkpointer checkpointer({dir_.string(), 3}, store_.get());
  ASSERT_TRUE(checkpointer.Prepare().ok());
  ASSERT_TRUE(checkpointer.Write().ok());
  const fs::path unfinished =
      dir_ / "ckpt-00000000000000000007-shard-0-of-1.tmp";
  fs::create_directories(unfinished);
  std::ofstream(unfinished / "blocks.bin") << "half";
  // Another shard's unfinished part, in a shared folder: not this shard's to
  // remove.
  const fs::path other = dir_ / "ckpt-00000000000000000007-shard-1-of-2.tmp";
  fs::create_directories(other);
  ASSERT_TRUE(checkpointer.Prepare().ok());
  EXPECT_THAT(Entries(),
              ::testing::ElementsAre("ckpt-00000000000000000001-shard-0-of-1",
                                     "ckpt-00000000000000000001.cluster",
                                     other.filename().string()));
}

}  // namespace
}  // namespace ps
