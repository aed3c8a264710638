#include "client/psctl/command_table.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/psctl/optimizer_flags.h"

namespace ps::psctl {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

struct Result {
  int status = -1;
  std::string out;
  std::string err;
};

Result Psctl(const std::vector<std::string>& args) {
  std::ostringstream out, err;
  Result run;
  run.status = Main(args, out, err);
  run.out = out.str();
  run.err = err.str();
  return run;
}

int Lines(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

std::vector<std::string> Words(const std::string& name) {
  return absl::StrSplit(name, ' ');
}

TEST(CommandTableTest, EveryCommandHasHelpAndAHandler) {
  std::set<std::string> names;
  for (const Command& command : Commands()) {
    SCOPED_TRACE(command.name);
    EXPECT_TRUE(names.insert(command.name).second) << "listed twice";
    EXPECT_FALSE(command.summary.empty());
    EXPECT_FALSE(command.help.empty());
    EXPECT_TRUE(static_cast<bool>(command.prepare));
    EXPECT_THAT(CommandHelp(Words(command.name)),
                StartsWith("Usage: psctl " + command.name));
    EXPECT_THAT(GeneralHelp(), HasSubstr("  " + command.name));
    EXPECT_THAT(GeneralHelp(), HasSubstr(command.summary.substr(0, 20)));
    // Its flags exist, and its help names them.
    for (const std::string& flag : command.flags) {
      EXPECT_TRUE(AllFlags().contains(flag)) << flag;
      EXPECT_THAT(CommandHelp(Words(command.name)), HasSubstr("--" + flag));
    }
    for (const Arg& arg : command.args) {
      if (!arg.choices) continue;
      for (const std::string& choice : arg.choices()) {
        for (const std::string& flag : CommandFlags(command, choice)) {
          EXPECT_TRUE(AllFlags().contains(flag)) << choice << " " << flag;
          EXPECT_THAT(CommandHelp(Words(command.name)), HasSubstr("--" + flag))
              << choice;
        }
      }
    }
  }
}

TEST(CommandTableTest, EveryFlagBelongsSomewhereAndIsListedWithItsDefault) {
  std::set<std::string> used(GlobalFlags().begin(), GlobalFlags().end());
  for (const Command& command : Commands()) {
    used.insert(command.flags.begin(), command.flags.end());
    for (const Arg& arg : command.args) {
      if (!arg.choices) continue;
      for (const std::string& choice : arg.choices()) {
        for (const std::string& flag : CommandFlags(command, choice)) {
          used.insert(flag);
        }
      }
    }
  }
  const std::string list = FlagList();
  for (const auto& [name, spec] : AllFlags()) {
    EXPECT_TRUE(used.contains(name)) << "--" << name << " is nobody's";
    EXPECT_FALSE(spec.help.empty()) << name;
    // "  --name=X  help; default: D", however it is wrapped.
    const size_t at = list.find("  " + FlagUsage(spec) + "  ");
    ASSERT_NE(at, std::string::npos) << name;
    const size_t next = list.find("\n  --", at + 1);
    EXPECT_THAT(list.substr(at, next - at), HasSubstr("default:")) << name;
  }
  const Result help = Psctl({"--help"});
  EXPECT_EQ(help.status, kExitOk);
  EXPECT_THAT(help.out, HasSubstr(list));
  EXPECT_THAT(help.out, HasSubstr("--servers=HOST:PORT,..."));
  EXPECT_THAT(help.out, HasSubstr("127.0.0.1:50051"));
}

TEST(CommandTableTest, HelpByCommandFlagOrGroup) {
  for (const Command& command : Commands()) {
    std::vector<std::string> args = {"help"};
    for (const std::string& word : Words(command.name)) args.push_back(word);
    const Result by_help = Psctl(args);
    EXPECT_EQ(by_help.status, kExitOk) << command.name;
    EXPECT_EQ(by_help.out, CommandHelp(Words(command.name)));
    args.erase(args.begin());
    args.push_back("--help");
    EXPECT_EQ(Psctl(args).out, by_help.out) << command.name;
  }
  // A group shows each of its commands.
  const Result optimizer = Psctl({"help", "optimizer"});
  EXPECT_EQ(optimizer.status, kExitOk);
  EXPECT_THAT(optimizer.out, HasSubstr("Usage: psctl optimizer get"));
  EXPECT_THAT(optimizer.out, HasSubstr("Usage: psctl optimizer set RULE"));
  EXPECT_EQ(Psctl({"lr", "--help"}).out, CommandHelp({"lr", "set"}));
  // Flags given with --help are not checked.
  EXPECT_EQ(Psctl({"info", "--beta1=0.5", "--help"}).status, kExitOk);
  // Each rule's and kind's flags are in the help of their command.
  const std::string set = CommandHelp({"optimizer", "set"});
  EXPECT_THAT(set, HasSubstr(RuleFlagsHelp()));
  EXPECT_THAT(CommandHelp({"schedule", "set"}), HasSubstr(ScheduleFlagsHelp()));
  const Result unknown = Psctl({"help", "frob"});
  EXPECT_EQ(unknown.status, kExitUsage);
  EXPECT_THAT(unknown.err, HasSubstr("unknown command 'frob'"));
}

TEST(CommandTableTest, UsageErrorsAreOneLineAndSendNothing) {
  // No shard listens on port 1: a command that got as far as calling one
  // would fail with exit 1, not 2.
  const std::string servers = "--servers=127.0.0.1:1";
  for (const auto& [args, message] :
       std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{}, "no command given"},
           {{"frobnicate"}, "unknown command 'frobnicate'"},
           {{"--bogus", "info"}, "unknown flag --bogus"},
           {{"optimizer"},
            "'optimizer' needs get or set (see psctl help "
            "optimizer)"},
           {{"optimizer", "frob"}, "'optimizer' needs get or set, not 'frob'"},
           {{"lr"}, "'lr' needs set"},
           {{"optimizer", "set"}, "optimizer set needs a rule: sgd, momentum"},
           {{"optimizer", "set", "adamax"}, "unknown rule 'adamax'"},
           {{"optimizer", "set", "adam", "extra"},
            "unexpected argument 'extra' after 'optimizer set'"},
           {{"lr", "set"}, "lr set needs a value, e.g. 0.01"},
           {{"lr", "set", "fast"}, "'fast' is not a number"},
           {{"schedule", "set"}, "schedule set needs a schedule: step"},
           {{"schedule", "set", "linear"}, "unknown schedule 'linear'"},
           {{"schedule", "set", "step"}, "needs --step_size"},
           {{"info", "--var=w"},
            "--var does not apply to 'info' (it takes no flags of its own)"},
           {{"stats", "--var=w"},
            "--var does not apply to 'stats' (it takes --watch --interval_s "
            "--count)"},
           {{"optimizer", "set", "sgd", "--beta1=0.5"},
            "--beta1 does not apply to 'optimizer set sgd'"},
           {{"optimizer", "set", "adam", "--momentum=0.5"},
            "--momentum does not apply to 'optimizer set adam'"},
           {{"schedule", "set", "cosine", "--t_max=3", "--step_size=3"},
            "--step_size does not apply to 'schedule set cosine'"},
           {{"stats", "--watch", "--interval_s=0"}, "--interval_s must be > 0"},
           {{"stats", "--count=-1"}, "--count must be >= 0"},
           {{"info", "--timeout_s=0"}, "--timeout_s must be > 0"},
           {{"info", "--token_file=/nonexistent/file"}, "cannot read"},
           {{"info", "--tls_ca_file=/nonexistent/file"}, "--tls_ca_file"}}) {
    std::vector<std::string> full = {servers};
    full.insert(full.end(), args.begin(), args.end());
    const Result run = Psctl(full);
    EXPECT_EQ(run.status, kExitUsage) << message << ": " << run.err;
    EXPECT_THAT(run.err, HasSubstr(message));
    EXPECT_EQ(Lines(run.err), 1) << run.err;
    EXPECT_THAT(run.out, IsEmpty());
  }
}

