#include "client/psctl/command_table.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <set>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/cluster_check.h"
#include "client/psctl/optimizer_flags.h"
#include "common/file_util.h"
#include "common/token_file.h"

namespace ps::psctl {
namespace {

absl::Status Usage(absl::string_view message) {
  return absl::InvalidArgumentError(message);
}

// `text` wrapped to `width` columns, every line after the first indented by
// `indent` spaces; `first` columns of the first line are taken already.
std::string Wrap(const std::string& text, size_t first, size_t indent,
                 size_t width = 79) {
  std::string wrapped;
  size_t column = first;
  bool line_start = true;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (!line_start && column + 1 + word.size() > width) {
      absl::StrAppend(&wrapped, "\n", std::string(indent, ' '));
      column = indent;
    } else if (!line_start) {
      wrapped += ' ';
      ++column;
    }
    absl::StrAppend(&wrapped, word);
    column += word.size();
    line_start = false;
  }
  return wrapped;
}

// "  --name=X  help; default: D" for each of `names`, wrapped.
std::string FlagLines(const std::vector<std::string>& names) {
  std::string text;
  for (const std::string& name : names) {
    const FlagSpec& spec = AllFlags().at(name);
    const std::string head = absl::StrCat("  ", FlagUsage(spec), "  ");
    const std::string shown =
        spec.default_text.empty() && spec.type == FlagType::kString
            ? "\"\""
            : spec.default_text;
    absl::StrAppend(
        &text, head,
        Wrap(absl::StrCat(spec.help, "; default: ", shown), head.size(), 6),
        "\n");
  }
  return text;
}

// The usage line of a command.
std::string UsageLine(const Command& command) {
  std::string line = absl::StrCat("Usage: psctl ", command.name);
  for (const Arg& arg : command.args) absl::StrAppend(&line, " ", arg.metavar);
  if (command.rest) absl::StrAppend(&line, " [COMMAND]");
  for (const std::string& flag : command.flags) {
    absl::StrAppend(&line, " [", FlagUsage(AllFlags().at(flag)), "]");
  }
  if (command.arg_flags && !command.args.empty()) {
    absl::StrAppend(&line, " [", command.args[0].metavar, "'s FLAGS]");
  }
  return line;
}

std::string OneCommandHelp(const Command& command) {
  std::string text = absl::StrCat(UsageLine(command), "\n\n", command.help);
  if (command.more_help) absl::StrAppend(&text, "\n", command.more_help());
  if (!command.flags.empty()) {
    absl::StrAppend(&text, "\nFlags:\n", FlagLines(command.flags));
  }
  return text;
}

// --- What each command does with its arguments and flags. ---

absl::StatusOr<Action> Runs(int (*run)(const ShardSet&, const Output&)) {
  return Action(run);
}

absl::StatusOr<Action> PrepareStats(const Invocation& in) {
  StatsOptions options;
  options.watch = in.flags->Bool("watch");
  options.interval_s = in.flags->Double("interval_s");
  const int64_t count = in.flags->Int("count");
  if (!(options.interval_s > 0)) return Usage("--interval_s must be > 0");
  if (count < 0) return Usage("--count must be >= 0");
  if (count > INT32_MAX) return Usage("--count must be below 2^31");
  options.count = static_cast<int>(count);
  return Action([options](const ShardSet& shards, const Output& output) {
    return RunStats(shards, options, output);
  });
}

absl::StatusOr<Action> PrepareVars(const Invocation& in) {
  const std::string var = in.flags->String("var");
  return Action([var](const ShardSet& shards, const Output& output) {
    return RunVars(shards, var, output);
  });
}

absl::StatusOr<Action> PrepareDelete(const Invocation& in) {
  const std::string var = in.flags->String("var");
  if (var.empty()) {
    return Usage(
        "vars delete needs --var: a variable's name or a glob (e.g. "
        "--var 'model/*')");
  }
  return Action([var](const ShardSet& shards, const Output& output) {
    return RunDelete(shards, var, output);
  });
}

absl::StatusOr<Action> PrepareOptimizerGet(const Invocation& in) {
  const std::string var = in.flags->String("var");
  return Action([var](const ShardSet& shards, const Output& output) {
    return RunOptimizerGet(shards, var, output);
  });
}

Action ChangeAction(ConfigChangeRequest request) {
  return [request = std::move(request)](const ShardSet& shards,
                                        const Output& output) {
    return RunConfigChange(shards, request, output);
  };
}

absl::StatusOr<Action> PrepareOptimizerSet(const Invocation& in) {
  const std::string& rule = in.args[0];
  absl::StatusOr<v1::OptimizerConfig> built = BuildRuleConfig(rule, *in.flags);
  if (!built.ok()) return built.status();
  ConfigChangeRequest request;
  request.command = "optimizer set " + rule;
  request.variable = in.flags->String("var");
  request.reset_state = in.flags->Bool("reset_state");
  request.change = [config =
                        *std::move(built)](const v1::OptimizerConfig& current)
      -> absl::StatusOr<v1::OptimizerConfig> {
    v1::OptimizerConfig next = config;
    // The schedule in force is kept.
    if (current.has_schedule()) *next.mutable_schedule() = current.schedule();
    return next;
  };
  return ChangeAction(std::move(request));
}

absl::StatusOr<Action> PrepareLrSet(const Invocation& in) {
  double lr = 0;
  if (!absl::SimpleAtod(in.args[0], &lr)) {
    return Usage(absl::StrCat("lr set: '", in.args[0], "' is not a number"));
  }
  ConfigChangeRequest request;
  request.command = "lr set";
  request.variable = in.flags->String("var");
  request.change = [lr](const v1::OptimizerConfig& current)
      -> absl::StatusOr<v1::OptimizerConfig> {
    v1::OptimizerConfig next = current;
    next.set_learning_rate(lr);
    return next;
  };
  return ChangeAction(std::move(request));
}

absl::StatusOr<Action> PrepareScheduleSet(const Invocation& in) {
  const std::string& kind = in.args[0];
  absl::StatusOr<v1::LearningRateSchedule> schedule =
      BuildSchedule(kind, *in.flags);
  if (!schedule.ok()) return schedule.status();
  ConfigChangeRequest request;
  request.command = "schedule set " + kind;
  request.variable = in.flags->String("var");
  request.change =
      [schedule = *std::move(schedule)](const v1::OptimizerConfig& current)
      -> absl::StatusOr<v1::OptimizerConfig> {
    v1::OptimizerConfig next = current;
    *next.mutable_schedule() = schedule;
    return next;
  };
  return ChangeAction(std::move(request));
}

absl::StatusOr<Action> PrepareHelp(const Invocation& in) {
  std::string text;
  if (in.args.empty()) {
    text = absl::StrCat(GeneralHelp(), "\n", FlagList());
  } else {
    text = CommandHelp(in.args);
    if (text.empty()) {
      return Usage(absl::StrCat("unknown command '", in.args[0],
                                "' (see psctl --help)"));
    }
  }
  return Action([text](const ShardSet&, const Output& output) {
    *output.out << text;
    return kExitOk;
  });
}

std::string OptimizerSetMoreHelp() {
  std::vector<std::string> common;
  for (const FieldFlag& flag : CommonRuleFlags()) {
    common.push_back(flag.spec.name);
  }
  return absl::StrCat("Flags for every rule:\n", FlagLines(common),
                      "Each rule's flags (any other is refused), and the "
                      "value when not given:\n",
                      RuleFlagsHelp());
}

std::string ScheduleSetMoreHelp() {
  std::vector<std::string> common;
  for (const FieldFlag& flag : CommonScheduleFlags()) {
    common.push_back(flag.spec.name);
  }
  return absl::StrCat("Kinds and their flags (any other is refused):\n",
                      ScheduleFlagsHelp(), "Flags for every kind:\n",
                      FlagLines(common));
}

// --- The table. ---

std::vector<Command> MakeCommands() {
  const Arg rule{.metavar = "RULE", .noun = "rule", .choices = [] {
                   return ChoiceNames(Rules());
                 }};
  const Arg kind{.metavar = "KIND", .noun = "schedule", .choices = [] {
                   return ChoiceNames(ScheduleKinds());
                 }};
  const Arg value{.metavar = "VALUE", .noun = "value", .example = "e.g. 0.01"};
  return {
      {.name = "info",
       .summary = "each shard's cluster settings and default optimizer",
       .help =
           R"(Shows what each server says it is (its shard index, the number of shards and
block size it was started with, its consistency mode) with its config version
and default optimizer, in shard order. Exits 1 if a shard does not answer, or
if the servers are not the shards of one cluster, each listed once.
)",
       .cluster = ClusterUse::kInspect,
       .prepare = [](const Invocation&) { return Runs(RunInfo); }},
      {.name = "vars",
       .flags = {"var"},
       .summary = "the variables: shape, blocks, steps, optimizer",
       .help =
           R"(Lists every variable: shape, size, blocks (over all shards), the lowest and
highest block step, the rule and config in force and whether the variable
has its own optimizer (an override) or follows the default. With --var only
the variables and tables whose name it matches (a name or a glob, e.g.
--var 'encoder.*'); a --var that matches none exits 2.
)",
       .prepare = PrepareVars},
      {.name = "vars delete",
       .flags = {"var"},
       .summary = "delete the variables and tables --var names or matches",
       .help =
           R"(Deletes every variable and sparse table whose name --var matches (a name or a
glob, e.g. --var 'model/*') on every shard: its values (rows), optimizer
state, own optimizer and exactly-once records go, with their memory; the
next checkpoint no longer holds it. Pushes to it then fail with NOT_FOUND,
and a later CreateVariable (CreateTable) of the name starts afresh. A --var
that matches nothing exits 2 and deletes nothing. Needs an admin token when
the shards have tokens.

