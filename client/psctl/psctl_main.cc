// psctl: the operator's command line for a parameter server cluster.
//
// Parses flags, checks that every flag given belongs to the command, checks
// that --servers is one whole cluster, and runs the command
// (client/psctl/commands.h). See `psctl --help`.
#include <algorithm>
#include <cstdint>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/cluster_check.h"
#include "client/psctl/cluster.h"
#include "client/psctl/commands.h"
#include "client/psctl/config_builder.h"
#include "client/psctl/help.h"

// Global.
ABSL_FLAG(std::string, servers, "127.0.0.1:50051",
          "the shards' HOST:PORT, comma-separated, each once, in any order");
ABSL_FLAG(std::string, token_file, "",
          "file whose first token (first word of the first line that is not "
          "blank or a # comment) is sent as 'authorization: Bearer <token>'");
ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM root certificate(s): connect with TLS and trust them; empty = "
          "plaintext");
ABSL_FLAG(double, timeout_s, 10, "deadline of each call, seconds");
ABSL_FLAG(bool, json, false, "print JSON instead of tables");

// Commands' own.
ABSL_FLAG(std::string, var, "",
          "optimizer get/set, lr set, schedule set: the variable; empty = the "
          "default optimizer");
ABSL_FLAG(bool, reset_state, false,
          "optimizer set: start from fresh optimizer state at step 1");
ABSL_FLAG(std::optional<double>, lr, std::nullopt,
          "optimizer set: the learning rate (adam, eve: 1e-3; others 1e-2)");
ABSL_FLAG(std::optional<double>, weight_decay, std::nullopt,
          "optimizer set: L2 weight decay (0); decoupled with "
          "--decoupled_weight_decay");
ABSL_FLAG(std::optional<double>, clip_norm, std::nullopt,
          "optimizer set: clip each block's gradient to this L2 norm (none)");
ABSL_FLAG(std::optional<double>, momentum, std::nullopt,
          "optimizer set momentum (0.9) or rmsprop (0): momentum factor");
ABSL_FLAG(std::optional<double>, dampening, std::nullopt,
          "optimizer set momentum: dampening (0)");
ABSL_FLAG(bool, nesterov, false, "optimizer set momentum: Nesterov momentum");
ABSL_FLAG(std::optional<double>, initial_accumulator_value, std::nullopt,
          "optimizer set adagrad: initial sum of squares (0)");
ABSL_FLAG(std::optional<double>, eps, std::nullopt,
          "optimizer set adagrad (1e-10), rmsprop, adam, eve (1e-8): epsilon");
ABSL_FLAG(std::optional<double>, lr_decay, std::nullopt,
          "optimizer set adagrad: learning-rate decay (0)");
ABSL_FLAG(std::optional<double>, alpha, std::nullopt,
          "optimizer set rmsprop: smoothing constant (0.99)");
ABSL_FLAG(bool, centered, false, "optimizer set rmsprop: centered RMSProp");
ABSL_FLAG(std::optional<double>, beta1, std::nullopt,
          "optimizer set adam, eve: first-moment decay (0.9)");
ABSL_FLAG(std::optional<double>, beta2, std::nullopt,
          "optimizer set adam, eve: second-moment decay (0.999)");
ABSL_FLAG(bool, amsgrad, false, "optimizer set adam: AMSGrad");
ABSL_FLAG(bool, decoupled_weight_decay, false,
          "optimizer set adam: decoupled weight decay (AdamW)");
ABSL_FLAG(std::optional<double>, beta3, std::nullopt,
          "optimizer set eve: feedback smoothing (0.999)");
ABSL_FLAG(std::optional<double>, k, std::nullopt,
          "optimizer set eve: lower clip threshold k (0.1)");
ABSL_FLAG(std::optional<double>, big_k, std::nullopt,
          "optimizer set eve: upper clip threshold K (10)");
ABSL_FLAG(std::optional<double>, loss_floor, std::nullopt,
          "optimizer set eve: the objective's known minimum f* (0)");
ABSL_FLAG(std::optional<uint64_t>, step_size, std::nullopt,
          "schedule set step: decay every N steps (required)");
ABSL_FLAG(std::optional<double>, gamma, std::nullopt,
          "schedule set step (0.1) or exponential (required): decay factor");
ABSL_FLAG(std::optional<uint64_t>, t_max, std::nullopt,
          "schedule set cosine: half period in steps (required)");
ABSL_FLAG(std::optional<double>, eta_min, std::nullopt,
          "schedule set cosine: the lowest rate (0)");