TEST(CommandTableTest, BadAddressesAreRefusedBeforeAnythingIsSent) {
  for (const auto& [servers, message] :
       std::vector<std::pair<std::string, std::string>>{
           {"", "empty entry"},
           {"127.0.0.1:1,,127.0.0.1:2", "empty entry"},
           {"127.0.0.1:70000", "above 65535"},
           {"127.0.0.1:0", "port 0"},
           {":1", "no host"},
           {"127.0.0.1", "no port"},
           {"127.0.0.1:x", "not a number"},
           {"127.0.0.1:1,127.0.0.1:1", "listed twice"},
           {"127.0.0.1:1,127.0.0.1:01", "listed twice"}}) {
    for (const char* command : {"vars", "checkpoint", "health"}) {
      const Result run = Psctl({"--servers=" + servers, command});
      EXPECT_EQ(run.status, kExitUsage) << servers << " " << command;
      EXPECT_THAT(run.err, HasSubstr("psctl: --servers: "));
      EXPECT_THAT(run.err, HasSubstr(message)) << servers;
      EXPECT_EQ(Lines(run.err), 1);
    }
  }
}

// A server that answers GetClusterInfo as told and counts the admin calls it
// gets.
class FakeParameters final : public v1::ParameterService::Service {
 public:
  explicit FakeParameters(v1::ClusterInfo info) : info_(std::move(info)) {}
  grpc::Status GetClusterInfo(grpc::ServerContext*,
                              const v1::GetClusterInfoRequest*,
                              v1::ClusterInfo* response) override {
    *response = info_;
    return grpc::Status::OK;
  }

