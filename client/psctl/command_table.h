// psctl's commands as one table, as git's commands[] in git.c: each row
// names a command, the arguments and flags it takes, its one-line and long
// help, how it uses the cluster and the function that runs it. Dispatch,
// `psctl help`, `psctl help COMMAND` and the check that every flag given
// belongs to the command all read the table; a new command is one row.
//
// Thread safety: thread-compatible.
#ifndef PS_CLIENT_PSCTL_COMMAND_TABLE_H_
#define PS_CLIENT_PSCTL_COMMAND_TABLE_H_

#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/psctl/cluster.h"
#include "client/psctl/commands.h"
#include "client/psctl/flags.h"

namespace ps::psctl {

// How a command uses the servers of --servers.
enum class ClusterUse {
  // It sends nothing (help).
  kNone,
  // Each address on its own: no token is needed and no cluster is checked
  // (health, as an orchestrator's probe of one shard).
  kAddresses,
  // It shows what each server says it is, and says (exit 1) when the servers
  // are not the shards of one cluster, each once (info).
  kInspect,
  // It reads: the servers that answer GetClusterInfo must be shards of one
  // cluster, each once, and --servers must list all of them; a server that
  // does not answer is shown as failed and the exit status is 1.
  kRead,
  // It changes the cluster: every server must answer GetClusterInfo, as
  // shard 0..S-1 of one cluster exactly once, before anything is sent.
  kChange,
};

// A command's argument, e.g. RULE.
struct Arg {
  std::string metavar = {};  // "RULE"
  std::string noun = {};     // "rule": "optimizer set needs a rule: ..."
  // Its values, when it has a fixed set; empty for any value.
  std::function<std::vector<std::string>()> choices = nullptr;
  // Shown after the noun when it is missing, e.g. "e.g. 0.01".
  std::string example = {};
};

// What a command gets from its command line.
struct Invocation {
  std::string command = {};            // "optimizer set"
  std::vector<std::string> args = {};  // its arguments, e.g. {"adam"}
  const FlagValues* flags = nullptr;
};

// What a command does once its command line is read and the cluster checked.
using Action = std::function<int(const ShardSet&, const Output&)>;

struct Command {
  std::string name = {};  // "optimizer set"
  std::vector<Arg> args = {};
  // Takes any number of further words (help's COMMAND).
  bool rest = false;
  // Its own flags (without "--"), besides the global ones.
  std::vector<std::string> flags = {};
  // Flags that depend on the first argument (a rule's hyper-parameters);
  // nullptr when none.
  std::function<std::vector<std::string>(const std::string& arg)> arg_flags =
      nullptr;
  std::string summary = {};  // one line for `psctl help`
  std::string help = {};     // the long help after the usage line
  // A generated part of the long help (each rule's flags); may be empty.
  std::function<std::string()> more_help = nullptr;
  ClusterUse cluster = ClusterUse::kRead;
  // Reads the arguments and flags: the action, or INVALID_ARGUMENT (a usage
  // error, exit 2) before anything is sent.
  std::function<absl::StatusOr<Action>(const Invocation&)> prepare = nullptr;
};

// Every command, in the order `psctl help` lists them.
const std::vector<Command>& Commands();

// Every flag: the global ones and those of every command.
const FlagSet& AllFlags();

// The global flags' names (--servers, --json, ...), which every command
// takes.
const std::vector<std::string>& GlobalFlags();

// The flags `command` takes besides the global ones, with `arg` (its first
// argument, may be empty) for those that depend on it.
std::vector<std::string> CommandFlags(const Command& command,
                                      const std::string& arg);

// The overview: usage, the commands, the global flags, exit statuses.
std::string GeneralHelp();
// Every flag with its default, for `psctl --help`.
std::string FlagList();
// The help of `words` ("optimizer set"; "optimizer" gives both optimizer
// commands), or "" when no command has that name.
std::string CommandHelp(const std::vector<std::string>& words);

// psctl itself: reads `args` (without the program name), runs the command
// and returns the exit status (commands.h). Results go to `out`, problems to
// `err`, one line each.
int Main(const std::vector<std::string>& args, std::ostream& out,
         std::ostream& err);

}  // namespace ps::psctl

#endif  // PS_CLIENT_PSCTL_COMMAND_TABLE_H_
