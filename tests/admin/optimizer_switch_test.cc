// Live optimizer changes across two shards, checked step by step against a
// reference that runs the same kernels (optimizer::ApplyUpdate) on a copy,
// so every value must be exactly equal.
//
// State carried over a change (server/store_admin.cc):
//   same rule, new hyper-parameters: every slot and the step count t kept;
//   SGD -> Adam: SGD has no slots, so Adam starts with zero moments m and v,
//     and t continues from the SGD steps (the bias corrections use it);
//   reset_state: fresh state, the next update is step 1.
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "tests/admin/admin_test_util.h"

namespace ps::testing {
namespace {

constexpr uint64_t kBlockSize = 8;
constexpr size_t kSize = 37;  // 5 blocks, the last of 5 values

std::vector<float> InitialValues() {
  std::vector<float> values(kSize);
  for (size_t i = 0; i < kSize; ++i) values[i] = 0.5f - 0.03f * i;
  return values;
}

class OptimizerSwitchTest : public ::testing::Test {
 protected:
  void StartCluster(const std::string& default_optimizer) {
    ServerOptions options;
    options.block_size = kBlockSize;
    options.default_optimizer = Config(default_optimizer);
    shards_ = StartShards(2, options);
    ASSERT_EQ(shards_.size(), 2u);
    auto worker = RawWorker::Connect(ServerAddresses(shards_));
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = *std::move(worker);
    ASSERT_EQ(worker_->plan().block_size(), kBlockSize);
    // The variable spreads over both shards.
    std::set<uint32_t> owners;
    for (uint64_t k = 0; k < worker_->plan().NumBlocks(kSize); ++k) {
      owners.insert(worker_->plan().ShardOf("w", k));
    }
    ASSERT_EQ(owners.size(), 2u);
  }

  // One training step: pull, gradient, push; also on the reference.
  void Step(ReferenceVariable& reference) {
    std::vector<float> values;
    ASSERT_TRUE(worker_->Pull("w", kSize, &values).ok());
    const std::vector<float> gradient = QuadraticGradient(values);
    ASSERT_TRUE(worker_->Push("w", gradient).ok());
    reference.Step(gradient);
  }

  // The server's values equal the reference's, bit for bit, and every
  // block's version is `step`.
  void ExpectMatches(const ReferenceVariable& reference, uint64_t step) {
    std::vector<float> values;
    std::vector<uint64_t> versions;
    ASSERT_TRUE(worker_->Pull("w", kSize, &values, &versions).ok());
    ASSERT_EQ(values.size(), reference.values().size());
    for (size_t i = 0; i < kSize; ++i) {
      ASSERT_EQ(values[i], reference.values()[i]) << "value " << i;
    }
    for (uint64_t version : versions) EXPECT_EQ(version, step);
  }

  void ExpectAllOk(const std::vector<grpc::Status>& statuses) {
    for (size_t s = 0; s < statuses.size(); ++s) {
      EXPECT_TRUE(statuses[s].ok())
          << "shard " << s << ": " << statuses[s].error_message();
    }
  }

  v1::OptimizerConfig GetOptimizer(int shard, const std::string& variable) {
    v1::GetOptimizerRequest request;
    request.set_variable(variable);
    v1::OptimizerConfig config;
    EXPECT_TRUE(worker_->admin(shard)
                    .GetOptimizer(MakeContext().get(), request, &config)
                    .ok());
    return config;
  }