 private:
  v1::ClusterInfo info_;
};

class FakeAdmin final : public v1::AdminService::Service {
 public:
  grpc::Status GetOptimizer(grpc::ServerContext*,
                            const v1::GetOptimizerRequest*,
                            v1::OptimizerConfig* response) override {
    ++calls;
    response->mutable_sgd();
    response->set_learning_rate(0.1);
    response->set_config_version(version);
    return grpc::Status::OK;
  }
  grpc::Status SetOptimizer(grpc::ServerContext*,
                            const v1::SetOptimizerRequest* request,
                            v1::SetOptimizerResponse* response) override {
    ++calls;
    if (!request->validate_only()) ++changes;
    response->set_previous_config_version(version);
    response->set_config_version(version + 1);
    return grpc::Status::OK;
  }
  grpc::Status ListVariables(grpc::ServerContext*,
                             const v1::ListVariablesRequest*,
                             v1::ListVariablesResponse*) override {
    ++calls;
    return grpc::Status::OK;
  }
  grpc::Status GetStats(grpc::ServerContext*, const v1::GetStatsRequest*,
                        v1::Stats*) override {
    ++calls;
    return grpc::Status::OK;
  }
  grpc::Status Checkpoint(grpc::ServerContext*, const v1::CheckpointRequest*,
                          v1::CheckpointResponse*) override {
    ++calls;
    ++changes;
    return grpc::Status::OK;
  }

  std::atomic<int> calls{0};
  std::atomic<int> changes{0};
  uint64_t version = 1;
};

struct FakeServer {
  FakeServer(v1::ClusterInfo info) : parameters(std::move(info)) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(&parameters);
    builder.RegisterService(&admin);
    server = builder.BuildAndStart();
    address = absl::StrCat("127.0.0.1:", port);
  }
  ~FakeServer() { server->Shutdown(); }

  FakeParameters parameters;
  FakeAdmin admin;
  std::unique_ptr<grpc::Server> server;
  std::string address;
};

v1::ClusterInfo Info(uint32_t index, uint32_t num_shards,
                     uint64_t block_size = 4) {
  v1::ClusterInfo info;
  info.set_shard_index(index);
  info.set_num_shards(num_shards);
  info.set_block_size(block_size);
  info.set_consistency("async");
  return info;
}

class ClusterCheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (uint32_t i = 0; i < 3; ++i) {
      shards_.push_back(std::make_unique<FakeServer>(Info(i, 3)));
    }
  }

  // --servers with the shards `which`, by shard index; -1 is the server of
  // another cluster.
  std::string Servers(const std::vector<int>& which) {
    std::vector<std::string> addresses;
    for (int i : which) {
      addresses.push_back(i < 0 ? other_.address : shards_[i]->address);
    }
    return "--servers=" + absl::StrJoin(addresses, ",");
  }

  int AdminCalls() {
    int calls = other_.admin.calls;
    for (const auto& shard : shards_) calls += shard->admin.calls;
    return calls;
  }
  int Changes() {
    int changes = other_.admin.changes;
    for (const auto& shard : shards_) changes += shard->admin.changes;
    return changes;
  }

  std::vector<std::unique_ptr<FakeServer>> shards_;
  // Shard 1 of a 3-shard cluster with another block size.
  FakeServer other_{Info(1, 3, 8)};
};