Example: psctl vars delete --var 'old_model/*'
)",
       .cluster = ClusterUse::kChange,
       .prepare = PrepareDelete},
      {.name = "optimizer get",
       .flags = {"var"},
       .summary = "the optimizer in force (--var=V for one variable)",
       .help =
           R"(Shows the optimizer config in force on every shard, with each shard's config
version: the default optimizer, or with --var the one variable V follows.
)",
       .prepare = PrepareOptimizerGet},
      {.name = "optimizer set",
       .args = {rule},
       .flags = {"var", "reset_state"},
       .arg_flags = RuleFlagNames,
       .summary = "switch to RULE with the given hyper-parameters",
       .help =
           R"(Switches to RULE with the given hyper-parameters; those not given take the
server's defaults (PyTorch's). The learning-rate schedule in force is kept
(change it with 'schedule set'). Without --var the default optimizer changes,
and with it every variable that has no optimizer of its own (the answer says
how many kept theirs); with --var only variable V, or every variable a glob
matches (each then has its own).

State: a change of hyper-parameters keeps the optimizer state. A change of
rule keeps the state whose meaning carries over (e.g. Adam's first moment
becomes Momentum's buffer) and the step count; the rest starts at zero.
--reset_state starts from fresh state at step 1.

Example: psctl optimizer set adam --lr=0.01 --beta1=0.8 --var=embedding
)",
       .more_help = OptimizerSetMoreHelp,
       .cluster = ClusterUse::kChange,
       .prepare = PrepareOptimizerSet},
      {.name = "lr set",
       .args = {value},
       .flags = {"var"},
       .summary = "change only the learning rate",
       .help =
           R"(Reads the optimizer in force on each shard and changes only its learning rate
(the base rate, before the schedule); the rule, its state and every other
setting are kept. Without --var the default changes, and with it the
variables that have no optimizer of their own: the answer says how many kept
their own. --var names one variable or a glob; --var '*' changes every
variable, each keeping its own rule (each then has its own optimizer).

Example: psctl lr set 0.01 --var 'encoder.*.weight'
)",
       .cluster = ClusterUse::kChange,
       .prepare = PrepareLrSet},
      {.name = "schedule set",
       .args = {kind},
       .flags = {"var"},
       .arg_flags = ScheduleFlagNames,
       .summary = "change only the learning-rate schedule",
       .help =
           R"(Reads the optimizer in force on each shard and changes only its learning-rate
schedule; everything else is kept. At step t (1, 2, ...) the rate is
  step         rate x gamma^floor(t / step_size)
  exponential  rate x gamma^t
  cosine       cosine annealing from rate down to eta_min over t_max steps
  none         a constant rate
each times min(1, t / warmup_steps) when warmup_steps is set.
)",
       .more_help = ScheduleSetMoreHelp,
       .cluster = ClusterUse::kChange,
       .prepare = PrepareScheduleSet},
      {.name = "stats",
       .flags = {"watch", "interval_s", "count"},
       .summary = "counters, latencies, per-variable steps and rates",
       .help =
           R"(Shows each shard's pushes, pulls, block updates, bytes in and out, refusals by
code, update latency percentiles, uptime and config version, then per variable
and shard its highest step, rule and learning rate after the schedule.
--watch repeats every --interval_s seconds, --count times (0: until
interrupted); with --json each round is one line of JSON.
)",
       .prepare = PrepareStats},
      {.name = "checkpoint",
       .summary = "make cluster checkpoint N: one part per shard",
       .help =
           R"(Asks shard 0 to make the next cluster checkpoint: every shard writes its part
of checkpoint N, then each records that N is complete. Prints N and each part
(shard, size, seconds, sync step, path). A shard started without a checkpoint
folder refuses (FAILED_PRECONDITION), and so does a shard 0 of several shards
started without --peers.
)",
       .cluster = ClusterUse::kChange,
       .prepare = [](const Invocation&) { return Runs(RunCheckpoint); }},
      {.name = "checkpoints",
       .summary = "the complete cluster checkpoints, newest first",
       .help =
           R"(Lists the complete cluster checkpoints that shard 0 sees, newest first, with
each part's shard, size, seconds, sync step and path.
)",
       .cluster = ClusterUse::kRead,
       .prepare = [](const Invocation&) { return Runs(RunCheckpoints); }},
      {.name = "health",
       .summary = "grpc.health.v1 Check on each address",
       .help =
           R"(Runs the standard grpc.health.v1 Check on every address of --servers (it needs
no token, and --servers may name any shards, one alone included: the servers
are not checked to be one whole cluster). Exits 1 unless every one answers
SERVING.
)",
       .cluster = ClusterUse::kAddresses,
       .prepare = [](const Invocation&) { return Runs(RunHealth); }},
      {.name = "help",
       .rest = true,
       .summary = "this text, or a command's help",
       .help =
           R"(Shows the overview, or the help of COMMAND (e.g. 'psctl help optimizer set').
)",
       .cluster = ClusterUse::kNone,
       .prepare = PrepareHelp},
  };
}

