// A variable's life in the store: creations that find it existing (same or
// other optimizer and values; reuse and reset), its deletion, and what a
// change of the default says about the variables that kept their own.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/optimizer_config.h"
#include "common/wire.h"
#include "server/store_impl.h"
#include "tests/server/messages.h"
#include "tests/server/store_driver.h"

namespace ps {
namespace {

using ::ps::testutil::CreateRequest;
using ::ps::testutil::Decode;
using ::ps::testutil::MakeSlice;
using ::ps::testutil::PushNow;
using ::ps::testutil::PushRequest;
using ::ps::testutil::RangeSlice;
using ::ps::testutil::StartPush;
using ::testing::AllOf;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

v1::OptimizerConfig Optimizer(const std::string& text) {
  auto config = ParseOptimizerConfig(text);
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : v1::OptimizerConfig();
}

StoreOptions Options(bool sync = false) {
  StoreOptions options;
  options.block_size = 4;
  options.default_optimizer = Optimizer("sgd {} learning_rate: 1");
  if (sync) {
    options.sync = true;
    options.num_workers = 2;
    options.quorum = 2;
  }
  return options;
}

// A creation of `name` with `values` (every block: one shard), their
// checksum, and `optimizer` when not empty.
v1::CreateVariableRequest Create(const std::string& name,
                                 const std::vector<float>& values,
                                 const std::string& optimizer = "",
                                 v1::OnExists on_exists = v1::ON_EXISTS_ERROR) {
  v1::CreateVariableRequest request = CreateRequest(name, {values.size()});
  for (uint64_t offset = 0; offset < values.size(); offset += 4) {
    const uint64_t end = std::min<uint64_t>(offset + 4, values.size());
    *request.add_initial_values() = MakeSlice(
        name, offset,
        std::vector<float>(values.begin() + offset, values.begin() + end));
  }
  request.set_initial_values_checksum(InitialValuesChecksum(values));
  if (!optimizer.empty()) *request.mutable_optimizer() = Optimizer(optimizer);
  request.set_on_exists(on_exists);
  return request;
}

std::vector<float> Values(const VariableStore& store, const std::string& name,
                          uint64_t size, std::vector<uint64_t>* versions) {
  v1::PullRequest request;
  for (uint64_t offset = 0; offset < size; offset += 4) {
    *request.add_slices() =
        RangeSlice(name, offset, std::min<uint64_t>(4, size - offset));
  }
  v1::PullResponse response;
  EXPECT_TRUE(store.Pull(request, &response).ok());
  std::vector<float> values;
  for (const v1::Slice& slice : response.values()) {
    for (float v : Decode(slice)) values.push_back(v);
    if (versions != nullptr) versions->push_back(slice.version());
  }
  return values;
}

TEST(StoreCreateTest, SameOptimizerAndValuesFromEveryWorkerIsFine) {
  VariableStore store(Options());
  const std::vector<float> values = {1, 2, 3, 4, 5};
  auto first = store.CreateVariable(Create("w", values, "adam {}"));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(*first);
  for (int worker = 0; worker < 3; ++worker) {
    auto again = store.CreateVariable(Create("w", values, "adam {}"));
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_FALSE(*again);
  }
  // Zeros (no initial values) with the default, twice: fine too, and so
  // are explicit zeros, which have the same checksum.
  ASSERT_TRUE(store.CreateVariable(CreateRequest("z", {6})).ok());
  auto zeros = store.CreateVariable(CreateRequest("z", {6}));
  ASSERT_TRUE(zeros.ok()) << zeros.status();
  EXPECT_FALSE(*zeros);
  auto explicit_zeros =
      store.CreateVariable(Create("z", std::vector<float>(6, 0.0f)));
  ASSERT_TRUE(explicit_zeros.ok()) << explicit_zeros.status();
  EXPECT_FALSE(*explicit_zeros);
  EXPECT_EQ(store.CreateVariable(Create("z", std::vector<float>(6, 1.0f)))
                .status()
                .code(),
            absl::StatusCode::kAlreadyExists);
}

TEST(StoreCreateTest, AnotherOptimizerOrOtherValuesIsAlreadyExists) {
  VariableStore store(Options());
  const std::vector<float> values = {1, 2, 3, 4, 5};
  ASSERT_TRUE(store.CreateVariable(Create("w", values, "adam {}")).ok());
  ASSERT_TRUE(
      PushNow(store, PushRequest("a", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}))
          ->status.ok());

