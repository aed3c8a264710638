// Sparse tables through real shards (ps::ParameterServer in this process,
// on loopback) and ps::Client: torch parity of the lazy updates, initial
// rows, admission, eviction, refusals, sync averaging, optimizer changes,
// the memory limit and checkpoints.
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "common/partition.h"
#include "common/row_init.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/ps/v1/ps.grpc.pb.h"
#include "server/server.h"
#include "server/table.h"

#ifndef PS_TABLE_TRAJECTORIES
#error "PS_TABLE_TRAJECTORIES must name tests/data/table_trajectories.txt"
#endif

namespace ps {
namespace {

using ::testing::HasSubstr;

class TablesTest : public ::testing::Test {
 protected:
  void TearDown() override { Stop(); }

  void Stop() {
    for (auto& server : servers_) server->Shutdown().IgnoreError();
    servers_.clear();
  }

  void Start(uint32_t shards, ServerOptions base = {}) {
    Stop();
    for (uint32_t s = 0; s < shards; ++s) {
      ServerOptions options = base;
      options.shard_index = s;
      options.num_shards = shards;
      if (!options.default_optimizer.has_adam() &&
          options.default_optimizer.rule_case() ==
              v1::OptimizerConfig::RULE_NOT_SET) {
        options.default_optimizer.mutable_sgd();
        options.default_optimizer.set_learning_rate(0.1);
      }
      if (!base.checkpoint_dir.empty()) {
        options.checkpoint_dir = absl::StrCat(base.checkpoint_dir, "/", s);
      }
      absl::StatusOr<std::unique_ptr<ParameterServer>> server =
          ParameterServer::Start(options);
      ASSERT_TRUE(server.ok()) << server.status();
      servers_.push_back(std::move(*server));
    }
  }

  std::unique_ptr<Client> Connect(std::string worker = "w") {
    ClientOptions options;
    for (const auto& server : servers_) {
      options.addresses.push_back(server->address());
    }
    options.worker_id = std::move(worker);
    options.retry.initial_backoff = absl::Milliseconds(5);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }

  // A raw stub of shard s, for requests the client would not send.
  std::unique_ptr<v1::ParameterService::Stub> Stub(size_t s) {
    return v1::ParameterService::NewStub(grpc::CreateChannel(
        servers_[s]->address(), grpc::InsecureChannelCredentials()));
  }

  std::unique_ptr<v1::AdminService::Stub> Admin(size_t s) {
    return v1::AdminService::NewStub(grpc::CreateChannel(
        servers_[s]->address(), grpc::InsecureChannelCredentials()));
  }

  v1::TableInfo Info(size_t s, const std::string& table) {
    v1::ListVariablesResponse list;
    grpc::ClientContext context;
    grpc::Status status =
        Admin(s)->ListVariables(&context, v1::ListVariablesRequest(), &list);
    EXPECT_TRUE(status.ok()) << status.error_message();
    for (const v1::VariableInfo& info : list.variables()) {
      if (info.name() == table) return info.table();
    }
    ADD_FAILURE() << "no table " << table << " on shard " << s;
    return v1::TableInfo();
  }

  uint64_t TotalRows(const std::string& table) {
    uint64_t rows = 0;
    for (size_t s = 0; s < servers_.size(); ++s) rows += Info(s, table).rows();
    return rows;
  }