FlagSet MakeFlags() {
  std::vector<FlagSpec> specs = {
      // Global.
      {.name = "servers",
       .type = FlagType::kString,
       .help = "the shards' HOST:PORT, comma-separated, each once, in any "
               "order",
       .default_text = "127.0.0.1:50051",
       .default_value = "127.0.0.1:50051",
       .value_name = "HOST:PORT,..."},
      {.name = "token_file",
       .type = FlagType::kString,
       .help = "file whose first token (first word of the first line that is "
               "not blank or a # comment) is sent as 'authorization: Bearer "
               "<token>'",
       .value_name = "F"},
      {.name = "tls_ca_file",
       .type = FlagType::kString,
       .help = "PEM root certificate(s): connect with TLS and trust them; "
               "empty = plaintext",
       .value_name = "F"},
      {.name = "timeout_s",
       .type = FlagType::kDouble,
       .help = "deadline of each call, seconds",
       .default_text = "10",
       .default_value = "10",
       .value_name = "S"},
      {.name = "json",
       .type = FlagType::kBool,
       .help = "print JSON instead of tables",
       .default_text = "false"},
      // Commands'.
      {.name = "var",
       .type = FlagType::kString,
       .help = "the variable, or a glob of names ('*' and '?' match any "
               "character, '/' and '.' too; [...] a set), e.g. 'model/*': "
               "the command runs on every variable it matches, and one that "
               "matches none is an error; empty = the default optimizer",
       .value_name = "V"},
      {.name = "reset_state",
       .type = FlagType::kBool,
       .help = "start from fresh optimizer state at step 1",
       .default_text = "false"},
      {.name = "watch",
       .type = FlagType::kBool,
       .help = "repeat every --interval_s seconds",
       .default_text = "false"},
      {.name = "interval_s",
       .type = FlagType::kDouble,
       .help = "with --watch: seconds between rounds",
       .default_text = "2",
       .default_value = "2",
       .value_name = "S"},
      {.name = "count",
       .type = FlagType::kInt,
       .help = "with --watch: rounds to show; 0 = until stopped",
       .default_text = "0",
       .default_value = "0"},
  };
  for (FlagSpec& spec : OptimizerFlagSpecs()) specs.push_back(std::move(spec));
  FlagSet flags;
  for (FlagSpec& spec : specs) {
    const std::string name = spec.name;
    flags.emplace(name, std::move(spec));
  }
  return flags;
}