  auto other_rule = store.CreateVariable(Create("w", values, "sgd {}"));
  EXPECT_EQ(other_rule.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(other_rule.status().message(),
              AllOf(HasSubstr("'w'"), HasSubstr("adam"), HasSubstr("sgd"),
                    HasSubstr("reuse"), HasSubstr("reset")));
  auto default_rule = store.CreateVariable(Create("w", values));
  EXPECT_EQ(default_rule.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(default_rule.status().message(), HasSubstr("default"));
  auto other_values =
      store.CreateVariable(Create("w", {1, 2, 3, 4, 6}, "adam {}"));
  EXPECT_EQ(other_values.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(other_values.status().message(), HasSubstr("initial values"));
  v1::CreateVariableRequest zeros = CreateRequest("w", {5});
  *zeros.mutable_optimizer() = Optimizer("adam {}");
  auto as_zeros = store.CreateVariable(zeros);
  EXPECT_EQ(as_zeros.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(as_zeros.status().message(), HasSubstr("zeros"));
  // Another shape stays ALREADY_EXISTS, naming both shapes.
  auto shape = store.CreateVariable(Create("w", {1, 2}, "adam {}"));
  EXPECT_EQ(shape.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(shape.status().message(), HasSubstr("[5]"));

  // None of them changed anything.
  std::vector<uint64_t> versions;
  EXPECT_THAT(Values(store, "w", 5, &versions),
              ElementsAreArray(Values(store, "w", 5, nullptr)));
  EXPECT_THAT(versions, ElementsAreArray({1u, 0u}));
  EXPECT_TRUE(store.OptimizerFor("w")->config.has_adam());

  // An operator's later change is not what it was created with: a worker
  // that creates it as before is still fine.
  ASSERT_TRUE(
      store.SetOptimizer("w", Optimizer("adam {} learning_rate: 0.5"), false)
          .ok());
  EXPECT_TRUE(store.CreateVariable(Create("w", values, "adam {}")).ok());
}

TEST(StoreCreateTest, ReuseKeepsTheServersVariable) {
  VariableStore store(Options());
  ASSERT_TRUE(store.CreateVariable(Create("w", {1, 2, 3, 4}, "adam {}")).ok());
  auto reused = store.CreateVariable(
      Create("w", {9, 9, 9, 9}, "sgd {}", v1::ON_EXISTS_REUSE));
  ASSERT_TRUE(reused.ok()) << reused.status();
  EXPECT_FALSE(*reused);
  EXPECT_THAT(Values(store, "w", 4, nullptr), ElementsAreArray({1, 2, 3, 4}));
  EXPECT_TRUE(store.OptimizerFor("w")->config.has_adam());
  // Reuse cannot change the shape.
  EXPECT_EQ(store.CreateVariable(Create("w", {1}, "", v1::ON_EXISTS_REUSE))
                .status()
                .code(),
            absl::StatusCode::kAlreadyExists);
}

TEST(StoreCreateTest, ResetReplacesValuesOptimizerSlotsAndShape) {
  VariableStore store(Options());
  ASSERT_TRUE(store.CreateVariable(Create("w", {1, 2, 3, 4}, "adam {}")).ok());
  ASSERT_TRUE(
      PushNow(store, PushRequest("a", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}))
          ->status.ok());
  const uint64_t adam_bytes = store.StateBytes();

  auto reset = store.CreateVariable(Create("w", {5, 6, 7, 8, 9, 10},
                                           "sgd {} learning_rate: 1",
                                           v1::ON_EXISTS_RESET));
  ASSERT_TRUE(reset.ok()) << reset.status();
  EXPECT_TRUE(*reset);
  std::vector<uint64_t> versions;
  EXPECT_THAT(Values(store, "w", 6, &versions),
              ElementsAreArray({5, 6, 7, 8, 9, 10}));
  EXPECT_THAT(versions, ElementsAreArray({0u, 0u}));
  EXPECT_TRUE(store.OptimizerFor("w")->config.has_sgd());
  EXPECT_EQ(store.StateBytes(), 6 * sizeof(float));  // SGD: values only
  EXPECT_LT(store.StateBytes(), adam_bytes);
  // The exactly-once record went with it: seq 1 of worker "a" is new.
  auto push =
      PushNow(store, PushRequest("a", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}));
  ASSERT_TRUE(push->status.ok()) << push->status;
  EXPECT_THAT(Values(store, "w", 6, nullptr),
              ElementsAreArray({4, 5, 6, 7, 9, 10}));
  // And the reset's values and optimizer are what later creations match.
  EXPECT_TRUE(store
                  .CreateVariable(Create("w", {5, 6, 7, 8, 9, 10},
                                         "sgd {} learning_rate: 1"))
                  .ok());
}

TEST(StoreDeleteTest, DeleteRemovesEverythingAndACreationStartsAfresh) {
  VariableStore store(Options());
  const uint64_t empty_bookkeeping = store.BookkeepingBytes();
  ASSERT_TRUE(
      store.CreateVariable(Create("w", {1, 2, 3, 4, 5}, "adam {}")).ok());
  ASSERT_TRUE(store.CreateVariable(Create("keep", {1, 2})).ok());
  const uint64_t keep_bytes = 2 * sizeof(float);
  ASSERT_TRUE(PushNow(store, PushRequest("a", 1,
                                         {MakeSlice("w", 0, {1, 1, 1, 1}),
                                          MakeSlice("w", 4, {1})}))
                  ->status.ok());
  EXPECT_GT(store.BookkeepingBytes(), empty_bookkeeping);

  auto deleted = store.DeleteVariable("w");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_TRUE(*deleted);
  EXPECT_EQ(store.Find("w"), nullptr);
  EXPECT_EQ(store.StateBytes(), keep_bytes);
  EXPECT_EQ(store.VariableNames(), std::vector<std::string>{"keep"});
  // Pushes and pulls find nothing; a second delete says it had nothing.
  auto push =
      PushNow(store, PushRequest("a", 2, {MakeSlice("w", 0, {1, 1, 1, 1})}));
  EXPECT_EQ(push->status.code(), absl::StatusCode::kNotFound);
  v1::PullResponse pulled;
  EXPECT_EQ(store
                .Pull(
                    [] {
                      v1::PullRequest r;
                      *r.add_slices() = RangeSlice("w", 0, 4);
                      return r;
                    }(),
                    &pulled)
                .code(),
            absl::StatusCode::kNotFound);
  auto again = store.DeleteVariable("w");
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(*again);
  EXPECT_EQ(store.GetOptimizer("w").status().code(),
            absl::StatusCode::kNotFound);

  // A creation with another optimizer and values starts afresh: no error,
  // step 0, and worker "a"'s seq 1 is applied again.
  auto created = store.CreateVariable(
      Create("w", {0, 0, 0, 0, 0}, "sgd {} learning_rate: 1"));
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(*created);
  std::vector<uint64_t> versions;
  EXPECT_THAT(Values(store, "w", 5, &versions),
              ElementsAreArray({0, 0, 0, 0, 0}));
  EXPECT_THAT(versions, ElementsAreArray({0u, 0u}));
  auto fresh =
      PushNow(store, PushRequest("a", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}));
  ASSERT_TRUE(fresh->status.ok()) << fresh->status;
  EXPECT_THAT(Values(store, "w", 5, nullptr),
              ElementsAreArray({-1, -1, -1, -1, 0}));
}

// Rows of table `table` for `ids` (dim 2), with `values`.
v1::RowSlice Rows(const std::string& table, std::vector<uint64_t> ids,
                  const std::vector<float>& values) {
  v1::RowSlice rows;
  rows.set_table(table);
  for (uint64_t id : ids) rows.add_ids(id);
  rows.set_data(testutil::Encode(values));
  return rows;
}

// The rows of `ids` of table `table` as a pull reads them.
std::vector<float> RowValues(const VariableStore& store,
                             const std::string& table,
                             std::vector<uint64_t> ids) {
  v1::PullRequest request;
  *request.add_rows() = Rows(table, std::move(ids), {});
  request.mutable_rows(0)->clear_data();
  v1::PullResponse response;
  absl::Status status = store.Pull(request, &response);
  EXPECT_TRUE(status.ok()) << status;
  if (!status.ok()) return {};
  const std::string& data = response.rows(0).data();
  std::vector<float> values(data.size() / sizeof(float));
  std::memcpy(values.data(), data.data(), data.size());
  return values;
}

TEST(StoreCreateTest, ATableIsComparedAndReusedOrResetToo) {
  VariableStore store(Options());
  v1::CreateTableRequest table;
  table.set_name("emb");
  table.set_dim(2);
  *table.mutable_optimizer() = Optimizer("adagrad {} learning_rate: 1");
  ASSERT_TRUE(store.CreateTable(table).ok());
  v1::PushRequest push = PushRequest("a", 1, {});
  *push.add_rows() = Rows("emb", {7}, {1, 1});
  ASSERT_TRUE(PushNow(store, push)->status.ok());
  const std::vector<float> trained = RowValues(store, "emb", {7});
  ASSERT_THAT(trained, ::testing::Each(::testing::Lt(0.0f)));

  // Alike (every worker of a job): fine, nothing changes.
  auto again = store.CreateTable(table);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(*again);
  // Another optimizer, or the default: ALREADY_EXISTS naming both.
  v1::CreateTableRequest other = table;
  *other.mutable_optimizer() = Optimizer("sgd {} learning_rate: 1");
  auto refused = store.CreateTable(other);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(refused.status().message(),
              AllOf(HasSubstr("table 'emb'"), HasSubstr("adagrad"),
                    HasSubstr("sgd"), HasSubstr("reuse"), HasSubstr("reset")));
  v1::CreateTableRequest by_default = table;
  by_default.clear_optimizer();
  EXPECT_THAT(store.CreateTable(by_default).status().message(),
              HasSubstr("default"));
  v1::CreateTableRequest other_policy = table;
  other_policy.mutable_policy()->set_max_rows(10);
  EXPECT_THAT(store.CreateTable(other_policy).status().message(),
              HasSubstr("reuse"));
  v1::CreateTableRequest bad = table;
  bad.set_on_exists(static_cast<v1::OnExists>(7));
  EXPECT_EQ(store.CreateTable(bad).status().code(),
            absl::StatusCode::kInvalidArgument);

  // Reuse keeps it as it is; it cannot change the dim.
  other.set_on_exists(v1::ON_EXISTS_REUSE);
  auto reused = store.CreateTable(other);
  ASSERT_TRUE(reused.ok()) << reused.status();
  EXPECT_FALSE(*reused);
  EXPECT_TRUE(store.OptimizerFor("emb")->config.has_adagrad());
  EXPECT_EQ(RowValues(store, "emb", {7}), trained);
  other.set_dim(3);
  EXPECT_EQ(store.CreateTable(other).status().code(),
            absl::StatusCode::kAlreadyExists);

  // Reset replaces it, another dim too: rows start again, worker "a"'s
  // seq 1 is new to it.
  other.set_on_exists(v1::ON_EXISTS_RESET);
  auto reset = store.CreateTable(other);
  ASSERT_TRUE(reset.ok()) << reset.status();
  EXPECT_TRUE(*reset);
  EXPECT_EQ(store.FindTable("emb")->dim(), 3u);
  EXPECT_TRUE(store.OptimizerFor("emb")->config.has_sgd());
  EXPECT_THAT(RowValues(store, "emb", {7}), ElementsAreArray({0, 0, 0}));
  v1::PushRequest fresh = PushRequest("a", 1, {});
  *fresh.add_rows() = Rows("emb", {7}, {1, 1, 1});
  ASSERT_TRUE(PushNow(store, fresh)->status.ok());
  EXPECT_THAT(RowValues(store, "emb", {7}), ElementsAreArray({-1, -1, -1}));

  // What it was created with travels in checkpoints.
  storage::v1::ShardState saved;
  ASSERT_TRUE(
      store
          .Snapshot(
              [&](const storage::v1::ShardState& state) {
                saved = state;
                return absl::OkStatus();
              },
              [](const storage::v1::BlockRecord&) { return absl::OkStatus(); })
          .ok());
  ASSERT_TRUE(saved.tables(0).has_origin());
  VariableStore restored(Options());
  ASSERT_TRUE(restored.RestoreState(saved).ok());
  other.set_on_exists(v1::ON_EXISTS_ERROR);
  EXPECT_TRUE(restored.CreateTable(other).ok());
  *other.mutable_optimizer() = Optimizer("adagrad {} learning_rate: 1");
  EXPECT_EQ(restored.CreateTable(other).status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST(StoreDeleteTest, AnEmptyNameIsInvalid) {
  VariableStore store(Options());
  EXPECT_EQ(store.DeleteVariable("").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(StoreDeleteTest, ATableGoesWithItsRowsRecordsAndBytes) {
  VariableStore store(Options());
  const uint64_t empty_bytes = store.StateBytes();
  v1::CreateTableRequest table;
  table.set_name("emb");
  table.set_dim(2);
  *table.mutable_optimizer() = Optimizer("adagrad {} learning_rate: 1");
  ASSERT_TRUE(store.CreateTable(table).ok());
  v1::PushRequest push = PushRequest("a", 1, {});
  *push.add_rows() = Rows("emb", {7, 9}, {1, 1, 1, 1});
  ASSERT_TRUE(PushNow(store, push)->status.ok());
  EXPECT_GT(store.StateBytes(), empty_bytes);

  auto deleted = store.DeleteVariable("emb");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_TRUE(*deleted);
  EXPECT_EQ(store.FindTable("emb"), nullptr);
  EXPECT_EQ(store.StateBytes(), empty_bytes);
  EXPECT_EQ(store.GetOptimizer("emb").status().code(),
            absl::StatusCode::kNotFound);
  v1::PushRequest after = PushRequest("a", 2, {});
  *after.add_rows() = Rows("emb", {7}, {1, 1});
  EXPECT_EQ(PushNow(store, after)->status.code(), absl::StatusCode::kNotFound);

  // Created again it starts afresh (the default optimizer, and worker
  // "a"'s seq 1 is new to it); deleted again, its name can be a variable's.
  table.clear_optimizer();
  ASSERT_TRUE(store.CreateTable(table).ok());
  EXPECT_TRUE(store.OptimizerFor("emb")->config.has_sgd());
  auto again = PushNow(store, push);
  ASSERT_TRUE(again->status.ok()) << again->status;
  ASSERT_TRUE(store.DeleteVariable("emb").ok());
  EXPECT_TRUE(store.CreateVariable(CreateRequest("emb", {3})).ok());
}

TEST(StoreDeleteTest, SyncPushesWaitingForATableStepAreAnsweredNotFound) {
  VariableStore store(Options(/*sync=*/true));
  v1::CreateTableRequest table;
  table.set_name("emb");
  table.set_dim(2);
  ASSERT_TRUE(store.CreateTable(table).ok());
  v1::PushRequest push = PushRequest("a", 1, {}, 0);
  *push.add_rows() = Rows("emb", {7}, {1, 1});
  auto waiting = StartPush(store, push);
  EXPECT_FALSE(waiting->done.HasBeenNotified());
  ASSERT_TRUE(store.DeleteVariable("emb").ok());
  ASSERT_TRUE(waiting->WaitFor());
  EXPECT_EQ(waiting->status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(waiting->status.message(), HasSubstr("deleted"));
}

TEST(StoreDeleteTest, APushDecodedBeforeTheDeleteIsNotFound) {
  VariableStore store(Options());
  ASSERT_TRUE(store.CreateVariable(Create("w", {1, 2, 3, 4})).ok());
  v1::PushRequest request =
      PushRequest("a", 1, {MakeSlice("w", 0, {1, 1, 1, 1})});
  absl::StatusOr<PreparedPush> prepared = store.PreparePush(request, false);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  ASSERT_TRUE(store.DeleteVariable("w").ok());
  auto result = std::make_shared<testutil::PushResult>();
  store.ApplyPush(*std::move(prepared),
                  std::make_shared<PushCompletion>(
                      1, /*with_values=*/false, v1::FLOAT32,
                      [result](absl::Status status, v1::PullResponse) {
                        result->status = std::move(status);
                        result->done.Notify();
                      }));
  ASSERT_TRUE(result->WaitFor());
  EXPECT_EQ(result->status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(result->status.message(), HasSubstr("deleted"));
}

TEST(StoreDeleteTest, SyncPushesWaitingForAStepAreAnsweredNotFound) {
  VariableStore store(Options(/*sync=*/true));
  ASSERT_TRUE(store.CreateVariable(Create("w", {1, 2, 3, 4})).ok());
  auto waiting = StartPush(
      store, PushRequest("a", 1, {MakeSlice("w", 0, {1, 1, 1, 1})}, 0));
  EXPECT_FALSE(waiting->done.HasBeenNotified());
  ASSERT_TRUE(store.DeleteVariable("w").ok());
  ASSERT_TRUE(waiting->WaitFor());
  EXPECT_EQ(waiting->status.code(), absl::StatusCode::kNotFound);
}

TEST(StoreDeleteTest, ADeletedVariableIsNotInTheNextCheckpoint) {
  VariableStore store(Options());
  ASSERT_TRUE(store.CreateVariable(Create("gone", {1, 2, 3, 4, 5})).ok());
  ASSERT_TRUE(store.CreateVariable(Create("kept", {1, 2}, "adam {}")).ok());
  ASSERT_TRUE(store.DeleteVariable("gone").ok());
  std::vector<std::string> headers, blocks;
  storage::v1::ShardState saved;
  ASSERT_TRUE(store
                  .Snapshot(
                      [&](const storage::v1::ShardState& state) {
                        saved = state;
                        for (const auto& h : state.variables()) {
                          headers.push_back(h.name());
                        }
                        return absl::OkStatus();
                      },
                      [&](const storage::v1::BlockRecord& record) {
                        blocks.push_back(record.variable());
                        return absl::OkStatus();
                      })
                  .ok());
  EXPECT_EQ(headers, std::vector<std::string>{"kept"});
  EXPECT_EQ(blocks, std::vector<std::string>{"kept"});
  // What "kept" was created with travels in the checkpoint: a restored
  // store still refuses a creation with another optimizer.
  ASSERT_TRUE(saved.variables(0).has_origin());
  VariableStore restored(Options());
  ASSERT_TRUE(restored.RestoreState(saved).ok());
  EXPECT_EQ(
      restored.CreateVariable(Create("kept", {1, 2}, "sgd {}")).status().code(),
      absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(restored.CreateVariable(Create("kept", {1, 2}, "adam {}")).ok());
}

TEST(StoreOptimizerTest, AChangeOfTheDefaultCountsTheOverridesKept) {
  VariableStore store(Options());
  ASSERT_TRUE(store.CreateVariable(Create("a", {1}, "adam {}")).ok());
  ASSERT_TRUE(store.CreateVariable(Create("b", {1}, "momentum {}")).ok());
  ASSERT_TRUE(store.CreateVariable(Create("c", {1})).ok());
  auto change = store.SetOptimizer("", Optimizer("sgd {} learning_rate: 0.5"),
                                   false, /*validate_only=*/true);
  ASSERT_TRUE(change.ok());
  EXPECT_EQ(change->kept_overrides, 2u);
  change =
      store.SetOptimizer("", Optimizer("sgd {} learning_rate: 0.5"), false);
  ASSERT_TRUE(change.ok());
  EXPECT_EQ(change->kept_overrides, 2u);
  EXPECT_EQ(store.OptimizerFor("c")->config.learning_rate(), 0.5);
  EXPECT_TRUE(store.OptimizerFor("a")->config.has_adam());
  // One variable's change counts nothing.
  change = store.SetOptimizer("a", Optimizer("sgd {}"), false);
  ASSERT_TRUE(change.ok());
  EXPECT_EQ(change->kept_overrides, 0u);
}

}  // namespace
}  // namespace ps