  std::vector<std::unique_ptr<ParameterServer>> servers_;
};

float FromHex(const std::string& hex) {
  return std::bit_cast<float>(
      static_cast<uint32_t>(std::stoul(hex, nullptr, 16)));
}

// ---- torch parity

struct Step {
  std::vector<uint64_t> ids;
  std::vector<float> grads;
  std::map<uint64_t, std::vector<float>> expect;
};

std::map<std::string, std::pair<double, std::vector<Step>>> ReadTrajectories() {
  std::map<std::string, std::pair<double, std::vector<Step>>> rules;
  std::ifstream in(PS_TABLE_TRAJECTORIES);
  std::string line, rule;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string kind;
    words >> kind;
    if (kind == "rule") {
      double lr = 0;
      words >> rule >> lr;
      rules[rule].first = lr;
    } else if (kind == "step") {
      Step step;
      int t = 0;
      words >> t;
      uint64_t id;
      while (words >> id) step.ids.push_back(id);
      rules[rule].second.push_back(std::move(step));
    } else if (kind == "grad") {
      std::string hex;
      while (words >> hex)
        rules[rule].second.back().grads.push_back(FromHex(hex));
    } else if (kind == "expect") {
      uint64_t id = 0;
      words >> id;
      std::string hex;
      std::vector<float>& row = rules[rule].second.back().expect[id];
      while (words >> hex) row.push_back(FromHex(hex));
    }
  }
  return rules;
}

TEST_F(TablesTest, LazyUpdatesFollowTorchOverThirtySteps) {
  const auto rules = ReadTrajectories();
  ASSERT_EQ(rules.size(), 3u) << PS_TABLE_TRAJECTORIES;
  constexpr uint32_t kDim = 4;
  for (const auto& [rule, trajectory] : rules) {
    SCOPED_TRACE(rule);
    Start(2);
    std::unique_ptr<Client> client = Connect();
    ASSERT_NE(client, nullptr);
    TableOptions options;
    options.init.mutable_normal()->set_stddev(0.1);
    options.init.set_seed(3);
    v1::OptimizerConfig optimizer;
    if (rule == "sgd") optimizer.mutable_sgd();
    if (rule == "adagrad") optimizer.mutable_adagrad();
    if (rule == "sparse_adam") optimizer.mutable_adam();
    optimizer.set_learning_rate(trajectory.first);
    options.optimizer = optimizer;
    ASSERT_TRUE(client->CreateTable("emb", kDim, options).ok());
    ASSERT_EQ(trajectory.second.size(), 30u);
    int step_number = 0;
    for (const Step& step : trajectory.second) {
      ++step_number;
      std::vector<float> after(step.ids.size() * kDim);
      ASSERT_TRUE(
          client->PushPullRows("emb", step.ids, step.grads, after).ok());
      for (size_t i = 0; i < step.ids.size(); ++i) {
        const std::vector<float>& expected = step.expect.at(step.ids[i]);
        for (uint32_t j = 0; j < kDim; ++j) {
          EXPECT_NEAR(after[i * kDim + j], expected[j],
                      1e-6 + 1e-5 * std::abs(expected[j]))
              << "step " << step_number << " id " << step.ids[i] << " value "
              << j;
        }
      }
    }
    // Rows a later pull reads are those the last push answered.
    const Step& last = trajectory.second.back();
    std::vector<float> pulled(last.ids.size() * kDim);
    ASSERT_TRUE(client->PullRows("emb", last.ids, pulled).ok());
    for (size_t i = 0; i < last.ids.size(); ++i) {
      for (uint32_t j = 0; j < kDim; ++j) {
        EXPECT_NEAR(pulled[i * kDim + j], last.expect.at(last.ids[i])[j], 1e-5);
      }
    }
  }
}

// ---- rows

TEST_F(TablesTest, APullOfUnknownIdsAnswersInitialRowsAndCreatesNothing) {
  Start(2);
  std::unique_ptr<Client> client = Connect();
  TableOptions options;
  options.init.mutable_uniform()->set_low(-1);
  options.init.mutable_uniform()->set_high(1);
  options.init.set_seed(9);
  ASSERT_TRUE(client->CreateTable("t", 5, options).ok());
  const std::vector<uint64_t> ids = {7, 1ull << 50, 7, 3};
  std::vector<float> rows(ids.size() * 5);
  ASSERT_TRUE(client->PullRows("t", ids, rows).ok());
  for (size_t i = 0; i < ids.size(); ++i) {
    std::vector<float> expected(5);
    InitialRow(options.init, Fnv1a64("t"), ids[i], expected);
    EXPECT_EQ(
        std::vector<float>(rows.begin() + i * 5, rows.begin() + i * 5 + 5),
        expected);
  }
  EXPECT_EQ(TotalRows("t"), 0u);
}

TEST_F(TablesTest, AdmissionCountsPushesBeforeARowExists) {
  Start(2);
  std::unique_ptr<Client> client = Connect();
  TableOptions options;
  options.policy.set_min_count(3);
  ASSERT_TRUE(client->CreateTable("t", 2, options).ok());
  const std::vector<uint64_t> id = {42};
  const std::vector<float> grad = {1, 1};
  std::vector<float> row(2);
  for (int push = 1; push <= 2; ++push) {
    ASSERT_TRUE(client->PushRows("t", id, grad).ok());
    ASSERT_TRUE(client->PullRows("t", id, row).ok());
    EXPECT_THAT(row, ::testing::ElementsAre(0, 0)) << "push " << push;
    EXPECT_EQ(TotalRows("t"), 0u);
  }
  ASSERT_TRUE(client->PushRows("t", id, grad).ok());  // the third admits it
  ASSERT_TRUE(client->PullRows("t", id, row).ok());
  EXPECT_THAT(row, ::testing::ElementsAre(-0.1f, -0.1f));  // SGD, lr 0.1
  EXPECT_EQ(TotalRows("t"), 1u);
}

TEST_F(TablesTest, EvictionKeepsMaxRowsAndDropsTheLeastRecentlyUpdated) {
  Start(1);
  std::unique_ptr<Client> client = Connect();
  TableOptions options;
  options.policy.set_max_rows(3);
  ASSERT_TRUE(client->CreateTable("t", 1, options).ok());
  for (uint64_t id : {1, 2, 3}) {
    ASSERT_TRUE(
        client->PushRows("t", std::vector<uint64_t>{id}, std::vector<float>{1})
            .ok());
  }
  // Row 1 is updated again, so 2 is now the least recently updated.
  ASSERT_TRUE(
      client->PushRows("t", std::vector<uint64_t>{1}, std::vector<float>{1})
          .ok());
  ASSERT_TRUE(
      client->PushRows("t", std::vector<uint64_t>{4}, std::vector<float>{1})
          .ok());
  EXPECT_EQ(Info(0, "t").rows(), 3u);
  EXPECT_EQ(Info(0, "t").rows_evicted(), 1u);
  std::vector<float> rows(4);
  ASSERT_TRUE(
      client->PullRows("t", std::vector<uint64_t>{1, 2, 3, 4}, rows).ok());
  EXPECT_THAT(rows, ::testing::ElementsAre(-0.2f, 0.0f, -0.1f, -0.1f));

  // More new rows in one push than max_rows allows: refused whole.
  absl::Status too_many = client->PushRows(
      "t", std::vector<uint64_t>{10, 11, 12, 13}, std::vector<float>(4, 1));
  EXPECT_EQ(too_many.code(), absl::StatusCode::kResourceExhausted) << too_many;
  EXPECT_EQ(Info(0, "t").rows(), 3u);
}

TEST_F(TablesTest, RowsIdleForEvictAfterStepsGo) {
  Start(1);
  std::unique_ptr<Client> client = Connect();
  TableOptions options;
  options.policy.set_evict_after_steps(2);
  ASSERT_TRUE(client->CreateTable("t", 1, options).ok());
  ASSERT_TRUE(
      client->PushRows("t", std::vector<uint64_t>{1}, std::vector<float>{1})
          .ok());  // step 1
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(
        client->PushRows("t", std::vector<uint64_t>{2}, std::vector<float>{1})
            .ok());  // steps 2, 3
  }
  EXPECT_EQ(Info(0, "t").rows(), 2u);  // row 1 is idle for 2 steps: kept
  ASSERT_TRUE(
      client->PushRows("t", std::vector<uint64_t>{2}, std::vector<float>{1})
          .ok());  // step 4: idle for 3
  EXPECT_EQ(Info(0, "t").rows(), 1u);
  std::vector<float> row(1);
  ASSERT_TRUE(client->PullRows("t", std::vector<uint64_t>{1}, row).ok());
  EXPECT_EQ(row[0], 0.0f);  // back to its initial row
}

