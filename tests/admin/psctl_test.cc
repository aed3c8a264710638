// psctl end to end: the real binary, run as a child process against a
// two-shard cluster in this process.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/partition.h"
#include "server/store_impl.h"
#include "tests/admin/admin_test_util.h"

namespace ps::testing {
namespace {

using nlohmann::json;

constexpr char kAdminToken[] = "psctl-admin-token";
constexpr char kWorkerToken[] = "psctl-worker-token";

int Lines(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

class PsctlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options;
    options.block_size = 8;
    options.default_optimizer = Config("sgd {} learning_rate: 0.1");
    options.admin_tokens_file = dir_.WriteFile(
        "admins", std::string("# operators\n\n") + kAdminToken + " ops\n");
    options.worker_tokens_file =
        dir_.WriteFile("workers", std::string(kWorkerToken) + " trainer\n");
    admin_token_file_ = dir_.WriteFile(
        "admin.token", std::string("# mine\n") + kAdminToken + "  ops\n");
    worker_token_file_ =
        dir_.WriteFile("worker.token", std::string(kWorkerToken) + "\n");
    shards_ = StartShards(2, options);
    ASSERT_EQ(shards_.size(), 2u);
    auto worker = RawWorker::Connect(ServerAddresses(shards_), kAdminToken);
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = *std::move(worker);
    ASSERT_TRUE(worker_->Create("w", std::vector<float>(37, 1.0f)).ok());
    ASSERT_TRUE(worker_->Create("b", std::vector<float>(5, 0.0f)).ok());
    for (int t = 0; t < 3; ++t) {
      ASSERT_TRUE(worker_->Push("w", std::vector<float>(37, 0.1f)).ok());
    }
  }

  // psctl with the cluster, the admin token and `args`.
  ProcessResult Psctl(std::vector<std::string> args,
                      const std::string& token_file = "") {
    std::vector<std::string> full = {
        "--servers=" + ServerList(shards_),
        "--token_file=" + (token_file.empty() ? admin_token_file_ : token_file),
        "--timeout_s=5"};
    full.insert(full.end(), args.begin(), args.end());
    return RunProcess(PSCTL_PATH, full, std::chrono::seconds(30));
  }

  // psctl with only `args`.
  ProcessResult Bare(const std::vector<std::string>& args) {
    return RunProcess(PSCTL_PATH, args, std::chrono::seconds(30));
  }

  json Json(const ProcessResult& result) {
    json j = json::parse(result.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << result.out;
    return j;
  }

  v1::OptimizerConfig GetOptimizer(int shard, const std::string& variable) {
    v1::GetOptimizerRequest request;
    request.set_variable(variable);
    v1::OptimizerConfig config;
    EXPECT_TRUE(
        worker_->admin(shard)
            .GetOptimizer(MakeContext(kAdminToken).get(), request, &config)
            .ok());
    return config;
  }

  TempDir dir_;
  std::string admin_token_file_;
  std::string worker_token_file_;
  std::vector<std::unique_ptr<ParameterServer>> shards_;
  std::unique_ptr<RawWorker> worker_;
};

TEST_F(PsctlTest, HelpForEveryCommand) {
  ProcessResult help = Bare({"--help"});
  EXPECT_EQ(help.exit_code, 0) << help.err;
  for (const char* part :
       {"Usage: psctl", "optimizer set RULE", "--servers", "--token_file",
        "--tls_ca_file", "--json", "--beta1", "Exit status"}) {
    EXPECT_TRUE(Contains(help.out, part)) << part;
  }
  for (const std::vector<std::string>& command :
       std::vector<std::vector<std::string>>{{"info"},
                                             {"vars"},
                                             {"vars", "delete"},
                                             {"optimizer", "get"},
                                             {"optimizer", "set"},
                                             {"lr", "set"},
                                             {"schedule", "set"},
                                             {"stats"},
                                             {"checkpoint"},
                                             {"health"}}) {
    std::vector<std::string> args = {"help"};
    args.insert(args.end(), command.begin(), command.end());
    ProcessResult by_help = Bare(args);
    EXPECT_EQ(by_help.exit_code, 0) << command[0];
    EXPECT_TRUE(Contains(by_help.out, "Usage: psctl " + command[0]))
        << by_help.out;
    args = command;
    args.push_back("--help");
    ProcessResult by_flag = Bare(args);
    EXPECT_EQ(by_flag.exit_code, 0);
    EXPECT_EQ(by_flag.out, by_help.out);
  }
  EXPECT_TRUE(Contains(Bare({"help", "optimizer", "set"}).out,
                       "--decoupled_weight_decay"));
  EXPECT_TRUE(Contains(Bare({"help", "schedule", "set"}).out, "--t_max"));
}

TEST_F(PsctlTest, UsageErrorsGetOneLineAndExitTwo) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"frobnicate"}, "unknown command 'frobnicate'"},
      {{}, "no command"},
      {{"optimizer", "set", "adamax"}, "unknown rule 'adamax'"},
      {{"optimizer", "set"}, "needs a rule"},
      {{"optimizer", "frob"}, "'optimizer' needs get or set"},
      {{"--bogus", "info"}, "unknown flag --bogus"},
      {{"info", "--nobogus"}, "unknown flag --nobogus"},
      {{"optimizer", "set", "sgd", "--beta1=0.5"},
       "--beta1 does not apply to 'optimizer set sgd'"},
      {{"optimizer", "set", "adam", "--momentum=0.5"},
       "--momentum does not apply to 'optimizer set adam'"},
      {{"optimizer", "set", "momentum", "--amsgrad"},
       "--amsgrad does not apply"},
      {{"info", "--var=w"}, "--var does not apply to 'info'"},
      {{"optimizer", "set", "adam", "--beta1=abc"}, "bad value for --beta1"},
      {{"lr", "set", "fast"}, "'fast' is not a number"},
      {{"lr", "set"}, "needs a value"},
      {{"schedule", "set", "linear"}, "unknown schedule 'linear'"},
      {{"schedule", "set", "cosine"}, "needs --t_max"},
      {{"schedule", "set", "cosine", "--t_max=10", "--step_size=3"},
       "--step_size does not apply"},
      {{"info", "extra"}, "unexpected argument 'extra'"},
      {{"--servers=", "info"}, "empty entry"},
      {{"stats", "--interval_s=0", "--watch"}, "--interval_s"}};
  for (const auto& [args, message] : cases) {
    const ProcessResult result = Psctl(args);
    EXPECT_EQ(result.exit_code, 2) << args.size() << " " << message;
    EXPECT_TRUE(Contains(result.err, message)) << result.err;
    EXPECT_EQ(Lines(result.err), 1) << result.err;
    EXPECT_TRUE(result.out.empty()) << result.out;
  }
}