ABSL_FLAG(std::optional<uint64_t>, warmup_steps, std::nullopt,
          "schedule set: linear warm-up over N steps (0 = none)");
ABSL_FLAG(bool, watch, false, "stats: repeat every --interval_s seconds");
ABSL_FLAG(double, interval_s, 2, "stats --watch: seconds between rounds");
ABSL_FLAG(int, count, 0, "stats --watch: rounds to show; 0 = until stopped");

namespace {

using ps::psctl::kExitOk;
using ps::psctl::kExitUsage;

// Flags that belong to some command.
std::set<std::string> CommandFlags() {
  std::set<std::string> flags = ps::psctl::AllRuleFlags();
  for (const std::string& f : ps::psctl::AllScheduleFlags()) flags.insert(f);
  flags.insert({"var", "reset_state", "watch", "interval_s", "count"});
  return flags;
}

int Usage(const std::string& message) {
  std::cerr << "psctl: " << message << "\n";
  return kExitUsage;
}

// What the command line holds, before absl parses it.
struct Scan {
  std::vector<std::string> positional;
  std::set<std::string> given;   // flag names, "no" prefix removed
  std::vector<char*> flag_args;  // the flags and their values, for absl
  bool help = false;
};

// Checks every flag name and value, so that a mistake gets one line and
// exit status 2. Sets the flags' values as it goes.
std::optional<int> ScanCommandLine(int argc, char** argv, Scan* scan) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") {
      for (++i; i < argc; ++i) scan->positional.push_back(argv[i]);
      break;
    }
    double number = 0;
    if (arg.size() < 2 || arg[0] != '-' || absl::SimpleAtod(arg, &number)) {
      // Negative numbers ("lr set -1") are arguments, not flags.
      scan->positional.push_back(arg);
      continue;
    }
    scan->flag_args.push_back(argv[i]);
    std::string body = arg.substr(arg[1] == '-' ? 2 : 1);
    const size_t eq = body.find('=');
    const std::string name = body.substr(0, eq);
    std::optional<std::string> value;
    if (eq != std::string::npos) value = body.substr(eq + 1);
    if (name == "help" || name == "h" || name == "helpshort" ||
        name == "helpfull") {
      scan->help = true;
      continue;
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && absl::StartsWith(name, "no") && !value) {
      absl::CommandLineFlag* positive =
          absl::FindCommandLineFlag(name.substr(2));
      if (positive != nullptr && positive->IsOfType<bool>()) {
        std::string error;
        positive->ParseFrom("false", &error);
        scan->given.insert(name.substr(2));
        continue;
      }
    }
    if (flag == nullptr) {
      return Usage(
          absl::StrCat("unknown flag --", name, " (see psctl --help)"));
    }
    if (!value) {
      if (flag->IsOfType<bool>()) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
        scan->flag_args.push_back(argv[i]);
      } else {
        return Usage(absl::StrCat("flag --", name, " needs a value"));
      }
    }
    std::string error;
    if (!flag->ParseFrom(*value, &error)) {
      return Usage(absl::StrCat("bad value for --", name, ": ", error));
    }
    scan->given.insert(name);
  }
  return std::nullopt;
}

// The flags of this file, for --help.
std::string FlagList() {
  std::vector<std::string> lines;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (!absl::StrContains(flag->Filename(), "psctl_main")) continue;
    std::string shown = flag->DefaultValue();
    if (shown.empty()) {
      shown = flag->IsOfType<std::string>() ? "\"\"" : "unset";
    }
    lines.push_back(
        absl::StrCat("  --", name, "  ", flag->Help(), "; default: ", shown));
  }
  std::sort(lines.begin(), lines.end());
  return absl::StrCat("Flags:\n", absl::StrJoin(lines, "\n"), "\n");
}

// "optimizer set" from {"optimizer", "set", ...}; "" when unknown.
std::string CommandName(const std::vector<std::string>& positional) {
  if (positional.empty()) return "";
  const std::string& first = positional[0];
  if (first == "optimizer" || first == "lr" || first == "schedule") {
    if (positional.size() >= 2) {
      const std::string two = first + " " + positional[1];
      if (!ps::psctl::CommandHelp(two).empty()) return two;
    }
    return first;
  }
  return ps::psctl::CommandHelp(first).empty() ? "" : first;
}