// Four workers push to one table at once (PushPullRows, rows shared
// between them) while a fifth pulls. With SGD at rate 0.5 on zero rows and
// small whole gradients every sum is exact in float32, whatever order the
// shards applied the pushes in: each row must end at -0.5 x the sum of
// every gradient pushed to it, and each shard's step must count every push.
TEST_F(TablesTest, PushesOfSeveralWorkersToOneTableAllLand) {
  Start(2);
  constexpr int kWorkers = 4;
  constexpr int kPushes = 30;
  constexpr uint64_t kIds = 2000;
  constexpr uint32_t kDim = 8;
  TableOptions options;
  v1::OptimizerConfig sgd;
  sgd.mutable_sgd();
  sgd.set_learning_rate(0.5);
  options.optimizer = sgd;
  ASSERT_TRUE(Connect()->CreateTable("t", kDim, options).ok());
  std::vector<std::vector<double>> sums(kWorkers,
                                        std::vector<double>(kIds * kDim));
  std::vector<std::future<void>> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.push_back(std::async(std::launch::async, [&, w] {
      std::unique_ptr<Client> client = Connect(absl::StrCat("w", w));
      ASSERT_NE(client, nullptr);
      std::mt19937_64 rng(w);
      for (int k = 0; k < kPushes; ++k) {
        std::vector<uint64_t> ids;
        for (uint64_t id = 0; id < kIds; ++id) {
          if (rng() % 4 == 0) ids.push_back(id);
        }
        std::vector<float> grads(ids.size() * kDim);
        for (size_t i = 0; i < grads.size(); ++i) {
          grads[i] = static_cast<float>(static_cast<int>(rng() % 7) - 3);
          sums[w][ids[i / kDim] * kDim + i % kDim] += grads[i];
        }
        std::vector<float> after(grads.size());
        ASSERT_TRUE(client->PushPullRows("t", ids, grads, after).ok());
      }
    }));
  }
  std::atomic<bool> stop = false;
  auto puller = std::async(std::launch::async, [&] {
    std::unique_ptr<Client> client = Connect("reader");
    ASSERT_NE(client, nullptr);
    std::vector<uint64_t> ids = {0, 1, 999, 1999};
    std::vector<float> rows(ids.size() * kDim);
    while (!stop.load()) ASSERT_TRUE(client->PullRows("t", ids, rows).ok());
  });
  for (auto& worker : workers) worker.get();
  stop = true;
  puller.get();

  std::vector<uint64_t> all(kIds);
  std::iota(all.begin(), all.end(), 0);
  std::vector<float> rows(kIds * kDim);
  ASSERT_TRUE(Connect()->PullRows("t", all, rows).ok());
  for (size_t i = 0; i < rows.size(); ++i) {
    double sum = 0;
    for (const auto& worker : sums) sum += worker[i];
    ASSERT_EQ(rows[i], static_cast<float>(-0.5 * sum))
        << "row " << i / kDim << " value " << i % kDim;
  }
  for (size_t s = 0; s < 2; ++s) {
    EXPECT_EQ(Info(s, "t").step(), uint64_t{kWorkers * kPushes}) << s;
  }
}