TEST_F(PsctlTest, InfoVarsAndHealth) {
  ProcessResult info = Psctl({"info"});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_TRUE(Contains(info.out, "BLOCK SIZE"));
  EXPECT_TRUE(Contains(info.out, shards_[0]->address()));
  EXPECT_TRUE(Contains(info.out, shards_[1]->address()));
  EXPECT_TRUE(Contains(info.out, "sgd {"));
  EXPECT_EQ(Lines(info.out), 3);

  json j = Json(Psctl({"--json", "info"}));
  ASSERT_EQ(j["shards"].size(), 2u);
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(j["shards"][s]["shard_index"], s);
    EXPECT_EQ(j["shards"][s]["num_shards"], 2);
    EXPECT_EQ(j["shards"][s]["block_size"], 8);
    EXPECT_EQ(j["shards"][s]["config_version"], 1);
    EXPECT_TRUE(j["shards"][s]["default_optimizer"].contains("sgd"));
  }
  EXPECT_TRUE(j["ok"]);

  // Listed in another order: shown in shard order
  // (PsctlServersTest.ServersMayBeListedInAnyOrder).
  ProcessResult swapped = RunProcess(
      PSCTL_PATH,
      {"--servers=" + shards_[1]->address() + "," + shards_[0]->address(),
       "--token_file=" + admin_token_file_, "info"});
  EXPECT_EQ(swapped.exit_code, 0) << swapped.err;
  EXPECT_EQ(swapped.out, info.out);

  ProcessResult vars = Psctl({"vars"});
  ASSERT_EQ(vars.exit_code, 0) << vars.err;
  EXPECT_TRUE(Contains(vars.out, "VARIABLE"));
  EXPECT_EQ(Lines(vars.out), 3);
  j = Json(Psctl({"vars", "--json"}));
  ASSERT_EQ(j["variables"].size(), 2u);
  const json& b = j["variables"][0];
  const json& w = j["variables"][1];
  EXPECT_EQ(b["name"], "b");
  EXPECT_EQ(w["name"], "w");
  EXPECT_EQ(w["shape"], json::array({37}));
  EXPECT_EQ(w["size"], 37);
  EXPECT_EQ(w["blocks"], 5);
  EXPECT_EQ(w["min_step"], 3);
  EXPECT_EQ(w["max_step"], 3);
  EXPECT_EQ(w["rule"], "sgd");
  EXPECT_EQ(w["optimizer_override"], false);
  EXPECT_EQ(b["blocks"], 1);
  EXPECT_EQ(b["max_step"], 0);

  ProcessResult health =
      RunProcess(PSCTL_PATH, {"--servers=" + ServerList(shards_), "health"});
  EXPECT_EQ(health.exit_code, 0) << health.err;
  EXPECT_EQ(std::count(health.out.begin(), health.out.end(), 'S') >= 2, true);
  EXPECT_TRUE(Contains(health.out, "SERVING"));
  j = Json(RunProcess(
      PSCTL_PATH, {"--servers=" + ServerList(shards_), "--json", "health"}));
  ASSERT_EQ(j["shards"].size(), 2u);
  EXPECT_EQ(j["shards"][0]["status"], "SERVING");
  EXPECT_EQ(j["shards"][1]["status"], "SERVING");
}