// The command that `words` name, and how many words its name has.
const Command* FindCommand(const std::vector<std::string>& words,
                           size_t* used) {
  const Command* found = nullptr;
  for (const Command& command : Commands()) {
    const std::vector<std::string> name = absl::StrSplit(command.name, ' ');
    if (name.size() > words.size()) continue;
    if (!std::equal(name.begin(), name.end(), words.begin())) continue;
    if (found == nullptr || name.size() > *used) {
      found = &command;
      *used = name.size();
    }
  }
  return found;
}

// The commands whose name starts with `group` and a space.
std::vector<const Command*> Group(const std::string& group) {
  std::vector<const Command*> members;
  for (const Command& command : Commands()) {
    if (absl::StartsWith(command.name, group + " ")) {
      members.push_back(&command);
    }
  }
  return members;
}

// Reads what the servers say they are and applies the command's rule.
int RunOnCluster(const Command& command, const std::string& label,
                 const Action& action, ShardSet& shards, const Output& output) {
  if (command.cluster == ClusterUse::kAddresses) return action(shards, output);
  shards.ReadLayout();
  switch (command.cluster) {
    case ClusterUse::kInspect:
      return action(shards, output);
    case ClusterUse::kRead: {
      if (!shards.layout_problem().ok()) {
        return RefuseLayout(shards, label, /*change=*/false, output);
      }
      const int status = action(shards, output);
      if (status != kExitOk) return status;
      return ReportUnverified(shards, label, output);
    }
    case ClusterUse::kChange:
      if (!shards.layout_problem().ok() || !shards.Unverified().empty()) {
        return RefuseLayout(shards, label, /*change=*/true, output);
      }
      return action(shards, output);
    case ClusterUse::kNone:
    case ClusterUse::kAddresses:
      break;
  }
  return action(shards, output);
}

}  // namespace

