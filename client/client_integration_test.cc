// The client against real shards (ps::ParameterServer) in this process, on
// port 0, with small blocks so every variable spans every shard.
#include <chrono>
#include <cmath>
#include <future>
#include <numeric>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/server.h"

namespace ps {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

class ClientIntegrationTest : public ::testing::TestWithParam<uint32_t> {
 protected:
  void SetUp() override { StartCluster(Consistency::kAsync, 0); }

  void TearDown() override {
    for (auto& server : servers_) server->Shutdown().IgnoreError();
  }

  void StartCluster(Consistency consistency, uint32_t num_workers,
                    absl::Duration lease = absl::Seconds(10),
                    uint32_t staleness = 0) {
    for (auto& server : servers_) server->Shutdown().IgnoreError();
    servers_.clear();
    for (uint32_t s = 0; s < GetParam(); ++s) {
      ServerOptions options;
      options.shard_index = s;
      options.num_shards = GetParam();
      options.block_size = kBlockSize;
      options.consistency = consistency;
      options.num_workers = num_workers;
      options.lease_timeout = lease;
      options.staleness = staleness;
      options.default_optimizer.mutable_sgd();
      options.default_optimizer.set_learning_rate(1.0);
      absl::StatusOr<std::unique_ptr<ParameterServer>> server =
          ParameterServer::Start(options);
      ASSERT_TRUE(server.ok()) << server.status();
      servers_.push_back(std::move(*server));
    }
  }

  // A client of the cluster with `options` (addresses and retry pace set).
  std::unique_ptr<Client> Connect(ClientOptions options = {}) {
    for (const auto& server : servers_) {
      options.addresses.push_back(server->address());
    }
    options.retry.initial_backoff = absl::Milliseconds(5);
    options.call_timeout = absl::Seconds(30);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }

  static constexpr uint64_t kBlockSize = 3;
  std::vector<std::unique_ptr<ParameterServer>> servers_;
};

std::vector<float> Iota(size_t n, float start) {
  std::vector<float> values(n);
  std::iota(values.begin(), values.end(), start);
  return values;
}

TEST_P(ClientIntegrationTest, InitialValuesLargerThanAMessageGoInParts) {
  ClientOptions options;
  options.max_message_bytes = 1024;  // a few dozen 3-value blocks a message
  auto client = Connect(options);
  ASSERT_NE(client, nullptr);
  const std::vector<float> initial = Iota(3000, 1);  // 12 KB of values
  absl::StatusOr<bool> created = client->CreateVariable("big", {3000}, initial);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(*created);
  std::vector<float> values(3000);
  ASSERT_TRUE(client->Pull("big", values).ok());
  EXPECT_EQ(values, initial);
  // A later creator with the same values (another worker of the job) is
  // fine and changes nothing.
  created = client->CreateVariable("big", {3000}, initial);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_FALSE(*created);
  // Other values, which every shard compares by their checksum (a shard
  // holds only its blocks, and the first request only some of them): an
  // error naming the variable, unless reused.
  created = client->CreateVariable("big", {3000}, Iota(3000, -5));
  EXPECT_EQ(created.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(created.status().message(),
              AllOf(HasSubstr("'big'"), HasSubstr("initial values")));
  created = client->CreateVariable("big", {3000}, Iota(3000, -5), std::nullopt,
                                   v1::ON_EXISTS_REUSE);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_FALSE(*created);
  ASSERT_TRUE(client->Pull("big", values).ok());
  EXPECT_EQ(values, initial);
  // A reset replaces every value, in parts too.
  created = client->CreateVariable("big", {3000}, Iota(3000, -5), std::nullopt,
                                   v1::ON_EXISTS_RESET);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(*created);
  ASSERT_TRUE(client->Pull("big", values).ok());
  EXPECT_EQ(values, Iota(3000, -5));
}

TEST_P(ClientIntegrationTest, AnotherOptimizerIsAnErrorUnlessReusedOrReset) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  v1::OptimizerConfig adam;
  adam.mutable_adam();
  v1::OptimizerConfig sgd;
  sgd.mutable_sgd();
  sgd.set_learning_rate(1);
  ASSERT_TRUE(client->CreateVariable("w", {10}, Iota(10, 1), adam).ok());
  // Every worker of a job creating it alike: fine.
  auto again = client->CreateVariable("w", {10}, Iota(10, 1), adam);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(*again);
  auto other = client->CreateVariable("w", {10}, Iota(10, 1), sgd);
  EXPECT_EQ(other.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(other.status().message(),
              AllOf(HasSubstr("'w'"), HasSubstr("adam"), HasSubstr("sgd")));
  auto reset =
      client->CreateVariable("w", {2, 3}, Iota(6, 7), sgd, v1::ON_EXISTS_RESET);
  ASSERT_TRUE(reset.ok()) << reset.status();
  EXPECT_TRUE(*reset);
  std::vector<float> values(6);
  ASSERT_TRUE(client->Pull("w", values).ok());
  EXPECT_EQ(values, Iota(6, 7));
  // SGD with rate 1 now.
  ASSERT_TRUE(client->Push("w", std::vector<float>(6, 1.0f)).ok());
  ASSERT_TRUE(client->Pull("w", values).ok());
  EXPECT_EQ(values, Iota(6, 6));
}

TEST_P(ClientIntegrationTest, DeleteVariableOnEveryShard) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("w", {10}, Iota(10, 1)).ok());
  ASSERT_TRUE(client->Push("w", std::vector<float>(10, 1.0f)).ok());
  ASSERT_TRUE(client->DeleteVariable("w").ok());
  absl::Status push = client->Push("w", std::vector<float>(10, 1.0f));
  EXPECT_EQ(push.code(), absl::StatusCode::kNotFound) << push;
  absl::Status again = client->DeleteVariable("w");
  EXPECT_EQ(again.code(), absl::StatusCode::kNotFound) << again;
  EXPECT_THAT(again.message(), HasSubstr("'w'"));
  EXPECT_EQ(client->DeleteVariable("").code(),
            absl::StatusCode::kInvalidArgument);
  // Created afresh, with other values and optimizer: no error, version 0.
  v1::OptimizerConfig adam;
  adam.mutable_adam();
  auto created = client->CreateVariable("w", {4}, Iota(4, 0), adam);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(*created);
  std::vector<float> values(4);
  std::vector<uint64_t> versions(2);
  NamedValues named{"w", values, versions};
  ASSERT_TRUE(client->Pull(std::span<const NamedValues>(&named, 1)).ok());
  EXPECT_EQ(values, Iota(4, 0));
  EXPECT_THAT(versions, ::testing::Each(0u));
}