TEST_F(PsctlTest, OptimizerSetGetLrAndSchedule) {
  ProcessResult set = Psctl(
      {"optimizer", "set", "adam", "--lr=0.01", "--beta1=0.8", "--amsgrad"});
  ASSERT_EQ(set.exit_code, 0) << set.err;
  EXPECT_TRUE(Contains(set.out, "1 -> 2")) << set.out;
  EXPECT_EQ(Lines(set.out), 4);  // title, header, two shards
  for (int s = 0; s < 2; ++s) {
    const v1::OptimizerConfig config = GetOptimizer(s, "");
    EXPECT_TRUE(config.has_adam());
    EXPECT_EQ(config.adam().beta1(), 0.8);
    EXPECT_TRUE(config.adam().amsgrad());
    EXPECT_FALSE(config.adam().has_beta2());
    EXPECT_EQ(config.learning_rate(), 0.01);
    EXPECT_EQ(config.config_version(), 2u);
  }

  json j = Json(Psctl({"optimizer", "get", "--json"}));
  ASSERT_EQ(j["shards"].size(), 2u);
  EXPECT_TRUE(j["consistent"]);
  for (const json& s : j["shards"]) {
    EXPECT_EQ(s["config_version"], 2);
    EXPECT_EQ(s["rule"], "adam");
    EXPECT_EQ(s["config"]["adam"]["beta1"], 0.8);
    EXPECT_EQ(s["config"]["learning_rate"], 0.01);
  }
  ProcessResult get = Psctl({"optimizer", "get", "--var=w"});
  ASSERT_EQ(get.exit_code, 0);
  EXPECT_TRUE(Contains(get.out, "adam {"));

  // One variable: its own optimizer; then only its rate; then its schedule.
  j = Json(Psctl({"--json", "optimizer", "set", "momentum", "--var=w",
                  "--momentum=0.5", "--nesterov", "--weight_decay=0.001"}));
  EXPECT_TRUE(j["ok"]);
  for (const json& s : j["shards"]) {
    EXPECT_EQ(s["previous_config_version"], 2);
    EXPECT_EQ(s["config_version"], 3);
    EXPECT_EQ(s["code"], "OK");
  }
  ProcessResult lr = Psctl({"lr", "set", "0.002", "--var=w"});
  ASSERT_EQ(lr.exit_code, 0) << lr.err;
  EXPECT_TRUE(Contains(lr.out, "3 -> 4"));
  ProcessResult schedule =
      Psctl({"schedule", "set", "cosine", "--t_max=100", "--eta_min=0.0001",
             "--warmup_steps=5", "--var=w"});
  ASSERT_EQ(schedule.exit_code, 0) << schedule.err;
  for (int s = 0; s < 2; ++s) {
    const v1::OptimizerConfig config = GetOptimizer(s, "w");
    ASSERT_TRUE(config.has_momentum());
    EXPECT_EQ(config.momentum().momentum(), 0.5);
    EXPECT_TRUE(config.momentum().nesterov());
    EXPECT_EQ(config.weight_decay(), 0.001);
    EXPECT_EQ(config.learning_rate(), 0.002);
    EXPECT_EQ(config.schedule().cosine().t_max(), 100u);
    EXPECT_EQ(config.schedule().cosine().eta_min(), 0.0001);
    EXPECT_EQ(config.schedule().warmup_steps(), 5u);
    EXPECT_EQ(config.config_version(), 5u);
    // The default is untouched.
    EXPECT_TRUE(GetOptimizer(s, "").has_adam());
  }
  // A new rule keeps the schedule in force.
  ASSERT_EQ(
      Psctl({"optimizer", "set", "rmsprop", "--var=w", "--centered"}).exit_code,
      0);
  for (int s = 0; s < 2; ++s) {
    const v1::OptimizerConfig config = GetOptimizer(s, "w");
    EXPECT_TRUE(config.rmsprop().centered());
    EXPECT_EQ(config.schedule().cosine().t_max(), 100u);
    EXPECT_FALSE(config.has_learning_rate());
  }
  // Vars shows the override.
  j = Json(Psctl({"--json", "vars"}));
  EXPECT_EQ(j["variables"][1]["rule"], "rmsprop");
  EXPECT_EQ(j["variables"][1]["optimizer_override"], true);
  EXPECT_EQ(j["variables"][0]["rule"], "adam");
  // Back to a constant rate, with reset_state.
  ASSERT_EQ(Psctl({"schedule", "set", "none", "--var=w"}).exit_code, 0);
  EXPECT_FALSE(GetOptimizer(0, "w").has_schedule() &&
               GetOptimizer(0, "w").schedule().kind_case() !=
                   v1::LearningRateSchedule::KIND_NOT_SET);
  ASSERT_EQ(
      Psctl({"optimizer", "set", "sgd", "--var=w", "--reset_state"}).exit_code,
      0);
  std::vector<float> values;
  std::vector<uint64_t> versions;
  ASSERT_TRUE(worker_->Pull("w", 37, &values, &versions).ok());
  for (uint64_t v : versions) EXPECT_EQ(v, 0u);
}

TEST_F(PsctlTest, VarTakesAGlobAndDefaultChangesCountTheOverrides) {
  for (const char* name : {"enc.0.weight", "enc.1.weight", "enc.0.bias"}) {
    ASSERT_TRUE(worker_->Create(name, std::vector<float>(3, 1.0f)).ok());
  }
  // A glob changes every variable it matches (each then has its own).
  ProcessResult lr = Psctl({"lr", "set", "0.5", "--var=enc.*.weight"});
  ASSERT_EQ(lr.exit_code, 0) << lr.err;
  EXPECT_TRUE(Contains(lr.out, "2 variables matching 'enc.*.weight'"))
      << lr.out;
  EXPECT_TRUE(Contains(lr.out, "enc.1.weight")) << lr.out;
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(GetOptimizer(s, "enc.0.weight").learning_rate(), 0.5);
    EXPECT_EQ(GetOptimizer(s, "enc.1.weight").learning_rate(), 0.5);
    EXPECT_EQ(GetOptimizer(s, "enc.0.bias").learning_rate(), 0.1);
  }
  json j = Json(Psctl({"--json", "optimizer", "get", "--var=enc.?.weight"}));
  ASSERT_EQ(j["variables"].size(), 2u);
  EXPECT_EQ(j["variables"][0]["variable"], "enc.0.weight");
  EXPECT_EQ(j["variables"][1]["shards"][0]["config"]["learning_rate"], 0.5);
  EXPECT_TRUE(j["ok"]);
  j = Json(Psctl({"--json", "vars", "--var=enc.*"}));
  ASSERT_EQ(j["variables"].size(), 3u);
  EXPECT_EQ(j["variables"][0]["name"], "enc.0.bias");
  EXPECT_EQ(j["variables"][1]["optimizer_override"], true);

  // A glob that matches nothing is an error that says so, and changes
  // nothing.
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{
           {"lr", "set", "0.7", "--var=dec.*"},
           {"optimizer", "set", "adam", "--var=dec.*"},
           {"optimizer", "get", "--var=dec.*"},
           {"vars", "--var=dec.*"},
           {"vars", "delete", "--var=dec.*"}}) {
    ProcessResult none = Psctl(args);
    EXPECT_EQ(none.exit_code, 2) << args[0];
    EXPECT_TRUE(Contains(none.err, "'dec.*' matches no variable")) << none.err;
  }
  EXPECT_EQ(GetOptimizer(0, "").config_version(), 3u);

  // A change of the default says how many kept their own, and how to
  // change them all.
  ProcessResult base = Psctl({"lr", "set", "0.3"});
  ASSERT_EQ(base.exit_code, 0) << base.err;
  EXPECT_TRUE(Contains(base.out, "2 variables keep their own optimizer"))
      << base.out;
  EXPECT_TRUE(Contains(base.out, "--var '*'")) << base.out;
  j = Json(Psctl({"--json", "optimizer", "set", "momentum"}));
  EXPECT_EQ(j["kept_overrides"], 2);
  EXPECT_EQ(GetOptimizer(0, "enc.0.weight").learning_rate(), 0.5);
  // --var '*' then reaches every variable.
  ASSERT_EQ(Psctl({"lr", "set", "0.25", "--var=*"}).exit_code, 0);
  for (const char* name : {"w", "b", "enc.0.weight", "enc.0.bias"}) {
    EXPECT_EQ(GetOptimizer(1, name).learning_rate(), 0.25) << name;
  }
}