const std::vector<Command>& Commands() {
  static const auto* commands = new std::vector<Command>(MakeCommands());
  return *commands;
}

const FlagSet& AllFlags() {
  static const auto* flags = new FlagSet(MakeFlags());
  return *flags;
}

const std::vector<std::string>& GlobalFlags() {
  static const auto* flags = new std::vector<std::string>{
      "servers", "token_file", "tls_ca_file", "timeout_s", "json"};
  return *flags;
}

std::vector<std::string> CommandFlags(const Command& command,
                                      const std::string& arg) {
  std::vector<std::string> flags = command.flags;
  if (command.arg_flags && !arg.empty()) {
    for (const std::string& flag : command.arg_flags(arg)) {
      if (std::find(flags.begin(), flags.end(), flag) == flags.end()) {
        flags.push_back(flag);
      }
    }
  }
  return flags;
}

std::string GeneralHelp() {
  std::string commands;
  for (const Command& command : Commands()) {
    std::string head = command.name;
    for (const Arg& arg : command.args)
      absl::StrAppend(&head, " ", arg.metavar);
    if (command.rest) absl::StrAppend(&head, " [COMMAND]");
    head = absl::StrCat("  ", head);
    head.resize(std::max<size_t>(head.size() + 2, 26), ' ');
    absl::StrAppend(&commands, head, Wrap(command.summary, head.size(), 26),
                    "\n");
  }
  std::vector<std::string> rules = ChoiceNames(Rules());
  return absl::StrCat(
      R"(psctl: look at a parameter server cluster and change its optimizer live.

Usage: psctl [--servers=HOST:PORT,...] [--token_file=F] [--tls_ca_file=F]
             [--timeout_s=S] [--json] COMMAND [ARGS] [FLAGS]

Commands:
)",
      commands, "\nRules: ", absl::StrJoin(rules, ", "),
      R"(.

--servers lists every shard of one cluster once, in any order. Before any
command but health and help sends anything else, psctl asks each server which
shard it is (GetClusterInfo) and puts them in shard order; it refuses a list
that is not the shards 0..S-1 of one cluster (another count, a shard twice, or
servers that disagree on the number of shards, block size, consistency,
workers or quorum). Every command calls all shards at once and shows each
shard's answer. A change is validated here first, then checked by every shard
without being made (its variables, its memory limit), and made only when all
accept.

Global flags:
)",
      FlagLines(GlobalFlags()),
      R"(