// A variable's state read back into another: both then take the same
// update bit for bit (the steps and Adam's moments came along).
TEST_P(ClientIntegrationTest, StateReadIntoAnotherVariableContinuesAlike) {
  ClientOptions small;
  small.part_bytes = 64;  // ReadState's answers come in pages
  auto client = Connect(small);
  ASSERT_NE(client, nullptr);
  v1::OptimizerConfig adam;
  adam.mutable_adam();
  adam.set_learning_rate(0.1);
  ASSERT_TRUE(client->CreateVariable("a", {10}, Iota(10, 1), adam).ok());
  ASSERT_TRUE(client->CreateVariable("b", {10}, {}, adam).ok());
  for (int step = 0; step < 3; ++step) {
    ASSERT_TRUE(client->Push("a", Iota(10, static_cast<float>(step))).ok());
  }
  absl::StatusOr<VariableState> state = client->ReadState("a");
  ASSERT_TRUE(state.ok()) << state.status();
  std::vector<float> values(10);
  ASSERT_TRUE(client->Pull("a", values).ok());
  EXPECT_EQ(state->values, values);
  ASSERT_EQ(state->blocks.size(), 4u);  // blocks of 3
  for (const VariableState::Block& block : state->blocks) {
    EXPECT_EQ(block.step, 3u);
    EXPECT_EQ(block.held, 3u);  // momentum (m) and square_avg (v)
  }
  EXPECT_EQ(state->blocks[3].offset, 9u);
  EXPECT_EQ(state->blocks[3].length, 1u);
  ASSERT_TRUE(state->slots.contains("momentum"));
  ASSERT_TRUE(state->slots.contains("square_avg"));
  EXPECT_FALSE(state->slots.contains("max_square_avg"));
  EXPECT_TRUE(state->optimizer.has_adam());

  ASSERT_TRUE(client->WriteState("b", *state).ok());
  absl::StatusOr<VariableState> copied = client->ReadState("b");
  ASSERT_TRUE(copied.ok()) << copied.status();
  EXPECT_EQ(copied->values, state->values);
  EXPECT_EQ(copied->slots, state->slots);
  ASSERT_TRUE(client->Push("a", Iota(10, -4)).ok());
  ASSERT_TRUE(client->Push("b", Iota(10, -4)).ok());
  std::vector<float> a(10), b(10);
  ASSERT_TRUE(client->Pull("a", a).ok());
  ASSERT_TRUE(client->Pull("b", b).ok());
  EXPECT_EQ(a, b);

  // Refusals change nothing on any shard.
  VariableState bad = *state;
  bad.values[9] = std::nanf("");  // on the last shard of the blocks
  absl::Status refused = client->WriteState("b", bad);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_THAT(refused.message(), HasSubstr("not finite"));
  bad = *state;
  bad.blocks.pop_back();
  EXPECT_EQ(client->WriteState("b", bad).code(),
            absl::StatusCode::kInvalidArgument);
  bad = *state;
  bad.values.push_back(0);
  EXPECT_EQ(client->WriteState("b", bad).code(),
            absl::StatusCode::kInvalidArgument);
  // SGD holds no moments.
  v1::OptimizerConfig sgd;
  sgd.mutable_sgd();
  ASSERT_TRUE(client->CreateVariable("s", {10}, {}, sgd).ok());
  refused = client->WriteState("s", *state);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_THAT(refused.message(),
              AllOf(HasSubstr("momentum"), HasSubstr("sgd")));
  std::vector<float> unchanged(10);
  ASSERT_TRUE(client->Pull("s", unchanged).ok());
  EXPECT_THAT(unchanged, ::testing::Each(0.0f));
  ASSERT_TRUE(client->Pull("b", unchanged).ok());
  EXPECT_EQ(unchanged, b);
  EXPECT_EQ(client->WriteState("missing", *state).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(client->ReadState("missing").status().code(),
            absl::StatusCode::kNotFound);
  ASSERT_TRUE(client->CreateTable("emb", 2).ok());
  absl::StatusOr<VariableState> table = client->ReadState("emb");
  EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(table.status().message(), HasSubstr("PullRows"));
}

TEST_P(ClientIntegrationTest, DeleteATableOnEveryShard) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateTable("emb", 2).ok());
  const std::vector<uint64_t> ids = {1, 2, 3, 4, 5, 6};
  const std::vector<float> grads(12, 1.0f);
  ASSERT_TRUE(client->PushRows("emb", ids, grads).ok());
  std::vector<float> rows(12);
  ASSERT_TRUE(client->PullRows("emb", ids, rows).ok());
  EXPECT_THAT(rows, ::testing::Each(-1.0f));  // SGD with rate 1 from zeros

  ASSERT_TRUE(client->DeleteVariable("emb").ok());
  absl::Status push = client->PushRows("emb", ids, grads);
  EXPECT_EQ(push.code(), absl::StatusCode::kNotFound) << push;
  EXPECT_EQ(client->PullRows("emb", ids, rows).code(),
            absl::StatusCode::kNotFound);
  // Created again, with another dim even: its rows start afresh.
  ASSERT_TRUE(client->CreateTable("emb", 3).ok());
  rows.resize(18);
  ASSERT_TRUE(client->PullRows("emb", ids, rows).ok());
  EXPECT_THAT(rows, ::testing::Each(0.0f));
}