TEST_F(PsctlTest, VarsDeleteRemovesWhatTheGlobMatchesOnEveryShard) {
  for (const char* name : {"old/a", "old/b", "older"}) {
    ASSERT_TRUE(worker_->Create(name, std::vector<float>(20, 1.0f)).ok());
  }
  // A sparse table goes the same way.
  v1::CreateTableRequest table;
  table.set_name("old/emb");
  table.set_dim(4);
  for (int s = 0; s < 2; ++s) {
    v1::CreateTableResponse created;
    ASSERT_TRUE(
        worker_->parameters(s)
            .CreateTable(MakeContext(kWorkerToken).get(), table, &created)
            .ok());
  }
  ProcessResult usage = Psctl({"vars", "delete"});
  EXPECT_EQ(usage.exit_code, 2);
  EXPECT_TRUE(Contains(usage.err, "needs --var")) << usage.err;
  // A worker's token may not delete.
  ProcessResult denied =
      Psctl({"vars", "delete", "--var=old/*"}, worker_token_file_);
  EXPECT_EQ(denied.exit_code, 1);

  ProcessResult deleted = Psctl({"vars", "delete", "--var=old/*"});
  ASSERT_EQ(deleted.exit_code, 0) << deleted.err;
  EXPECT_TRUE(Contains(deleted.out, "3 variables and tables matching 'old/*'"))
      << deleted.out;
  for (int s = 0; s < 2; ++s) {
    v1::ListVariablesResponse list;
    ASSERT_TRUE(worker_->admin(s)
                    .ListVariables(MakeContext(kAdminToken).get(),
                                   v1::ListVariablesRequest(), &list)
                    .ok());
    std::vector<std::string> names;
    for (const auto& info : list.variables()) names.push_back(info.name());
    EXPECT_EQ(names, (std::vector<std::string>{"b", "older", "w"}));
  }
  // Pushes to a deleted variable are NOT_FOUND; it can be created afresh.
  EXPECT_EQ(worker_->Push("old/a", std::vector<float>(20, 0.1f)).error_code(),
            grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(worker_->Create("old/a", std::vector<float>(3, 2.0f)).ok());
  std::vector<float> values;
  ASSERT_TRUE(worker_->Pull("old/a", 3, &values, nullptr).ok());
  EXPECT_EQ(values, std::vector<float>(3, 2.0f));

  json j = Json(Psctl({"--json", "vars", "delete", "--var=older"}));
  EXPECT_TRUE(j["ok"]);
  ASSERT_EQ(j["variables"].size(), 1u);
  EXPECT_EQ(j["variables"][0]["variable"], "older");
}

TEST_F(PsctlTest, RefusedChangesExitNonZeroNamingTheShards) {
  // A worker token may not change anything.
  ProcessResult denied =
      Psctl({"optimizer", "set", "adam"}, worker_token_file_);
  EXPECT_EQ(denied.exit_code, 1);
  EXPECT_TRUE(Contains(denied.err, "PERMISSION_DENIED")) << denied.err;
  EXPECT_TRUE(Contains(denied.err, "0 (" + shards_[0]->address() + ")"));
  EXPECT_TRUE(Contains(denied.err, "1 (" + shards_[1]->address() + ")"));
  EXPECT_EQ(Lines(denied.err), 1);

  // No token at all.
  ProcessResult anonymous = RunProcess(
      PSCTL_PATH, {"--servers=" + ServerList(shards_), "lr", "set", "0.5"});
  EXPECT_EQ(anonymous.exit_code, 1);
  EXPECT_TRUE(Contains(anonymous.err, "UNAUTHENTICATED"));

  // Invalid: refused here, nothing sent.
  ProcessResult invalid = Psctl({"optimizer", "set", "adam", "--beta1=1.5"});
  EXPECT_EQ(invalid.exit_code, 2);
  EXPECT_TRUE(Contains(invalid.err, "adam.beta1")) << invalid.err;
  ProcessResult negative = Psctl({"lr", "set", "-1"});
  EXPECT_EQ(negative.exit_code, 2);
  EXPECT_TRUE(Contains(negative.err, "learning_rate")) << negative.err;
  // Beyond float32, where the shards compute: it once exited 0.
  ProcessResult huge = Psctl({"lr", "set", "1e39"});
  EXPECT_EQ(huge.exit_code, 2);
  EXPECT_TRUE(Contains(huge.err, "float32")) << huge.err;
  ProcessResult tiny = Psctl({"optimizer", "set", "adam", "--eps=1e-50"});
  EXPECT_EQ(tiny.exit_code, 2);
  EXPECT_TRUE(Contains(tiny.err, "adam.eps")) << tiny.err;

  // Unknown variable: every shard refuses.
  ProcessResult missing = Psctl({"lr", "set", "0.1", "--var=nope"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_TRUE(Contains(missing.err, "NOT_FOUND"));
  json j = Json(Psctl({"--json", "lr", "set", "0.1", "--var=nope"}));
  EXPECT_FALSE(j["ok"]);
  EXPECT_EQ(j["failed_shards"], json::array({0, 1}));

  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(GetOptimizer(s, "").config_version(), 1u);
    EXPECT_TRUE(GetOptimizer(s, "").has_sgd());
  }
}

TEST_F(PsctlTest, ShardDownIsNamedAndNothingIsChanged) {
  shards_[1]->Shutdown().IgnoreError();
  shards_[1]->Wait();
  ProcessResult lr = Psctl({"--timeout_s=2", "lr", "set", "0.5"});
  EXPECT_EQ(lr.exit_code, 1);
  EXPECT_TRUE(Contains(lr.err, "1 (" + shards_[1]->address() + ")")) << lr.err;
  EXPECT_FALSE(Contains(lr.err, "0 (" + shards_[0]->address() + ")"));
  EXPECT_TRUE(Contains(lr.err, "nothing was changed"));
  EXPECT_EQ(GetOptimizer(0, "").config_version(), 1u);

  ProcessResult health = Psctl({"--timeout_s=2", "health"});
  EXPECT_EQ(health.exit_code, 1);
  EXPECT_TRUE(Contains(health.err, "1 (" + shards_[1]->address() + ")"));
  ProcessResult stats = Psctl({"--timeout_s=2", "stats"});
  EXPECT_EQ(stats.exit_code, 1);
  EXPECT_TRUE(Contains(stats.out, "UNAVAILABLE") ||
              Contains(stats.out, "DEADLINE_EXCEEDED"));
}

// --servers must name every shard of one cluster once, in any order; else
// psctl changes nothing and exits non-zero.
class PsctlServersTest : public PsctlTest {
 protected:
  // psctl with `servers` as --servers, the admin token and `args`.
  ProcessResult With(const std::string& servers,
                     std::vector<std::string> args) {
    args.insert(args.begin(),
                {"--servers=" + servers, "--token_file=" + admin_token_file_,
                 "--timeout_s=5"});
    return RunProcess(PSCTL_PATH, args, std::chrono::seconds(30));
  }

  // Neither shard's default optimizer changed.
  void ExpectUnchanged() {
    for (int s = 0; s < 2; ++s) {
      const v1::OptimizerConfig config = GetOptimizer(s, "");
      EXPECT_EQ(config.config_version(), 1u) << "shard " << s;
      EXPECT_EQ(config.learning_rate(), 0.1) << "shard " << s;
    }
  }

  std::string Address(int shard) const { return shards_[shard]->address(); }
  int Port(int shard) const { return shards_[shard]->port(); }
};

TEST_F(PsctlServersTest, ASubsetOfTheShardsChangesNothing) {
  for (int s = 0; s < 2; ++s) {
    SCOPED_TRACE(s);
    ProcessResult lr = With(Address(s), {"lr", "set", "0.5"});
    EXPECT_EQ(lr.exit_code, 1) << lr.err;
    EXPECT_TRUE(Contains(lr.err, "num_shards = 2")) << lr.err;
    EXPECT_TRUE(Contains(lr.err, "nothing was changed")) << lr.err;
    EXPECT_TRUE(lr.out.empty()) << lr.out;
    ExpectUnchanged();
  }
  json j = Json(With(Address(1), {"--json", "optimizer", "set", "adam"}));
  EXPECT_FALSE(j["ok"]);
  EXPECT_FALSE(j["sent"]);
  ExpectUnchanged();
  // Reading part of a cluster is refused too: it would show part of it.
  for (const std::vector<std::string>& command :
       std::vector<std::vector<std::string>>{{"vars"},
                                             {"optimizer", "get"},
                                             {"stats"},
                                             {"checkpoint"},
                                             {"info"}}) {
    ProcessResult result = With(Address(0), command);
    EXPECT_EQ(result.exit_code, 1) << command[0] << ": " << result.err;
    EXPECT_TRUE(Contains(result.err, "num_shards = 2"))
        << command[0] << ": " << result.err;
  }
}

TEST_F(PsctlServersTest, AShardListedTwiceChangesNothing) {
  // The same entry twice: refused before anything is sent.
  for (const std::string& servers :
       {Address(0) + "," + Address(0),
        Address(0) + "," + Address(1) + "," + Address(0),
        absl::StrCat("127.0.0.1:", Port(0), ",127.0.0.1:0", Port(0))}) {
    SCOPED_TRACE(servers);
    ProcessResult lr = With(servers, {"lr", "set", "0.5"});
    EXPECT_EQ(lr.exit_code, 2) << lr.err;
    EXPECT_TRUE(Contains(lr.err, "listed twice")) << lr.err;
    EXPECT_EQ(Lines(lr.err), 1) << lr.err;
    ExpectUnchanged();
  }
  // The same shard under two names: the shard says so.
  ProcessResult lr =
      With(absl::StrCat("localhost:", Port(0), ",127.0.0.1:", Port(0)),
           {"lr", "set", "0.5"});
  EXPECT_EQ(lr.exit_code, 1) << lr.err;
  EXPECT_TRUE(Contains(lr.err, "shard_index 0 is served by")) << lr.err;
  EXPECT_TRUE(Contains(lr.err, "no address serves shard_index 1")) << lr.err;
  ExpectUnchanged();
}

TEST_F(PsctlServersTest, BadAddressesAreRefusedBeforeAnythingIsSent) {
  const std::string other = "," + Address(1);
  const std::vector<std::pair<std::string, std::string>> cases = {
      // 65536 more than shard 0's port: wraps to it when not refused.
      {absl::StrCat("127.0.0.1:", Port(0) + 65536) + other, "65535"},
      {absl::StrCat("127.0.0.1:", Port(0) + 4 * 65536) + other, "65535"},
      {"127.0.0.1:0" + other, "port 0"},
      {"127.0.0.1:99999999999999999999" + other, "65535"},
      {absl::StrCat(":", Port(0)) + other, "no host"},
      {"127.0.0.1:" + other, "no port"},
      {"127.0.0.1" + other, "no port"},
      {"127.0.0.1:http" + other, "not a number"},
      {absl::StrCat("127.0.0.1:-", Port(0)) + other, "not a number"},
      {absl::StrCat("::1:", Port(0)) + other, "in brackets"},
      {Address(0) + ",," + Address(1), "empty entry"}};
  for (const auto& [servers, message] : cases) {
    SCOPED_TRACE(servers);
    ProcessResult lr = With(servers, {"lr", "set", "0.5"});
    EXPECT_EQ(lr.exit_code, 2) << lr.err;
    EXPECT_TRUE(Contains(lr.err, message)) << lr.err;
    EXPECT_TRUE(Contains(lr.err, "--servers")) << lr.err;
    EXPECT_EQ(Lines(lr.err), 1) << lr.err;
    EXPECT_TRUE(lr.out.empty()) << lr.out;
    ExpectUnchanged();
  }
}

// The config version of `address`'s default optimizer.
uint64_t ConfigVersion(const std::string& address) {
  v1::OptimizerConfig config;
  grpc::Status status = v1::AdminService::NewStub(MakeChannel(address))
                            ->GetOptimizer(MakeContext().get(),
                                           v1::GetOptimizerRequest(), &config);
  EXPECT_TRUE(status.ok()) << address << ": " << status.error_message();
  return config.config_version();
}

TEST(PsctlClustersTest, ShardsOfTwoClustersChangeNothing) {
  ServerOptions sync;
  sync.block_size = 8;
  sync.consistency = Consistency::kSync;
  sync.num_workers = 2;
  sync.quorum = 2;
  // Cluster A, and a cluster B that differs from it in one setting.
  struct Case {
    std::string setting;
    ServerOptions a, b;
    int b_shards = 2;
  };
  std::vector<Case> cases(5);
  cases[0].setting = "block_size";
  cases[0].a.block_size = 8;
  cases[0].b.block_size = 16;
  cases[1].setting = "num_shards";
  cases[1].b_shards = 3;
  cases[2].setting = "consistency";
  cases[2].b = sync;
  cases[2].a.block_size = sync.block_size;
  cases[3].setting = "num_workers";
  cases[3].a = sync;
  cases[3].b = sync;
  cases[3].b.num_workers = 3;
  cases[4].setting = "quorum";
  cases[4].a = sync;
  cases[4].b = sync;
  cases[4].b.quorum = 1;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.setting);
    auto a = StartShards(2, c.a);
    auto b = StartShards(c.b_shards, c.b);
    ASSERT_EQ(a.size(), 2u);
    ASSERT_EQ(b.size(), static_cast<size_t>(c.b_shards));
    const std::string servers =
        "--servers=" + a[0]->address() + "," + b[1]->address();
    ProcessResult lr = RunProcess(PSCTL_PATH, {servers, "lr", "set", "0.5"});
    EXPECT_EQ(lr.exit_code, 1) << lr.err;
    EXPECT_TRUE(Contains(lr.err, "disagree on " + c.setting)) << lr.err;
    EXPECT_TRUE(Contains(lr.err, "nothing was changed")) << lr.err;
    for (const auto* shards : {&a, &b}) {
      for (const auto& shard : *shards) {
        EXPECT_EQ(ConfigVersion(shard->address()), 1u) << shard->address();
      }
    }
    ProcessResult vars = RunProcess(PSCTL_PATH, {servers, "vars"});
    EXPECT_EQ(vars.exit_code, 1) << vars.err;
    EXPECT_TRUE(vars.out.empty()) << vars.out;
    ProcessResult info = RunProcess(PSCTL_PATH, {servers, "info"});
    EXPECT_EQ(info.exit_code, 1) << info.err;
    EXPECT_TRUE(Contains(info.err, "disagree on " + c.setting)) << info.err;
  }
}