ps::psctl::RuleValues RuleValuesFromFlags() {
  ps::psctl::RuleValues v;
  v.lr = absl::GetFlag(FLAGS_lr);
  v.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  v.clip_norm = absl::GetFlag(FLAGS_clip_norm);
  v.momentum = absl::GetFlag(FLAGS_momentum);
  v.dampening = absl::GetFlag(FLAGS_dampening);
  v.nesterov = absl::GetFlag(FLAGS_nesterov);
  v.initial_accumulator_value = absl::GetFlag(FLAGS_initial_accumulator_value);
  v.eps = absl::GetFlag(FLAGS_eps);
  v.lr_decay = absl::GetFlag(FLAGS_lr_decay);
  v.alpha = absl::GetFlag(FLAGS_alpha);
  v.centered = absl::GetFlag(FLAGS_centered);
  v.beta1 = absl::GetFlag(FLAGS_beta1);
  v.beta2 = absl::GetFlag(FLAGS_beta2);
  v.amsgrad = absl::GetFlag(FLAGS_amsgrad);
  v.decoupled_weight_decay = absl::GetFlag(FLAGS_decoupled_weight_decay);
  v.beta3 = absl::GetFlag(FLAGS_beta3);
  v.k = absl::GetFlag(FLAGS_k);
  v.big_k = absl::GetFlag(FLAGS_big_k);
  v.loss_floor = absl::GetFlag(FLAGS_loss_floor);
  return v;
}

ps::psctl::ScheduleValues ScheduleValuesFromFlags() {
  ps::psctl::ScheduleValues v;
  v.step_size = absl::GetFlag(FLAGS_step_size);
  v.gamma = absl::GetFlag(FLAGS_gamma);
  v.t_max = absl::GetFlag(FLAGS_t_max);
  v.eta_min = absl::GetFlag(FLAGS_eta_min);
  v.warmup_steps = absl::GetFlag(FLAGS_warmup_steps);
  return v;
}

// Refuses a command flag that `command` does not take.
std::optional<int> CheckFlags(const std::set<std::string>& given,
                              const std::string& command,
                              const std::vector<std::string>& allowed) {
  const std::set<std::string> command_flags = CommandFlags();
  for (const std::string& name : given) {
    if (!command_flags.contains(name)) continue;
    if (std::find(allowed.begin(), allowed.end(), name) != allowed.end()) {
      continue;
    }
    std::vector<std::string> shown;
    for (const std::string& a : allowed) shown.push_back("--" + a);
    return Usage(absl::StrCat(
        "--", name, " does not apply to '", command, "'",
        shown.empty()
            ? std::string(" (it takes no flags of its own)")
            : absl::StrCat(" (it takes ", absl::StrJoin(shown, " "), ")")));
  }
  return std::nullopt;
}

// How a command uses the servers of --servers.
enum class ClusterUse {
  // Each address on its own, no token needed (health).
  kAddresses,
  // Shows what each server says it is, and says when they are not one
  // cluster (info).
  kInspect,
  // Reads: the servers that answer must be shards of one cluster, each once.
  kRead,
  // Changes: every server must answer as shard 0..S-1 of one cluster, each
  // once, before anything is sent.
  kChange,
};

// Reads what the servers say they are and applies the command's rule.
int RunOnCluster(ClusterUse use, const std::string& label,
                 const std::function<int(const ps::psctl::ShardSet&,
                                         const ps::psctl::Output&)>& run,
                 ps::psctl::ShardSet& shards, const ps::psctl::Output& output) {
  if (use == ClusterUse::kAddresses) return run(shards, output);
  shards.ReadLayout();
  switch (use) {
    case ClusterUse::kInspect:
      return run(shards, output);
    case ClusterUse::kRead: {
      if (!shards.layout_problem().ok()) {
        return ps::psctl::RefuseLayout(shards, label, /*change=*/false, output);
      }
      const int status = run(shards, output);
      if (status != kExitOk) return status;
      return ps::psctl::ReportUnverified(shards, label, output);
    }
    case ClusterUse::kChange:
      if (!shards.layout_problem().ok() || !shards.Unverified().empty()) {
        return ps::psctl::RefuseLayout(shards, label, /*change=*/true, output);
      }
      return run(shards, output);
    case ClusterUse::kAddresses:
      break;
  }
  return run(shards, output);
}