TEST_P(ClientIntegrationTest, ATableWithAnotherOptimizerIsAnErrorUnlessReused) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  TableOptions adagrad;
  adagrad.optimizer.emplace().mutable_adagrad();
  ASSERT_TRUE(client->CreateTable("emb", 2, adagrad).ok());
  auto again = client->CreateTable("emb", 2, adagrad);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(*again);
  TableOptions defaults;
  auto other = client->CreateTable("emb", 2, defaults);
  EXPECT_EQ(other.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(other.status().message(),
              AllOf(HasSubstr("'emb'"), HasSubstr("adagrad")));
  defaults.on_exists = v1::ON_EXISTS_REUSE;
  auto reused = client->CreateTable("emb", 2, defaults);
  ASSERT_TRUE(reused.ok()) << reused.status();
  EXPECT_FALSE(*reused);
  defaults.on_exists = v1::ON_EXISTS_RESET;
  auto reset = client->CreateTable("emb", 5, defaults);
  ASSERT_TRUE(reset.ok()) << reset.status();
  EXPECT_TRUE(*reset);
  std::vector<float> rows(10);
  const std::vector<uint64_t> ids = {11, 12};
  ASSERT_TRUE(client->PullRows("emb", ids, rows).ok());
}

TEST_P(ClientIntegrationTest, PullAndPushPullReportBlockVersions) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("v", {7}).ok());  // 3 blocks of 3
  const std::vector<float> ones(7, 1.0f);
  std::vector<float> values(7);
  std::vector<uint64_t> versions(3, 99);
  const NamedUpdate update{"v", ones, values, versions};
  ASSERT_TRUE(client->PushPull(std::span<const NamedUpdate>(&update, 1)).ok());
  EXPECT_EQ(versions, std::vector<uint64_t>({1, 1, 1}));
  ASSERT_TRUE(client->Push("v", ones).ok());
  const NamedValues pull{"v", values, versions};
  ASSERT_TRUE(client->Pull(std::span<const NamedValues>(&pull, 1)).ok());
  EXPECT_EQ(versions, std::vector<uint64_t>({2, 2, 2}));
  std::vector<uint64_t> too_few(2);
  const NamedValues bad{"v", values, too_few};
  EXPECT_EQ(client->Pull(std::span<const NamedValues>(&bad, 1)).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(ClientIntegrationTest, CreatePushPullRoundTrips) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->plan().num_shards(), GetParam());
  const std::vector<float> initial = Iota(20, 1);
  absl::StatusOr<bool> created = client->CreateVariable("w", {4, 5}, initial);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(*created);
  // Another worker creating it alike: fine; with other values it keeps
  // the first creator's only when it asks to reuse them.
  created = client->CreateVariable("w", {4, 5}, initial);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_FALSE(*created);
  created = client->CreateVariable("w", {4, 5}, Iota(20, 100), std::nullopt,
                                   v1::ON_EXISTS_REUSE);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_FALSE(*created);

  std::vector<float> values(20);
  ASSERT_TRUE(client->Pull("w", values).ok());
  EXPECT_EQ(values, initial);

  // SGD with lr = 1: values -= gradient.
  const std::vector<float> gradient = Iota(20, 0.5f);
  ASSERT_TRUE(client->Push("w", gradient).ok());
  ASSERT_TRUE(client->Pull("w", values).ok());
  for (size_t i = 0; i < 20; ++i) EXPECT_EQ(values[i], 0.5f) << i;

  std::vector<float> after(20);
  const std::vector<float> ones(20, 1.0f);
  ASSERT_TRUE(client->PushPull("w", ones, after).ok());
  EXPECT_EQ(after, std::vector<float>(20, -0.5f));

  // Half-precision both ways; these values are exact in both formats.
  PushOptions half;
  half.dtype = v1::BFLOAT16;
  half.pull_dtype = v1::FLOAT16;
  ASSERT_TRUE(client->PushPull("w", ones, after, half).ok());
  EXPECT_EQ(after, std::vector<float>(20, -1.5f));
  PullOptions bf16;
  bf16.dtype = v1::BFLOAT16;
  ASSERT_TRUE(client->Pull("w", values, bf16).ok());
  EXPECT_EQ(values, std::vector<float>(20, -1.5f));
}