  std::vector<std::unique_ptr<ParameterServer>> shards_;
  std::unique_ptr<RawWorker> worker_;
};

TEST_F(OptimizerSwitchTest, LiveSwitchFromSgdToAdamAcrossTwoShards) {
  const std::string sgd = "sgd {} learning_rate: 0.05";
  StartCluster(sgd);
  ASSERT_TRUE(worker_->Create("w", InitialValues()).ok());
  ReferenceVariable reference(InitialValues(), kBlockSize);
  reference.SetSettings(Resolve(Config(sgd)));

  constexpr uint64_t kSgdSteps = 6;
  for (uint64_t t = 1; t <= kSgdSteps; ++t) {
    Step(reference);
    ExpectMatches(reference, t);
  }
  // SGD keeps no slots.
  for (const auto& state : reference.states()) {
    EXPECT_TRUE(state.momentum.empty());
    EXPECT_TRUE(state.square_avg.empty());
  }

  const v1::OptimizerConfig adam =
      Config("adam { beta1: 0.8 beta2: 0.99 } learning_rate: 0.02");
  ExpectAllOk(SetOptimizerOnAll(*worker_, "w", adam, /*reset_state=*/false));
  for (int s = 0; s < 2; ++s) {
    const v1::OptimizerConfig now = GetOptimizer(s, "w");
    EXPECT_TRUE(now.has_adam()) << s;
    EXPECT_EQ(now.learning_rate(), 0.02);
    EXPECT_EQ(now.config_version(), 2u);
    EXPECT_TRUE(GetOptimizer(s, "").has_sgd()) << "the default is unchanged";
  }
  reference.SetSettings(Resolve(adam));

  // The first Adam step with the carried step count differs from one that
  // would start again at t = 1 (its bias correction is 1 - 0.8^7, not 0.2).
  ReferenceVariable restarted = reference;
  for (auto& state : restarted.states()) state = {};

  std::vector<float> values;
  ASSERT_TRUE(worker_->Pull("w", kSize, &values).ok());
  const std::vector<float> gradient = QuadraticGradient(values);
  ASSERT_TRUE(worker_->Push("w", gradient).ok());
  reference.Step(gradient);
  restarted.Step(gradient);
  ExpectMatches(reference, kSgdSteps + 1);
  EXPECT_NE(reference.values(), restarted.values());
  for (const auto& state : reference.states()) {
    EXPECT_EQ(state.momentum.size(), state.square_avg.size());
    EXPECT_FALSE(state.momentum.empty());
  }

  for (uint64_t t = kSgdSteps + 2; t <= kSgdSteps + 12; ++t) {
    Step(reference);
    ExpectMatches(reference, t);
  }
}

TEST_F(OptimizerSwitchTest, SwitchLandsBetweenUpdatesWhileTraining) {
  const std::string sgd_text = "sgd {} learning_rate: 0.05";
  StartCluster(sgd_text);
  ASSERT_TRUE(worker_->Create("w", InitialValues()).ok());
  const v1::OptimizerConfig adam = Config("adam {} learning_rate: 0.02");

  // The worker trains while the main thread switches every shard's default
  // (which "w" follows). It records what it pushed and saw after each step.
  struct Record {
    std::vector<float> gradient;
    std::vector<float> after;
    std::vector<uint64_t> versions;
  };
  std::vector<Record> records;
  std::atomic<int> steps{0};
  std::atomic<bool> switched{false};
  std::atomic<bool> failed{false};
  std::thread trainer([&] {
    std::vector<float> values;
    if (!worker_->Pull("w", kSize, &values).ok()) {
      failed = true;
      return;
    }
    int after_switch = 0;
    // At least 40 steps and 10 after the switch returned; at most 5000.
    while ((steps < 40 || after_switch < 10) && steps < 5000) {
      Record record;
      record.gradient = QuadraticGradient(values);
      if (!worker_->Push("w", record.gradient).ok() ||
          !worker_->Pull("w", kSize, &values, &record.versions).ok()) {
        failed = true;
        return;
      }
      record.after = values;
      records.push_back(std::move(record));
      if (switched) ++after_switch;
      ++steps;
    }
  });
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (steps < 10 && !failed && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ExpectAllOk(SetOptimizerOnAll(*worker_, "", adam, /*reset_state=*/false));
  switched = true;
  trainer.join();
  ASSERT_FALSE(failed);
  ASSERT_GE(records.size(), 40u);

  // Block by block: each step is wholly SGD or wholly Adam, SGD until the
  // change lands and Adam from then on, with t counting on.
  const optimizer::OptimizerSettings sgd = Resolve(Config(sgd_text));
  const optimizer::OptimizerSettings adam_settings = Resolve(adam);
  const PartitionPlan& plan = worker_->plan();
  int switched_blocks = 0;
  for (uint64_t k = 0; k < plan.NumBlocks(kSize); ++k) {
    const FlatRange range = plan.BlockRange(kSize, k);
    auto slice = [&](const std::vector<float>& v) {
      return std::vector<float>(v.begin() + range.offset,
                                v.begin() + range.offset + range.length);
    };
    std::vector<float> values = slice(InitialValues());
    optimizer::BlockOptimizerState state;
    bool on_adam = false;
    for (size_t n = 0; n < records.size(); ++n) {
      const std::vector<float> gradient = slice(records[n].gradient);
      const std::vector<float> observed = slice(records[n].after);
      auto apply = [&](const optimizer::OptimizerSettings& settings,
                       optimizer::BlockOptimizerState& s,
                       std::vector<float>& v) {
        optimizer::ApplyUpdate(settings, s, v, gradient, std::nullopt);
      };
      optimizer::BlockOptimizerState adam_state = state;
      std::vector<float> adam_values = values;
      apply(adam_settings, adam_state, adam_values);
      if (!on_adam) {
        optimizer::BlockOptimizerState sgd_state = state;
        std::vector<float> sgd_values = values;
        apply(sgd, sgd_state, sgd_values);
        if (observed == sgd_values) {
          state = sgd_state;
          values = sgd_values;
          EXPECT_EQ(records[n].versions[k], n + 1);
          continue;
        }
      }
      ASSERT_EQ(observed, adam_values) << "block " << k << " step " << n + 1
                                       << " is neither an SGD nor an Adam step";
      if (!on_adam) ++switched_blocks;
      on_adam = true;
      state = adam_state;
      values = adam_values;
      EXPECT_EQ(records[n].versions[k], n + 1) << "t counts on";
    }
    EXPECT_TRUE(on_adam) << "block " << k << " never switched";
  }
  EXPECT_EQ(switched_blocks, static_cast<int>(plan.NumBlocks(kSize)));
}

TEST_F(OptimizerSwitchTest, HyperParameterChangeKeepsState) {
  const std::string adam_text = "adam {} learning_rate: 0.01";
  StartCluster(adam_text);
  ASSERT_TRUE(worker_->Create("w", InitialValues()).ok());
  ReferenceVariable reference(InitialValues(), kBlockSize);
  reference.SetSettings(Resolve(Config(adam_text)));
  for (uint64_t t = 1; t <= 5; ++t) {
    Step(reference);
    ExpectMatches(reference, t);
  }

  // A new learning rate, through the default; m, v and t are kept.
  const v1::OptimizerConfig faster = Config("adam {} learning_rate: 0.03");
  ExpectAllOk(SetOptimizerOnAll(*worker_, "", faster, false));
  reference.SetSettings(Resolve(faster));
  ReferenceVariable fresh = reference;
  for (auto& state : fresh.states()) state = {};

  std::vector<float> values;
  ASSERT_TRUE(worker_->Pull("w", kSize, &values).ok());
  const std::vector<float> gradient = QuadraticGradient(values);
  ASSERT_TRUE(worker_->Push("w", gradient).ok());
  // The kept moments: m and v after five steps, as the reference has them.
  const auto kept = reference.states();
  reference.Step(gradient);
  fresh.Step(gradient);
  ExpectMatches(reference, 6);
  EXPECT_NE(reference.values(), fresh.values())
      << "fresh moments would have given another step";
  for (const auto& state : kept) {
    EXPECT_EQ(state.step, 5u);
    EXPECT_FALSE(state.momentum.empty());
  }

  // Betas and eps too, on the one variable (now an override).
  const v1::OptimizerConfig betas =
      Config("adam { beta1: 0.5 beta2: 0.9 eps: 1e-6 } learning_rate: 0.03");
  ExpectAllOk(SetOptimizerOnAll(*worker_, "w", betas, false));
  reference.SetSettings(Resolve(betas));
  for (uint64_t t = 7; t <= 10; ++t) {
    Step(reference);
    ExpectMatches(reference, t);
  }
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(GetOptimizer(s, "w").config_version(), 3u);
  }
}

TEST_F(OptimizerSwitchTest, ResetStateGivesFreshStateAndStepOne) {
  const std::string adam_text = "adam {} learning_rate: 0.01";
  StartCluster(adam_text);
  ASSERT_TRUE(worker_->Create("w", InitialValues()).ok());
  ReferenceVariable reference(InitialValues(), kBlockSize);
  reference.SetSettings(Resolve(Config(adam_text)));
  for (uint64_t t = 1; t <= 4; ++t) Step(reference);
  ExpectMatches(reference, 4);

  const v1::OptimizerConfig again = Config("adam {} learning_rate: 0.02");
  ExpectAllOk(SetOptimizerOnAll(*worker_, "w", again, /*reset_state=*/true));
  // The values stay; the state and the step count start over.
  for (auto& state : reference.states()) state = {};
  reference.SetSettings(Resolve(again));
  ExpectMatches(reference, 0);
  for (int s = 0; s < 2; ++s) {
    v1::ListVariablesResponse list;
    ASSERT_TRUE(worker_->admin(s)
                    .ListVariables(MakeContext().get(),
                                   v1::ListVariablesRequest(), &list)
                    .ok());
    ASSERT_EQ(list.variables_size(), 1);
    for (uint64_t version : list.variables(0).versions()) {
      EXPECT_EQ(version, 0u);
    }
  }
  for (uint64_t t = 1; t <= 4; ++t) {
    Step(reference);
    ExpectMatches(reference, t);
  }

  // A reset to another rule: Momentum from an empty buffer at step 1.
  const v1::OptimizerConfig momentum =
      Config("momentum { momentum: 0.5 } learning_rate: 0.05");
  ExpectAllOk(SetOptimizerOnAll(*worker_, "w", momentum, true));
  for (auto& state : reference.states()) state = {};
  reference.SetSettings(Resolve(momentum));
  for (uint64_t t = 1; t <= 3; ++t) {
    Step(reference);
    ExpectMatches(reference, t);
  }
}

TEST_F(OptimizerSwitchTest, BadConfigOnOneVariableLeavesAllShardsUnchanged) {
  const std::string adam_text = "adam {} learning_rate: 0.01";
  StartCluster(adam_text);
  ASSERT_TRUE(worker_->Create("w", InitialValues()).ok());
  ASSERT_TRUE(worker_->Create("u", std::vector<float>(20, 0.25f)).ok());
  const v1::OptimizerConfig own = Config("momentum {} learning_rate: 0.1");
  ExpectAllOk(SetOptimizerOnAll(*worker_, "u", own, false));
  ReferenceVariable reference(InitialValues(), kBlockSize);
  reference.SetSettings(Resolve(Config(adam_text)));
  for (uint64_t t = 1; t <= 3; ++t) Step(reference);

  struct Snapshot {
    std::string default_config, w_config, u_config, list;
    std::vector<float> w_values, u_values;
  };
  auto snapshot = [&](int s) {
    Snapshot snap;
    snap.default_config = GetOptimizer(s, "").SerializeAsString();
    snap.w_config = GetOptimizer(s, "w").SerializeAsString();
    snap.u_config = GetOptimizer(s, "u").SerializeAsString();
    v1::ListVariablesResponse list;
    EXPECT_TRUE(worker_->admin(s)
                    .ListVariables(MakeContext().get(),
                                   v1::ListVariablesRequest(), &list)
                    .ok());
    snap.list = list.SerializeAsString();
    EXPECT_TRUE(worker_->Pull("w", kSize, &snap.w_values).ok());
    EXPECT_TRUE(worker_->Pull("u", 20, &snap.u_values).ok());
    return snap;
  };
  const Snapshot before[2] = {snapshot(0), snapshot(1)};

  v1::OptimizerConfig bad = Config("adam {} learning_rate: 0.01");
  bad.mutable_adam()->set_beta1(1.5);
  for (const std::string variable : {"w", ""}) {
    for (const grpc::Status& status :
         SetOptimizerOnAll(*worker_, variable, bad, false)) {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_NE(status.error_message().find("adam.beta1"), std::string::npos)
          << status.error_message();
    }
  }
  for (const grpc::Status& status :
       SetOptimizerOnAll(*worker_, "w", bad, /*reset_state=*/true)) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  for (const grpc::Status& status : SetOptimizerOnAll(
           *worker_, "no_such_variable", Config(adam_text), false)) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  }

  for (int s = 0; s < 2; ++s) {
    const Snapshot after = snapshot(s);
    EXPECT_EQ(after.default_config, before[s].default_config) << s;
    EXPECT_EQ(after.w_config, before[s].w_config) << s;
    EXPECT_EQ(after.u_config, before[s].u_config) << s;
    EXPECT_EQ(after.list, before[s].list) << s;
    EXPECT_EQ(after.w_values, before[s].w_values) << s;
    EXPECT_EQ(after.u_values, before[s].u_values) << s;
    EXPECT_EQ(GetOptimizer(s, "").config_version(), 2u);
  }
  // Training goes on with the state it had.
  for (uint64_t t = 4; t <= 6; ++t) {
    Step(reference);
    ExpectMatches(reference, t);
  }
}

}  // namespace
}  // namespace ps::testing