// ---- refusals

TEST_F(TablesTest, BadRequestsAreRefusedAndChangeNothing) {
  Start(2);
  std::unique_ptr<Client> client = Connect();
  ASSERT_TRUE(client->CreateTable("t", 2).ok());
  ASSERT_TRUE(client->CreateVariable("v", {4}).ok());
  EXPECT_EQ(client->CreateTable("v", 2).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(client->CreateTable("t", 3).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(client->CreateVariable("t", {4}).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_FALSE(*client->CreateTable("t", 2));  // the same again: fine

  // An id of shard 0 and one of shard 1.
  const uint64_t hash = Fnv1a64("t");
  uint64_t on0 = 0, on1 = 0;
  while (RowShard(hash, on0, 2) != 0) ++on0;
  while (RowShard(hash, on1, 2) != 1) ++on1;
  auto stub = Stub(0);
  auto push = [&](v1::RowSlice rows) {
    v1::PushRequest request;
    *request.add_rows() = std::move(rows);
    v1::PushResponse response;
    grpc::ClientContext context;
    return stub->Push(&context, request, &response);
  };
  auto rows_of = [](std::string table, std::vector<uint64_t> ids,
                    std::vector<float> values) {
    v1::RowSlice rows;
    rows.set_table(std::move(table));
    for (uint64_t id : ids) rows.add_ids(id);
    rows.set_data(std::string(reinterpret_cast<const char*>(values.data()),
                              values.size() * sizeof(float)));
    return rows;
  };
  EXPECT_EQ(push(rows_of("nope", {on0}, {1, 1})).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(push(rows_of("t", {on0}, {1, 1, 1})).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);  // wrong data length
  grpc::Status wrong_shard = push(rows_of("t", {on1}, {1, 1}));
  EXPECT_EQ(wrong_shard.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(wrong_shard.error_message(), HasSubstr("belongs to shard 1"));
  grpc::Status repeated = push(rows_of("t", {on0, on0}, {1, 1, 1, 1}));
  EXPECT_EQ(repeated.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(repeated.error_message(), HasSubstr("twice"));
  // A gradient that is not finite names its row and value, whether it is
  // read in place (float32) or decoded (bfloat16).
  uint64_t on0_too = on0 + 1;
  while (RowShard(hash, on0_too, 2) != 0) ++on0_too;
  grpc::Status nan = push(rows_of("t", {on0, on0_too}, {1, 1, 1, NAN}));
  EXPECT_EQ(nan.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(nan.error_message(),
              HasSubstr(absl::StrCat("gradient of row ", on0_too,
                                     " of table 't' holds nan at value 1")));
  v1::RowSlice nan_bf16 = rows_of("t", {on0, on0_too}, {});
  nan_bf16.set_dtype(v1::BFLOAT16);
  // 1.0, 1.0, inf, 1.0 in bfloat16, little-endian.
  nan_bf16.set_data(std::string("\x80\x3f\x80\x3f\x80\x7f\x80\x3f", 8));
  grpc::Status inf = push(nan_bf16);
  EXPECT_EQ(inf.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(inf.error_message(),
              HasSubstr(absl::StrCat("gradient of row ", on0_too,
                                     " of table 't' holds inf at value 0")));
  v1::RowSlice bad_dtype = rows_of("t", {on0}, {1, 1});
  bad_dtype.set_dtype(static_cast<v1::DType>(7));
  EXPECT_EQ(push(bad_dtype).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Info(0, "t").rows(), 0u);
  EXPECT_EQ(Info(0, "t").step(), 0u);

  // A push whose dense part is bad applies none of its rows either.
  v1::PushRequest mixed;
  *mixed.add_rows() = rows_of("t", {on0}, {1, 1});
  v1::Slice* slice = mixed.add_gradients();
  slice->set_variable("v");
  slice->set_offset(0);
  slice->set_length(99);
  v1::PushResponse response;
  grpc::ClientContext context;
  EXPECT_EQ(stub->Push(&context, mixed, &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Info(0, "t").rows(), 0u);
}

TEST_F(TablesTest, AMemoryLimitRefusesNewRowsWholeUntilEvictionMakesRoom) {
  ServerOptions options;
  // Two tables and 64 KiB of rows.
  options.memory_limit_bytes = 2 * SparseTable::kTableBytes + (64 << 10);
  Start(1, options);
  std::unique_ptr<Client> client = Connect();
  ASSERT_TRUE(client->CreateTable("t", 64).ok());  // SGD: 256 B + 48 a row
  // With max_rows, eviction makes room for new rows under the same limit.
  TableOptions bounded;
  bounded.policy.set_max_rows(50);
  ASSERT_TRUE(client->CreateTable("u", 64, bounded).ok());
  std::vector<uint64_t> ids(300);
  for (uint64_t i = 0; i < ids.size(); ++i) ids[i] = i;
  absl::Status refused =
      client->PushRows("t", ids, std::vector<float>(ids.size() * 64, 1));
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_EQ(Info(0, "t").rows(), 0u);
  ids.resize(100);
  ASSERT_TRUE(
      client->PushRows("t", ids, std::vector<float>(ids.size() * 64, 1)).ok());
  EXPECT_EQ(Info(0, "t").rows(), 100u);

  for (uint64_t round = 0; round < 5; ++round) {
    std::vector<uint64_t> fresh(50);
    for (uint64_t i = 0; i < fresh.size(); ++i) fresh[i] = round * 1000 + i;
    ASSERT_TRUE(
        client->PushRows("u", fresh, std::vector<float>(fresh.size() * 64, 1))
            .ok())
        << round;
  }
  EXPECT_EQ(Info(0, "u").rows(), 50u);
  EXPECT_EQ(Info(0, "u").rows_evicted(), 200u);
}

// ---- sync, optimizer changes, checkpoints

TEST_F(TablesTest, SyncAveragesOverWorkersWithAbsentRowsAsZero) {
  ServerOptions options;
  options.consistency = Consistency::kSync;
  options.num_workers = 2;
  Start(2, options);
  std::unique_ptr<Client> a = Connect("a");
  std::unique_ptr<Client> b = Connect("b");
  ASSERT_TRUE(a->CreateTable("t", 1).ok());
  PushOptions step1;
  step1.step = 1;
  // a pushes rows 1 and 2; b pushes row 1 only: row 2's mean is 4 / 2.
  auto done_a = std::async(std::launch::async, [&] {
    return a->PushRows("t", std::vector<uint64_t>{1, 2},
                       std::vector<float>{2, 4}, step1);
  });
  ASSERT_TRUE(
      b->PushRows("t", std::vector<uint64_t>{1}, std::vector<float>{6}, step1)
          .ok());
  ASSERT_TRUE(done_a.get().ok());
  std::vector<float> rows(2);
  ASSERT_TRUE(a->PullRows("t", std::vector<uint64_t>{1, 2}, rows).ok());
  EXPECT_FLOAT_EQ(rows[0], -0.1f * 4);  // mean of 2 and 6
  EXPECT_FLOAT_EQ(rows[1], -0.1f * 2);  // mean of 4 and 0
}

// A shard's statistics (GetStats).
v1::Stats StatsOf(v1::AdminService::Stub& admin) {
  v1::Stats stats;
  grpc::ClientContext context;
  grpc::Status status = admin.GetStats(&context, v1::GetStatsRequest(), &stats);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return stats;
}

TEST_F(TablesTest,
       DenseAndRowsTravelInOneRequestPerShardAndEqualSeparateCalls) {
  ServerOptions options;
  options.default_optimizer.mutable_adam();
  options.default_optimizer.set_learning_rate(0.01);
  Start(2, options);
  std::unique_ptr<Client> client = Connect();
  ASSERT_NE(client, nullptr);
  constexpr uint32_t kDim = 3;
  const std::vector<float> initial = {0.5f, -1.0f, 2.0f, 0.25f};
  for (const char* suffix : {"together", "apart"}) {
    ASSERT_TRUE(
        client->CreateVariable(absl::StrCat("w_", suffix), {4}, initial).ok());
    ASSERT_TRUE(client->CreateTable(absl::StrCat("t_", suffix), kDim).ok());
  }
  std::vector<std::unique_ptr<v1::AdminService::Stub>> admins;
  for (size_t s = 0; s < servers_.size(); ++s) admins.push_back(Admin(s));
  for (int step = 1; step <= 6; ++step) {
    SCOPED_TRACE(step);
    // Repeated ids (summed), new ids, and ids seen before.
    const std::vector<uint64_t> ids = {uint64_t(step), 7, uint64_t(step) * 11,
                                       7};
    std::vector<float> grads(ids.size() * kDim);
    for (size_t i = 0; i < grads.size(); ++i) {
      grads[i] = 0.1f * static_cast<float>((i * 7 + step) % 5) - 0.2f;
    }
    const std::vector<float> dense = {0.1f * step, -0.2f, 0.3f, 0.05f};

    std::vector<uint64_t> before;
    for (auto& admin : admins) before.push_back(StatsOf(*admin).pushes());
    std::vector<float> values_together(4), rows_together(grads.size());
    const NamedUpdate update{"w_together", dense, values_together};
    const RowGradients rows{"t_together", ids, grads, rows_together};
    ASSERT_TRUE(client
                    ->PushPull(std::span<const NamedUpdate>(&update, 1),
                               std::span<const RowGradients>(&rows, 1))
                    .ok());
    for (size_t s = 0; s < admins.size(); ++s) {
      EXPECT_EQ(StatsOf(*admins[s]).pushes() - before[s], 1u) << "shard " << s;
    }

    std::vector<float> values_apart(4), rows_apart(grads.size());
    ASSERT_TRUE(client->PushPull("w_apart", dense, values_apart).ok());
    ASSERT_TRUE(client->PushPullRows("t_apart", ids, grads, rows_apart).ok());
    EXPECT_EQ(values_together, values_apart);
    EXPECT_EQ(rows_together, rows_apart);
  }
  // A push (no answer) of both, and refusals that send nothing.
  const std::vector<uint64_t> ids = {5};
  const std::vector<float> grad = {1, 1, 1};
  const std::vector<float> ones(4, 1.0f);
  const NamedGradient gradient{"w_together", ones};
  const RowGradients rows{"t_together", ids, grad};
  EXPECT_TRUE(client
                  ->Push(std::span<const NamedGradient>(&gradient, 1),
                         std::span<const RowGradients>(&rows, 1))
                  .ok());
  const RowGradients twice[] = {rows, rows};
  EXPECT_EQ(client->Push({}, twice).code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> out(3);
  const RowGradients answered{"t_together", ids, grad, out};
  EXPECT_EQ(
      client->Push({}, std::span<const RowGradients>(&answered, 1)).code(),
      absl::StatusCode::kInvalidArgument);
  const std::vector<float> two(2);  // one row of 2 values; the table has 3
  const RowGradients wrong_dim{"t_together", ids, two};
  EXPECT_EQ(
      client->Push({}, std::span<const RowGradients>(&wrong_dim, 1)).code(),
      absl::StatusCode::kInvalidArgument);
}

// A push-pull of dense values and rows whose rows after it are not wanted
// (a remote embedding's backward) applies them alike, and the shards do
// not send them back.
TEST_F(TablesTest, RowsNotWantedAfterAPushPullAreNotSent) {
  ServerOptions options;
  options.default_optimizer.mutable_adagrad();
  Start(2, options);
  std::unique_ptr<Client> client = Connect();
  ASSERT_NE(client, nullptr);
  constexpr uint32_t kDim = 16;
  for (const char* suffix : {"wanted", "unwanted"}) {
    ASSERT_TRUE(
        client->CreateVariable(absl::StrCat("w_", suffix), {4}, {}).ok());
    ASSERT_TRUE(client->CreateTable(absl::StrCat("t_", suffix), kDim).ok());
  }
  std::vector<std::unique_ptr<v1::AdminService::Stub>> admins;
  for (size_t s = 0; s < servers_.size(); ++s) admins.push_back(Admin(s));
  auto bytes_out = [&] {
    uint64_t total = 0;
    for (auto& admin : admins) total += StatsOf(*admin).bytes_out();
    return total;
  };
  std::vector<uint64_t> ids(200);
  std::iota(ids.begin(), ids.end(), 1000);
  std::vector<float> grads(ids.size() * kDim);
  for (size_t i = 0; i < grads.size(); ++i) grads[i] = 0.01f * (i % 13);
  const std::vector<float> dense = {0.1f, -0.2f, 0.3f, 0.05f};
  std::vector<float> values_wanted(4), values_unwanted(4);
  std::vector<float> rows_wanted(grads.size());

  uint64_t before = bytes_out();
  const NamedUpdate wanted{"w_wanted", dense, values_wanted};
  const RowGradients with_rows{"t_wanted", ids, grads, rows_wanted};
  ASSERT_TRUE(client
                  ->PushPull(std::span<const NamedUpdate>(&wanted, 1),
                             std::span<const RowGradients>(&with_rows, 1))
                  .ok());
  const uint64_t sent_wanted = bytes_out() - before;
  before = bytes_out();
  const NamedUpdate unwanted{"w_unwanted", dense, values_unwanted};
  const RowGradients without_rows{"t_unwanted", ids, grads};
  ASSERT_TRUE(client
                  ->PushPull(std::span<const NamedUpdate>(&unwanted, 1),
                             std::span<const RowGradients>(&without_rows, 1))
                  .ok());
  const uint64_t sent_unwanted = bytes_out() - before;
  // The rows (200 x 16 floats) and their ids are not in the answers.
  EXPECT_LE(sent_unwanted + ids.size() * (kDim * sizeof(float) + 8),
            sent_wanted)
      << sent_unwanted << " bytes against " << sent_wanted;
  EXPECT_EQ(values_unwanted, values_wanted);
  std::vector<float> rows_unwanted(grads.size());
  ASSERT_TRUE(client->PullRows("t_unwanted", ids, rows_unwanted).ok());
  EXPECT_EQ(rows_unwanted, rows_wanted);
}

TEST_F(TablesTest, AnOptimizerChangeKeepsRowsAndCarriesState) {
  ServerOptions options;
  options.default_optimizer.mutable_adam();
  options.default_optimizer.set_learning_rate(0.01);
  Start(1, options);
  std::unique_ptr<Client> client = Connect();
  ASSERT_TRUE(client->CreateTable("t", 2).ok());
  const std::vector<uint64_t> ids = {5};
  ASSERT_TRUE(client->PushRows("t", ids, std::vector<float>{1, -1}).ok());
  std::vector<float> before(2);
  ASSERT_TRUE(client->PullRows("t", ids, before).ok());
  v1::OptimizerConfig sgd;
  sgd.mutable_sgd();
  sgd.set_learning_rate(1.0);
  v1::SetOptimizerRequest change;
  change.set_variable("t");
  *change.mutable_config() = sgd;
  v1::SetOptimizerResponse changed;
  grpc::ClientContext context;
  ASSERT_TRUE(Admin(0)->SetOptimizer(&context, change, &changed).ok());
  ASSERT_TRUE(client->PushRows("t", ids, std::vector<float>{1, 1}).ok());
  std::vector<float> after(2);
  ASSERT_TRUE(client->PullRows("t", ids, after).ok());
  EXPECT_FLOAT_EQ(after[0], before[0] - 1);
  EXPECT_FLOAT_EQ(after[1], before[1] - 1);
  EXPECT_EQ(Info(0, "t").step(), 2u);  // the step carried over
  EXPECT_EQ(Info(0, "t").rows(), 1u);
}

TEST_F(TablesTest, ATableSurvivesARestartFromItsCheckpoint) {
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "/tables_ckpt_", ::getpid());
  std::filesystem::remove_all(dir);
  ServerOptions options;
  options.checkpoint_dir = dir;
  options.default_optimizer.mutable_adagrad();
  options.default_optimizer.set_learning_rate(0.5);
  // One shard: a cluster checkpoint of several needs their addresses
  // (--peers); server/reshard_test.cc covers tables over several shards.
  Start(1, options);
  std::unique_ptr<Client> client = Connect();
  TableOptions table;
  table.init.mutable_normal()->set_stddev(1);
  table.policy.set_min_count(2);
  ASSERT_TRUE(client->CreateTable("t", 3, table).ok());
  std::vector<uint64_t> ids;
  for (uint64_t i = 0; i < 2500; ++i) ids.push_back(i * 7919);  // > 1 record
  std::vector<float> grads(ids.size() * 3, 0.5f);
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(client->PushRows("t", ids, grads).ok());
  ASSERT_TRUE(
      client
          ->PushRows("t", std::vector<uint64_t>{1}, std::vector<float>{1, 1, 1})
          .ok());  // pending: one push of two
  std::vector<float> before(ids.size() * 3);
  ASSERT_TRUE(client->PullRows("t", ids, before).ok());
  std::vector<v1::TableInfo> infos;
  for (size_t s = 0; s < servers_.size(); ++s) {
    infos.push_back(Info(s, "t"));
    v1::CheckpointResponse written;
    grpc::ClientContext context;
    ASSERT_TRUE(
        Admin(s)->Checkpoint(&context, v1::CheckpointRequest(), &written).ok());
  }
  client.reset();
  Start(1, options);  // restores the newest checkpoint
  client = Connect();
  std::vector<float> restored(ids.size() * 3);
  ASSERT_TRUE(client->PullRows("t", ids, restored).ok());
  EXPECT_EQ(restored, before);
  for (size_t s = 0; s < servers_.size(); ++s) {
    const v1::TableInfo info = Info(s, "t");
    EXPECT_EQ(info.rows(), infos[s].rows());
    EXPECT_EQ(info.step(), infos[s].step());
    EXPECT_EQ(info.pending_ids(), infos[s].pending_ids());
    EXPECT_EQ(info.bytes(), infos[s].bytes());
  }
  // Adagrad's sums came back too: the next push moves as it would have.
  ASSERT_TRUE(client->PushRows("t", ids, grads).ok());
  std::vector<float> next(ids.size() * 3);
  ASSERT_TRUE(client->PullRows("t", ids, next).ok());
  // The first of the 3 pushes only counted toward min_count; 2 were
  // applied (sum 0.5), so this one's sum is 0.75 and its step
  // lr * g / sqrt(0.75).
  EXPECT_NEAR(next[0], restored[0] - 0.25f / std::sqrt(0.75f), 1e-5);
  // The pending id needs one more push to be admitted, as before.
  ASSERT_TRUE(
      client
          ->PushRows("t", std::vector<uint64_t>{1}, std::vector<float>{1, 1, 1})
          .ok());
  EXPECT_EQ(TotalRows("t"), ids.size() + 1);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace ps