TEST_P(ClientIntegrationTest, MultiVariableCalls) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("a", {7}, Iota(7, 1)).ok());
  ASSERT_TRUE(client->CreateVariable("b", {2, 2}, Iota(4, 10)).ok());
  ASSERT_TRUE(client->CreateVariable("c", {1}).ok());
  const std::vector<float> ga(7, 1.0f), gb(4, 2.0f), gc(1, -3.0f);
  const std::vector<NamedGradient> gradients = {
      {"a", ga}, {"b", gb}, {"c", gc}};
  ASSERT_TRUE(client->Push(gradients).ok());

  std::vector<float> a(7), b(4), c(1);
  const std::vector<NamedValues> values = {{"a", a}, {"b", b}, {"c", c}};
  ASSERT_TRUE(client->Pull(values).ok());
  EXPECT_EQ(a, Iota(7, 0));
  EXPECT_EQ(b, Iota(4, 8));
  EXPECT_EQ(c, std::vector<float>{3});

  const std::vector<NamedUpdate> updates = {
      {"a", ga, a}, {"b", gb, b}, {"c", gc, c}};
  ASSERT_TRUE(client->PushPullAsync(updates).get().ok());
  EXPECT_EQ(a, Iota(7, -1));
  EXPECT_EQ(b, Iota(4, 6));
  EXPECT_EQ(c, std::vector<float>{6});
}