TEST_F(PsctlServersTest, ServersMayBeListedInAnyOrder) {
  const std::string swapped = Address(1) + "," + Address(0);
  ProcessResult info = With(swapped, {"info"});
  EXPECT_EQ(info.exit_code, 0) << info.err;
  // Shown in shard order.
  EXPECT_LT(info.out.find(Address(0)), info.out.find(Address(1))) << info.out;
  json j = Json(With(swapped, {"--json", "info"}));
  ASSERT_EQ(j["shards"].size(), 2u);
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(j["shards"][s]["shard"], s);
    EXPECT_EQ(j["shards"][s]["shard_index"], s);
    EXPECT_EQ(j["shards"][s]["address"], Address(s));
  }
  EXPECT_TRUE(j["ok"]);

  j = Json(With(swapped, {"--json", "lr", "set", "0.5"}));
  EXPECT_TRUE(j["ok"]);
  ASSERT_EQ(j["shards"].size(), 2u);
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(j["shards"][s]["shard"], s);
    EXPECT_EQ(j["shards"][s]["address"], Address(s));
  }
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(GetOptimizer(s, "").learning_rate(), 0.5);
  }
  j = Json(With(swapped, {"--json", "stats"}));
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(j["shards"][s]["shard"], s);
    EXPECT_EQ(j["shards"][s]["shard_index"], s);
  }
}