Exit status: 0 when every shard answered OK; 1 when a shard refused, failed or
did not answer, or --servers is not one whole cluster (the shards are named on
stderr); 2 for bad usage (an unknown command, rule or flag, a bad value or
address, or a config that fails validation; nothing is sent).

'psctl help COMMAND' or 'psctl COMMAND --help' shows a command's flags.
)");
}

std::string FlagList() {
  std::vector<std::string> names;
  for (const auto& [name, spec] : AllFlags()) names.push_back(name);
  return absl::StrCat("Flags (every one, with its default):\n",
                      FlagLines(names));
}

std::string CommandHelp(const std::vector<std::string>& words) {
  if (words.empty()) return "";
  size_t used = 0;
  const Command* command = FindCommand(words, &used);
  if (command != nullptr) return OneCommandHelp(*command);
  std::vector<std::string> texts;
  for (const Command* member : Group(words[0])) {
    texts.push_back(OneCommandHelp(*member));
  }
  return absl::StrJoin(texts, "\n");
}

int Main(const std::vector<std::string>& args, std::ostream& out,
         std::ostream& err) {
  Output output;
  output.out = &out;
  output.err = &err;
  auto usage = [&](absl::string_view message) {
    err << "psctl: " << message << "\n";
    return kExitUsage;
  };
  absl::StatusOr<CommandLine> line = ReadCommandLine(args, &AllFlags());
  if (!line.ok()) return usage(line.status().message());
  std::vector<std::string> words = line->words;
  if (line->help) words.insert(words.begin(), "help");
  if (words.empty()) return usage("no command given (see psctl --help)");

  size_t used = 0;
  const Command* command = FindCommand(words, &used);
  if (command == nullptr) {
    const std::vector<const Command*> group = Group(words[0]);
    if (group.empty()) {
      return usage(
          absl::StrCat("unknown command '", words[0], "' (see psctl --help)"));
    }
    std::vector<std::string> verbs;
    for (const Command* member : group) {
      verbs.push_back(member->name.substr(words[0].size() + 1));
    }
    return usage(absl::StrCat(
        "'", words[0], "' needs ", absl::StrJoin(verbs, " or "),
        words.size() > 1 ? absl::StrCat(", not '", words[1], "'") : "",
        " (see psctl help ", words[0], ")"));
  }
  Invocation invocation;
  invocation.command = command->name;
  invocation.args.assign(words.begin() + used, words.end());
  invocation.flags = &line->flags;
  const std::vector<std::string>& given = invocation.args;

  // Its arguments.
  for (size_t i = 0; i < command->args.size(); ++i) {
    const Arg& arg = command->args[i];
    const std::vector<std::string> choices =
        arg.choices ? arg.choices() : std::vector<std::string>();
    if (given.size() <= i) {
      return usage(absl::StrCat(
          command->name, " needs a ", arg.noun,
          choices.empty() ? absl::StrCat(", ", arg.example)
                          : absl::StrCat(": ", absl::StrJoin(choices, ", "))));
    }
    if (!choices.empty() &&
        std::find(choices.begin(), choices.end(), given[i]) == choices.end()) {
      return usage(absl::StrCat("unknown ", arg.noun, " '", given[i],
                                "'; choose one of ",
                                absl::StrJoin(choices, ", ")));
    }
  }
  if (!command->rest && given.size() > command->args.size()) {
    return usage(absl::StrCat("unexpected argument '",
                              given[command->args.size()], "' after '",
                              command->name, "'"));
  }

  // Its flags. Help takes any: `psctl lr set --var=w --help` is help.
  const std::string arg = given.empty() ? "" : given[0];
  const std::string label = command->arg_flags
                                ? absl::StrCat(command->name, " ", arg)
                                : command->name;
  if (command->cluster != ClusterUse::kNone) {
    const std::vector<std::string> allowed = CommandFlags(*command, arg);
    const std::set<std::string> global(GlobalFlags().begin(),
                                       GlobalFlags().end());
    for (const std::string& name : line->flags.GivenNames()) {
      if (global.contains(name) ||
          std::find(allowed.begin(), allowed.end(), name) != allowed.end()) {
        continue;
      }
      std::vector<std::string> shown;
      for (const std::string& a : allowed) shown.push_back("--" + a);
      return usage(absl::StrCat(
          "--", name, " does not apply to '", label, "'",
          shown.empty()
              ? std::string(" (it takes no flags of its own)")
              : absl::StrCat(" (it takes ", absl::StrJoin(shown, " "), ")")));
    }
  }

  absl::StatusOr<Action> action = command->prepare(invocation);
  if (!action.ok()) return usage(action.status().message());
  if (command->cluster == ClusterUse::kNone) {
    return (*action)(ShardSet(ConnectOptions()), output);
  }

  // The connection.
  const FlagValues& flags = line->flags;
  ConnectOptions connect;
  absl::StatusOr<std::vector<std::string>> servers =
      ParseServerList(flags.String("servers"));
  if (!servers.ok()) {
    return usage(absl::StrCat("--servers: ", servers.status().message()));
  }
  connect.servers = *std::move(servers);
  if (const std::string path = flags.String("token_file"); !path.empty()) {
    // The first token in the file; its label, if any, is not sent.
    absl::StatusOr<std::vector<TokenLine>> tokens = ReadTokenFile(path);
    if (!tokens.ok()) return usage(tokens.status().message());
    connect.token = std::move(tokens->front().secret);
  }
  if (const std::string path = flags.String("tls_ca_file"); !path.empty()) {
    absl::StatusOr<std::string> pem = ReadSmallFile(path, "--tls_ca_file");
    if (!pem.ok()) return usage(pem.status().message());
    connect.tls_root_certs = *std::move(pem);
  }
  const double timeout_s = flags.Double("timeout_s");
  if (!(timeout_s > 0)) return usage("--timeout_s must be > 0");
  connect.timeout = std::chrono::milliseconds(
      static_cast<int64_t>(std::min(timeout_s, 1e6) * 1000));
  output.json = flags.Bool("json");

  ShardSet shards(connect);
  const int status = RunOnCluster(*command, label, *action, shards, output);
  out.flush();
  return status;
}

}  // namespace ps::psctl