TEST_P(ClientIntegrationTest, RefusalsNameTheShard) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  std::vector<float> values(10);
  absl::Status status = client->Pull("missing", values);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("shard "));
  EXPECT_THAT(status.message(), HasSubstr(servers_[0]->address()));

  ASSERT_TRUE(client->CreateVariable("w", {6}).ok());
  EXPECT_EQ(client->CreateVariable("w", {3, 3}).status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_P(ClientIntegrationTest, ConcurrentWorkersLoseNoUpdate) {
  constexpr int kWorkers = 8;
  constexpr int kPushes = 30;
  constexpr size_t kSize = 25;
  const std::vector<float> initial = Iota(kSize, 1000);
  std::vector<float> sum(kSize, 0.0f);
  std::vector<std::vector<std::vector<float>>> gradients(kWorkers);
  for (int w = 0; w < kWorkers; ++w) {
    for (int i = 0; i < kPushes; ++i) {
      std::vector<float> g(kSize);
      for (size_t j = 0; j < kSize; ++j) {
        g[j] = static_cast<float>((w * 7 + i * 3 + j) % 11) - 5;
        sum[j] += g[j];
      }
      gradients[w].push_back(std::move(g));
    }
  }
  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      auto client = Connect();
      ASSERT_NE(client, nullptr);
      ASSERT_TRUE(client->CreateVariable("shared", {5, 5}, initial).ok());
      for (int i = 0; i < kPushes; ++i) {
        PushOptions options;
        options.step = i;
        if (i % 2 == 0) {
          ASSERT_TRUE(client->Push("shared", gradients[w][i], options).ok());
        } else {
          std::vector<float> values(kSize);
          ASSERT_TRUE(
              client->PushPull("shared", gradients[w][i], values, options)
                  .ok());
        }
      }
    });
  }
  for (auto& worker : workers) worker.join();

  auto client = Connect();
  ASSERT_NE(client, nullptr);
  std::vector<float> values(kSize);
  ASSERT_TRUE(client->Pull("shared", values).ok());
  for (size_t j = 0; j < kSize; ++j) {
    EXPECT_EQ(values[j], initial[j] - sum[j]) << j;
  }
}

// In sync mode, with whole calls and with calls cut into parts that go out
// together (one 3-value block per part, 2 in flight per shard).
// A worker restarted with the same worker_id (its seqs count from 1 again)
// has every push applied, and the process it replaced is fenced: its
// pushes fail rather than being acknowledged and dropped.
TEST_P(ClientIntegrationTest, ARestartedWorkerFencesTheOldOneAndIsApplied) {
  ClientOptions options;
  options.worker_id = "trainer";
  std::unique_ptr<Client> old = Connect(options);
  ASSERT_NE(old, nullptr);
  constexpr size_t kN = 10;
  ASSERT_TRUE(old->CreateVariable("w", {kN}).ok());
  const std::vector<float> ones(kN, 1.0f);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(old->Push("w", ones).ok());

  std::unique_ptr<Client> restarted = Connect(options);
  ASSERT_NE(restarted, nullptr);
  EXPECT_GT(restarted->session_epoch(), old->session_epoch());
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(restarted->Push("w", ones).ok());
  std::vector<float> values(kN);
  ASSERT_TRUE(restarted->Pull("w", values).ok());
  EXPECT_THAT(values, ::testing::Each(-5.0f));

  const absl::Status fenced = old->Push("w", ones);
  EXPECT_EQ(fenced.code(), absl::StatusCode::kFailedPrecondition) << fenced;
  EXPECT_THAT(fenced.message(), HasSubstr("fenced"));
  ASSERT_TRUE(restarted->Pull("w", values).ok());
  EXPECT_THAT(values, ::testing::Each(-5.0f));
}