TEST_F(PsctlServersTest, HealthProbesAnyAddressWithoutAToken) {
  // As a container's health check does: one shard, no token.
  ProcessResult health =
      RunProcess(PSCTL_PATH, {"--servers=" + Address(1), "health"});
  EXPECT_EQ(health.exit_code, 0) << health.err;
  EXPECT_TRUE(Contains(health.out, "SERVING"));
  ProcessResult twice = RunProcess(
      PSCTL_PATH, {"--servers=" + Address(1) + "," + Address(1), "health"});
  EXPECT_EQ(twice.exit_code, 2) << twice.err;
  EXPECT_TRUE(Contains(twice.err, "listed twice")) << twice.err;
}

// Each shard checks a change before any makes it: a rule whose state one
// shard has no memory for leaves every shard as it was.
TEST(PsctlMemoryTest, AChangeOneShardCannotHoldChangesNoShard) {
  // "w": 5 blocks of 8 values (the last of 5), unevenly over 2 shards; the
  // limit holds SGD everywhere and Adam only on the shard with fewer values.
  const uint64_t kSize = 37, kBlock = 8;
  const PartitionPlan plan(2, kBlock);
  uint64_t share[2] = {0, 0};
  uint64_t blocks[2] = {0, 0};
  for (uint64_t k = 0; k < plan.NumBlocks(kSize); ++k) {
    share[plan.ShardOf("w", k)] += plan.BlockRange(kSize, k).length;
    ++blocks[plan.ShardOf("w", k)];
  }
  const int larger = share[1] > share[0] ? 1 : 0;
  ASSERT_NE(share[0], share[1]);
  ASSERT_GE(blocks[larger], blocks[1 - larger]);
  ServerOptions options;
  options.block_size = kBlock;
  options.default_optimizer = Config("sgd {} learning_rate: 0.1");
  options.memory_limit_bytes =
      3 * sizeof(float) * share[larger] - 4 +
      blocks[larger] * DenseVariable::kBookkeepingBytesPerBlock;
  auto shards = StartShards(2, options);
  ASSERT_EQ(shards.size(), 2u);
  auto connected = RawWorker::Connect(ServerAddresses(shards));
  ASSERT_TRUE(connected.ok()) << connected.status();
  RawWorker& worker = **connected;
  ASSERT_TRUE(worker.Create("w", std::vector<float>(kSize, 1.0f)).ok());

  const std::vector<std::string> servers = {"--servers=" + ServerList(shards)};
  auto psctl = [&](std::vector<std::string> args) {
    args.insert(args.begin(), servers.begin(), servers.end());
    return RunProcess(PSCTL_PATH, args, std::chrono::seconds(30));
  };
  ProcessResult refused = psctl({"optimizer", "set", "adam"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_TRUE(Contains(refused.err, "RESOURCE_EXHAUSTED")) << refused.err;
  EXPECT_TRUE(Contains(refused.err, "nothing was changed")) << refused.err;
  EXPECT_TRUE(Contains(refused.err, absl::StrCat(larger, " (") +
                                        shards[larger]->address() + ")"));
  EXPECT_FALSE(Contains(refused.err, absl::StrCat(1 - larger, " (") +
                                         shards[1 - larger]->address() + ")"));
  json j = json::parse(psctl({"--json", "optimizer", "set", "adam"}).out,
                       nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  EXPECT_FALSE(j["sent"]);
  EXPECT_EQ(j["failed_shards"], json::array({larger}));
  for (int s = 0; s < 2; ++s) {
    v1::GetOptimizerRequest request;
    v1::OptimizerConfig config;
    ASSERT_TRUE(worker.admin(s)
                    .GetOptimizer(MakeContext().get(), request, &config)
                    .ok());
    EXPECT_TRUE(config.has_sgd()) << "shard " << s;
    EXPECT_EQ(config.config_version(), 1u) << "shard " << s;
  }

  // Momentum's one buffer fits on both: the change goes through.
  ProcessResult momentum = psctl({"optimizer", "set", "momentum"});
  EXPECT_EQ(momentum.exit_code, 0) << momentum.err;
  json stats = json::parse(psctl({"--json", "stats"}).out, nullptr, false);
  ASSERT_FALSE(stats.is_discarded());
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(stats["shards"][s]["state_bytes"], 2 * sizeof(float) * share[s]);
    EXPECT_EQ(stats["shards"][s]["memory_limit_bytes"],
              options.memory_limit_bytes);
  }
}

// A sync step that one member holds up: one `psctl stats` names the member
// the waiting push waits for, with its step and when it was last seen.
TEST(PsctlStallTest, StatsNameTheMemberAStepWaitsFor) {
  ServerOptions options;
  options.block_size = 8;
  options.consistency = Consistency::kSync;
  options.num_workers = 2;
  options.lease_timeout = absl::Seconds(60);
  options.default_optimizer = Config("sgd {} learning_rate: 1");
  std::vector<std::unique_ptr<ParameterServer>> shards =
      StartShards(2, options);
  ASSERT_EQ(shards.size(), 2u);
  RawWorker worker(ServerAddresses(shards), 8);
  ASSERT_TRUE(worker.Create("w", std::vector<float>(8, 1.0f)).ok());
  const int owner = static_cast<int>(worker.plan().ShardOf("w", 0));
  for (const char* id : {"w0", "w1"}) {
    for (int s = 0; s < 2; ++s) {
      v1::OpenSessionRequest open;
      open.set_worker_id(id);
      v1::OpenSessionResponse opened;
      ASSERT_TRUE(worker.parameters(s)
                      .OpenSession(MakeContext().get(), open, &opened)
                      .ok());
    }
  }
  auto push = [&](const std::string& id) {
    v1::PushRequest request;
    request.set_worker_id(id);
    request.set_step(0);
    request.set_loss(0.75);
    v1::Slice* slice = request.add_gradients();
    slice->set_variable("w");
    slice->set_length(8);
    const std::vector<float> g(8, 1.0f);
    slice->set_data(std::string(reinterpret_cast<const char*>(g.data()),
                                g.size() * sizeof(float)));
    v1::PushResponse response;
    return worker.parameters(owner).Push(MakeContext().get(), request,
                                         &response);
  };
  std::thread waiting([&] { EXPECT_TRUE(push("w0").ok()); });
  // The push waits for w1: wait until the shard says so.
  std::string out;
  for (int attempt = 0; attempt < 100; ++attempt) {
    ProcessResult stats =
        RunProcess(PSCTL_PATH, {"--servers=" + ServerList(shards), "stats"},
                   std::chrono::seconds(30));
    ASSERT_EQ(stats.exit_code, 0) << stats.err;
    out = stats.out;
    if (out.find("calls waiting") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_NE(out.find("WORKER"), std::string::npos) << out;
  EXPECT_NE(
      out.find(absl::StrCat("shard ", owner, " (sync, step 0): 2 members")),
      std::string::npos)
      << out;
  EXPECT_NE(out.find("1 calls waiting"), std::string::npos) << out;
  EXPECT_NE(out.find("for: w1 (step -"), std::string::npos) << out;
  ProcessResult json_stats = RunProcess(
      PSCTL_PATH, {"--servers=" + ServerList(shards), "--json", "stats"},
      std::chrono::seconds(30));
  json j = json::parse(json_stats.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << json_stats.out;
  const json& shard = j["shards"][owner];
  EXPECT_EQ(shard["members"], 2);
  EXPECT_EQ(shard["waiting_pushes"], 1);
  ASSERT_EQ(shard["workers"].size(), 2u);
  EXPECT_EQ(shard["workers"][0]["worker_id"], "w0");
  EXPECT_EQ(shard["workers"][0]["waiting"], 1);
  EXPECT_EQ(shard["workers"][0]["loss"], 0.75);
  EXPECT_EQ(shard["workers"][1]["pushed"], false);

  ASSERT_TRUE(push("w1").ok());
  waiting.join();
}

TEST_F(PsctlTest, StatsHumanJsonAndWatch) {
  ProcessResult stats = Psctl({"stats"});
  ASSERT_EQ(stats.exit_code, 0) << stats.err;
  EXPECT_TRUE(Contains(stats.out, "PUSHES"));
  EXPECT_TRUE(Contains(stats.out, "LEARNING RATE"));

  json j = Json(Psctl({"stats", "--json"}));
  ASSERT_EQ(j["shards"].size(), 2u);
  for (int s = 0; s < 2; ++s) {
    const json& shard = j["shards"][s];
    EXPECT_EQ(shard["shard_index"], s);
    EXPECT_EQ(shard["pushes"], 3);
    EXPECT_EQ(shard["config_version"], 1);
    ASSERT_EQ(shard["variables"].size(), 2u);
    EXPECT_EQ(shard["variables"][1]["name"], "w");
    EXPECT_EQ(shard["variables"][1]["step"], 3);
    EXPECT_EQ(shard["variables"][1]["learning_rate"], 0.1);
    EXPECT_EQ(shard["variables"][1]["rule"], "sgd");
  }

  ProcessResult watch =
      Psctl({"stats", "--watch", "--interval_s=0.05", "--count=3", "--json"});
  ASSERT_EQ(watch.exit_code, 0) << watch.err;
  EXPECT_EQ(Lines(watch.out), 3);
  std::istringstream lines(watch.out);
  std::string line;
  while (std::getline(lines, line)) {
    json round = json::parse(line, nullptr, false);
    ASSERT_FALSE(round.is_discarded()) << line;
    EXPECT_EQ(round["shards"].size(), 2u);
  }
  ProcessResult human =
      Psctl({"stats", "--watch", "--interval_s=0.05", "--count=2"});
  ASSERT_EQ(human.exit_code, 0);
  size_t rounds = 0;
  for (size_t at = human.out.find("== "); at != std::string::npos;
       at = human.out.find("== ", at + 1)) {
    ++rounds;
  }
  EXPECT_EQ(rounds, 2u);
}

TEST_F(PsctlTest, CheckpointWithoutFolderFailsNamingShards) {
  // Shard 0 makes the cluster's checkpoints: it is the one that answers.
  ProcessResult checkpoint = Psctl({"checkpoint"});
  EXPECT_EQ(checkpoint.exit_code, 1);
  EXPECT_TRUE(Contains(checkpoint.err, "FAILED_PRECONDITION"));
  EXPECT_TRUE(Contains(checkpoint.err, "0 (" + shards_[0]->address() + ")"));
  json j = Json(Psctl({"checkpoint", "--json"}));
  EXPECT_FALSE(j["ok"]);
  EXPECT_EQ(j["shards"][0]["code"], "FAILED_PRECONDITION");
}

TEST(PsctlTlsTest, TlsWithTheCaAndNotWithout) {
  TempDir dir;
  const Certificate certificate = MakeCertificate(dir, "shard");
  ServerOptions options;
  options.tls_cert_file = certificate.cert_file;
  options.tls_key_file = certificate.key_file;
  auto shards = StartShards(2, options);
  ASSERT_EQ(shards.size(), 2u);
  const std::string servers = "--servers=" + ServerList(shards);
  ProcessResult tls = RunProcess(
      PSCTL_PATH, {servers, "--tls_ca_file=" + certificate.cert_file, "info"});
  EXPECT_EQ(tls.exit_code, 0) << tls.err;
  ProcessResult plain =
      RunProcess(PSCTL_PATH, {servers, "--timeout_s=3", "health"});
  EXPECT_EQ(plain.exit_code, 1);
  EXPECT_TRUE(Contains(plain.err, "UNAVAILABLE")) << plain.err;
  ProcessResult missing_ca = RunProcess(
      PSCTL_PATH, {servers, "--tls_ca_file=" + dir.path() + "/none", "info"});
  EXPECT_EQ(missing_ca.exit_code, 2);
}

// Two shards on one shared checkpoint folder, with tokens: psctl checkpoint
// asks shard 0, which has both shards write part N (calling shard 1 with
// the admin token) and record it; psctl checkpoints lists what completed.
TEST(PsctlCheckpointTest, ClusterCheckpointsOnASharedFolder) {
  TempDir dir;
  ServerOptions options;
  options.num_shards = 2;
  options.block_size = 8;
  options.default_optimizer = Config("sgd {} learning_rate: 0.1");
  options.admin_tokens_file =
      dir.WriteFile("admins", std::string(kAdminToken) + " ops\n");
  options.checkpoint_dir = dir.path() + "/checkpoints";
  options.shard_index = 1;
  auto shard1 = ParameterServer::Start(options);
  ASSERT_TRUE(shard1.ok()) << shard1.status();
  options.shard_index = 0;
  options.peers = {"", (*shard1)->address()};
  auto shard0 = ParameterServer::Start(options);
  ASSERT_TRUE(shard0.ok()) << shard0.status();
  const std::string servers = absl::StrCat("--servers=", (*shard0)->address(),
                                           ",", (*shard1)->address());
  const std::string token =
      "--token_file=" + dir.WriteFile("token", std::string(kAdminToken));
  auto worker = RawWorker::Connect({(*shard0)->address(), (*shard1)->address()},
                                   kAdminToken);
  ASSERT_TRUE(worker.ok()) << worker.status();
  ASSERT_TRUE((*worker)->Create("w", std::vector<float>(37, 1.0f)).ok());

  ProcessResult first = RunProcess(PSCTL_PATH, {servers, token, "checkpoint"});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_TRUE(Contains(first.out, "checkpoint 1: 2 parts")) << first.out;
  EXPECT_TRUE(Contains(first.out, "ckpt-00000000000000000001-shard-0-of-2"));
  EXPECT_TRUE(Contains(first.out, "ckpt-00000000000000000001-shard-1-of-2"));

  json second = json::parse(
      RunProcess(PSCTL_PATH, {servers, token, "--json", "checkpoint"}).out);
  EXPECT_EQ(second["number"], 2);
  ASSERT_EQ(second["parts"].size(), 2u);
  EXPECT_EQ(second["parts"][1]["shard"], 1);
  EXPECT_GT(second["parts"][1]["bytes"], 0);
  EXPECT_EQ(second["parts"][1]["sync_cut"], false);  // an async cluster

  json listed = json::parse(
      RunProcess(PSCTL_PATH, {servers, token, "--json", "checkpoints"}).out);
  ASSERT_EQ(listed["checkpoints"].size(), 2u);
  EXPECT_EQ(listed["checkpoints"][0]["number"], 2);
  EXPECT_EQ(listed["checkpoints"][1]["number"], 1);
  ProcessResult table = RunProcess(PSCTL_PATH, {servers, token, "checkpoints"});
  EXPECT_TRUE(Contains(table.out, "SYNC_CUT")) << table.out;
}

}  // namespace
}  // namespace ps::testing