std::optional<int> CheckArgs(const std::vector<std::string>& positional,
                             size_t expected, const std::string& command) {
  if (positional.size() > expected) {
    return Usage(absl::StrCat("unexpected argument '", positional[expected],
                              "' after '", command, "'"));
  }
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(ps::psctl::GeneralHelp());
  Scan scan;
  if (auto failed = ScanCommandLine(argc, argv, &scan)) return *failed;
  const std::string command = CommandName(scan.positional);

  if (scan.help || (!scan.positional.empty() && scan.positional[0] == "help")) {
    std::vector<std::string> topic = scan.positional;
    if (!topic.empty() && topic[0] == "help") topic.erase(topic.begin());
    if (topic.empty()) {
      std::cout << ps::psctl::GeneralHelp() << "\n" << FlagList();
      return kExitOk;
    }
    const std::string name = CommandName(topic);
    if (name.empty()) {
      return Usage(
          absl::StrCat("unknown command '", topic[0], "' (see psctl --help)"));
    }
    std::cout << ps::psctl::CommandHelp(name);
    return kExitOk;
  }
  // --flagfile and the like; every value was checked above.
  // Only the flags go to absl, which would take "-1" for one.
  std::vector<char*> flag_argv = {argv[0]};
  flag_argv.insert(flag_argv.end(), scan.flag_args.begin(),
                   scan.flag_args.end());
  absl::ParseCommandLine(static_cast<int>(flag_argv.size()), flag_argv.data());

  if (scan.positional.empty()) {
    return Usage("no command given (see psctl --help)");
  }
  if (command.empty()) {
    return Usage(absl::StrCat("unknown command '", scan.positional[0],
                              "' (see psctl --help)"));
  }

  // The command's own arguments and flags.
  const std::vector<std::string>& args = scan.positional;
  std::function<int(const ps::psctl::ShardSet&, const ps::psctl::Output&)> run;
  ClusterUse use = ClusterUse::kRead;
  std::string label = command;
  if (command == "info" || command == "vars" || command == "checkpoint" ||
      command == "health") {
    if (auto e = CheckArgs(args, 1, command)) return *e;
    if (auto e = CheckFlags(scan.given, command, {})) return *e;
    run = command == "info"         ? ps::psctl::RunInfo
          : command == "vars"       ? ps::psctl::RunVars
          : command == "checkpoint" ? ps::psctl::RunCheckpoint
                                    : ps::psctl::RunHealth;
    use = command == "info"         ? ClusterUse::kInspect
          : command == "vars"       ? ClusterUse::kRead
          : command == "checkpoint" ? ClusterUse::kChange
                                    : ClusterUse::kAddresses;
  } else if (command == "stats") {
    if (auto e = CheckArgs(args, 1, command)) return *e;
    if (auto e =
            CheckFlags(scan.given, command, {"watch", "interval_s", "count"})) {
      return *e;
    }
    ps::psctl::StatsOptions options;
    options.watch = absl::GetFlag(FLAGS_watch);
    options.interval_s = absl::GetFlag(FLAGS_interval_s);
    options.count = absl::GetFlag(FLAGS_count);
    if (!(options.interval_s > 0)) return Usage("--interval_s must be > 0");
    if (options.count < 0) return Usage("--count must be >= 0");
    run = [options](const auto& shards, const auto& output) {
      return ps::psctl::RunStats(shards, options, output);
    };
  } else if (command == "optimizer get") {
    if (auto e = CheckArgs(args, 2, command)) return *e;
    if (auto e = CheckFlags(scan.given, command, {"var"})) return *e;
    const std::string var = absl::GetFlag(FLAGS_var);
    run = [var](const auto& shards, const auto& output) {
      return ps::psctl::RunOptimizerGet(shards, var, output);
    };
  } else if (command == "optimizer set") {
    if (args.size() < 3) {
      return Usage(absl::StrCat("optimizer set needs a rule: ",
                                absl::StrJoin(ps::psctl::RuleNames(), ", ")));
    }
    if (auto e = CheckArgs(args, 3, command)) return *e;
    const std::string rule = args[2];
    const std::vector<std::string> allowed = ps::psctl::RuleFlags(rule);
    if (allowed.empty()) {
      return Usage(absl::StrCat("unknown rule '", rule, "'; choose one of ",
                                absl::StrJoin(ps::psctl::RuleNames(), ", ")));
    }
    if (auto e = CheckFlags(scan.given, command + " " + rule, allowed)) {
      return *e;
    }
    auto built = ps::psctl::BuildRuleConfig(rule, RuleValuesFromFlags());
    if (!built.ok()) return Usage(std::string(built.status().message()));
    use = ClusterUse::kChange;
    label = "optimizer set " + rule;
    ps::psctl::ConfigChangeRequest request;
    request.command = "optimizer set " + rule;
    request.variable = absl::GetFlag(FLAGS_var);
    request.reset_state = absl::GetFlag(FLAGS_reset_state);
    request.change = [config = *built](const ps::v1::OptimizerConfig& current)
        -> absl::StatusOr<ps::v1::OptimizerConfig> {
      ps::v1::OptimizerConfig next = config;
      if (current.has_schedule()) {
        *next.mutable_schedule() = current.schedule();
      }
      return next;
    };
    run = [request](const auto& shards, const auto& output) {
      return ps::psctl::RunConfigChange(shards, request, output);
    };
  } else if (command == "lr set") {
    if (args.size() < 3) return Usage("lr set needs a value, e.g. 0.01");
    if (auto e = CheckArgs(args, 3, command)) return *e;
    if (auto e = CheckFlags(scan.given, command, {"var"})) return *e;
    double lr = 0;
    if (!absl::SimpleAtod(args[2], &lr)) {
      return Usage(absl::StrCat("lr set: '", args[2], "' is not a number"));
    }
    use = ClusterUse::kChange;
    ps::psctl::ConfigChangeRequest request;
    request.command = "lr set";
    request.variable = absl::GetFlag(FLAGS_var);
    request.change = [lr](const ps::v1::OptimizerConfig& current)
        -> absl::StatusOr<ps::v1::OptimizerConfig> {
      ps::v1::OptimizerConfig next = current;
      next.set_learning_rate(lr);
      return next;
    };
    run = [request](const auto& shards, const auto& output) {
      return ps::psctl::RunConfigChange(shards, request, output);
    };
  } else if (command == "schedule set") {
    if (args.size() < 3) {
      return Usage(
          "schedule set needs a kind: step, exponential, cosine or none");
    }
    if (auto e = CheckArgs(args, 3, command)) return *e;
    const std::string kind = args[2];
    const std::vector<std::string> allowed = ps::psctl::ScheduleFlags(kind);
    if (allowed.empty()) {
      return Usage(absl::StrCat("unknown schedule '", kind,
                                "'; choose one of step, exponential, cosine, "
                                "none"));
    }
    if (auto e = CheckFlags(scan.given, command + " " + kind, allowed)) {
      return *e;
    }
    auto schedule = ps::psctl::BuildSchedule(kind, ScheduleValuesFromFlags());
    if (!schedule.ok()) return Usage(std::string(schedule.status().message()));
    use = ClusterUse::kChange;
    label = "schedule set " + kind;
    ps::psctl::ConfigChangeRequest request;
    request.command = "schedule set " + kind;
    request.variable = absl::GetFlag(FLAGS_var);
    request.change = [schedule =
                          *schedule](const ps::v1::OptimizerConfig& current)
        -> absl::StatusOr<ps::v1::OptimizerConfig> {
      ps::v1::OptimizerConfig next = current;
      *next.mutable_schedule() = schedule;
      return next;
    };
    run = [request](const auto& shards, const auto& output) {
      return ps::psctl::RunConfigChange(shards, request, output);
    };
  } else {
    // "optimizer", "lr" or "schedule" without a known verb.
    const std::string verbs = command == "optimizer" ? "get or set" : "set";
    return Usage(absl::StrCat(
        "'", command, "' needs ", verbs,
        args.size() > 1 ? absl::StrCat(", not '", args[1], "'") : "",
        " (see psctl help ", command, ")"));
  }

  // Connection settings.
  ps::psctl::ConnectOptions connect;
  auto servers = ps::ParseServerList(absl::GetFlag(FLAGS_servers));
  if (!servers.ok()) {
    return Usage(absl::StrCat("--servers: ", servers.status().message()));
  }
  connect.servers = *std::move(servers);
  if (const std::string path = absl::GetFlag(FLAGS_token_file); !path.empty()) {
    auto token = ps::psctl::ReadTokenFile(path);
    if (!token.ok()) return Usage(std::string(token.status().message()));
    connect.token = *std::move(token);
  }
  if (const std::string path = absl::GetFlag(FLAGS_tls_ca_file);
      !path.empty()) {
    auto pem = ps::psctl::ReadWholeFile(path);
    if (!pem.ok()) {
      return Usage(absl::StrCat("--tls_ca_file: ", pem.status().message()));
    }
    connect.tls_root_certs = *std::move(pem);
  }
  const double timeout_s = absl::GetFlag(FLAGS_timeout_s);
  if (!(timeout_s > 0)) return Usage("--timeout_s must be > 0");
  connect.timeout = std::chrono::milliseconds(
      static_cast<int64_t>(std::min(timeout_s, 1e6) * 1000));

  ps::psctl::ShardSet shards(connect);
  ps::psctl::Output output;
  output.json = absl::GetFlag(FLAGS_json);
  output.out = &std::cout;
  output.err = &std::cerr;
  const int status = RunOnCluster(use, label, run, shards, output);
  std::cout.flush();
  return status;
}