TEST_P(ClientIntegrationTest, SyncWorkersSeeTheMeanAfterEachStep) {
  ClientOptions in_parts;
  in_parts.part_bytes = 16;
  in_parts.parts_in_flight = 2;
  for (const ClientOptions& client_options : {ClientOptions(), in_parts}) {
    SCOPED_TRACE(absl::StrCat("part_bytes ", client_options.part_bytes));
    constexpr int kWorkers = 3;
    StartCluster(Consistency::kSync, kWorkers);
    constexpr size_t kSize = 10 * kBlockSize + 1;
    const std::vector<float> initial(kSize, 10.0f);
    std::vector<std::thread> workers;
    std::vector<std::vector<std::vector<float>>> seen(kWorkers);
    for (int w = 0; w < kWorkers; ++w) {
      workers.emplace_back([&, w] {
        auto client = Connect(client_options);
        ASSERT_NE(client, nullptr);
        ASSERT_TRUE(client->CreateVariable("w", {kSize}, initial).ok());
        for (uint64_t step = 0; step < 3; ++step) {
          // Worker w pushes w + 1 everywhere: the mean is 2.
          const std::vector<float> gradient(kSize, w + 1.0f);
          std::vector<float> values(kSize);
          PushOptions options;
          options.step = step;
          ASSERT_TRUE(client->PushPull("w", gradient, values, options).ok());
          seen[w].push_back(values);
        }
      });
    }
    for (auto& worker : workers) worker.join();
    for (int w = 0; w < kWorkers; ++w) {
      ASSERT_EQ(seen[w].size(), 3u);
      for (int step = 0; step < 3; ++step) {
        EXPECT_EQ(seen[w][step],
                  std::vector<float>(kSize, 10.0f - 2 * (step + 1)))
            << "worker " << w << " step " << step;
      }
    }
  }
}

// An idle worker keeps its lease (the client heartbeats for it), so a step
// waits for it; once it leaves, the other's step completes without it.
TEST_P(ClientIntegrationTest, IdleWorkerStaysAMemberUntilItLeaves) {
  StartCluster(Consistency::kSync, 2, absl::Seconds(2));
  constexpr size_t kSize = 4 * kBlockSize;
  auto a = Connect();
  auto b = Connect();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(
      a->CreateVariable("w", {kSize}, std::vector<float>(kSize, 10)).ok());
  // Longer than two leases without a push from either.
  absl::SleepFor(absl::Seconds(5));
  std::vector<float> values(kSize);
  const std::vector<float> gradient(kSize, 4.0f);
  auto pushed = std::async(std::launch::async, [&] {
    return a->PushPull("w", gradient, values, PushOptions{.step = 0});
  });
  EXPECT_EQ(pushed.wait_for(std::chrono::milliseconds(500)),
            std::future_status::timeout)
      << "the step did not wait for the idle worker";
  ASSERT_TRUE(b->Leave().ok());
  ASSERT_TRUE(pushed.get().ok());
  EXPECT_EQ(values, std::vector<float>(kSize, 6.0f));
  // Leaving twice is harmless; a destroyed client leaves too.
  EXPECT_TRUE(b->Leave().ok());
  b.reset();
  a.reset();
}

// Ssp with staleness 0: a pull of the next step waits for the slower
// worker's push of this one.
TEST_P(ClientIntegrationTest, SspPullOfTheNextStepWaitsForTheSlowest) {
  StartCluster(Consistency::kSsp, 0, absl::Seconds(30), /*staleness=*/0);
  constexpr size_t kSize = 4 * kBlockSize;
  auto a = Connect();
  auto b = Connect();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a->cluster_info().consistency(), "ssp");
  ASSERT_TRUE(
      a->CreateVariable("w", {kSize}, std::vector<float>(kSize, 10)).ok());
  ASSERT_TRUE(
      a->Push("w", std::vector<float>(kSize, 1.0f), PushOptions{.step = 0})
          .ok());
  std::vector<float> values(kSize);
  auto pulled = std::async(std::launch::async, [&] {
    return a->Pull("w", values, PullOptions{.step = 1});
  });
  EXPECT_EQ(pulled.wait_for(std::chrono::milliseconds(500)),
            std::future_status::timeout)
      << "a ran ahead of b";
  ASSERT_TRUE(
      b->Push("w", std::vector<float>(kSize, 2.0f), PushOptions{.step = 0})
          .ok());
  ASSERT_TRUE(pulled.get().ok());
  EXPECT_EQ(values, std::vector<float>(kSize, 7.0f));
}

INSTANTIATE_TEST_SUITE_P(Shards, ClientIntegrationTest,
                         ::testing::Values(2u, 3u),
                         [](const ::testing::TestParamInfo<uint32_t>& info) {
                           return absl::StrCat(info.param, "Shards");
                         });

}  // namespace
}  // namespace ps