TEST_F(ClusterCheckTest, EveryCommandRefusesPartOfTheCluster) {
  for (const std::vector<std::string>& command :
       std::vector<std::vector<std::string>>{{"lr", "set", "0.5"},
                                             {"optimizer", "set", "adam"},
                                             {"schedule", "set", "none"},
                                             {"checkpoint"},
                                             {"vars"},
                                             {"optimizer", "get"},
                                             {"stats"},
                                             {"info"}}) {
    SCOPED_TRACE(command[0]);
    std::vector<std::string> args = {Servers({0, 2})};
    args.insert(args.end(), command.begin(), command.end());
    const Result run = Psctl(args);
    EXPECT_EQ(run.status, kExitShardFailed) << run.err;
    EXPECT_THAT(run.err,
                HasSubstr("--servers: not one cluster: 2 addresses given"));
    EXPECT_THAT(run.err, HasSubstr("the shards report num_shards = 3"));
    EXPECT_EQ(Changes(), 0);
    // Only info shows what the servers said (and their default optimizer).
    if (command[0] != "info") {
      EXPECT_EQ(AdminCalls(), 0);
    }
  }
}

TEST_F(ClusterCheckTest, AShardUnderTwoNamesIsRefused) {
  const std::string port = shards_[0]->address.substr(10);
  const Result run =
      Psctl({"--servers=localhost:" + port + ",127.0.0.1:" + port + "," +
                 shards_[2]->address,
             "lr", "set", "0.5"});
  EXPECT_EQ(run.status, kExitShardFailed);
  EXPECT_THAT(run.err, HasSubstr("shard_index 0 is served by localhost:"));
  EXPECT_THAT(run.err, HasSubstr("no address serves shard_index 1"));
  EXPECT_THAT(run.err, HasSubstr("(nothing was changed)"));
  EXPECT_EQ(AdminCalls(), 0);
}

TEST_F(ClusterCheckTest, ShardsOfTwoClustersAreRefused) {
  const Result run = Psctl({Servers({0, -1, 2}), "--json", "lr", "set", "0.5"});
  EXPECT_EQ(run.status, kExitShardFailed);
  EXPECT_THAT(run.err, HasSubstr("disagree on block_size"));
  EXPECT_THAT(run.out, HasSubstr("\"sent\": false"));
  EXPECT_THAT(run.out, HasSubstr("\"ok\": false"));
  EXPECT_EQ(AdminCalls(), 0);
}

TEST_F(ClusterCheckTest, AnyOrderRunsInShardOrder) {
  const Result run = Psctl({Servers({2, 0, 1}), "lr", "set", "0.5"});
  EXPECT_EQ(run.status, kExitOk) << run.err;
  for (const auto& shard : shards_) EXPECT_EQ(shard->admin.changes, 1);
  // The table lists shard 0, 1, 2 with their addresses.
  std::vector<std::string> lines = absl::StrSplit(run.out, '\n');
  ASSERT_GE(lines.size(), 5u) << run.out;
  for (int i = 0; i < 3; ++i) {
    EXPECT_THAT(lines[2 + i], StartsWith(absl::StrCat(i, " ")));
    EXPECT_THAT(lines[2 + i], HasSubstr(shards_[i]->address));
  }
  const Result info = Psctl({Servers({1, 2, 0}), "info"});
  EXPECT_EQ(info.status, kExitOk) << info.err;
  EXPECT_LT(info.out.find(shards_[0]->address),
            info.out.find(shards_[1]->address));
  EXPECT_LT(info.out.find(shards_[1]->address),
            info.out.find(shards_[2]->address));
}

TEST_F(ClusterCheckTest, AServerThatDoesNotAnswer) {
  // Shard 1 is gone.
  const std::string gone = shards_[1]->address;
  shards_[1].reset();
  const std::string servers = "--servers=" + shards_[0]->address + "," + gone +
                              "," + shards_[2]->address;
  const Result change = Psctl({servers, "--timeout_s=2", "lr", "set", "0.5"});
  EXPECT_EQ(change.status, kExitShardFailed);
  EXPECT_THAT(change.err, HasSubstr("1 (" + gone + "): UNAVAILABLE"));
  EXPECT_THAT(change.err, HasSubstr("(nothing was changed)"));
  EXPECT_EQ(shards_[0]->admin.calls + shards_[2]->admin.calls, 0);
  // A read shows the others, and fails.
  const Result vars = Psctl({servers, "--timeout_s=2", "optimizer", "get"});
  EXPECT_EQ(vars.status, kExitShardFailed);
  EXPECT_THAT(vars.out, HasSubstr(shards_[0]->address));
  EXPECT_THAT(vars.out, HasSubstr("UNAVAILABLE"));
}

}  // namespace
}  // namespace ps::psctl
