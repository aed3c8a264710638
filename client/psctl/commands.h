// psctl's commands, run against a set of shards.
//
// Every command calls all shards at once and prints one answer per shard:
// an aligned table, or JSON with Output::json. The exit status is one of
// the codes below; a shard that refused or did not answer is named on
// stderr.
#ifndef PS_CLIENT_PSCTL_COMMANDS_H_
#define PS_CLIENT_PSCTL_COMMANDS_H_

#include <functional>
#include <ostream>
#include <string>

#include "absl/status/statusor.h"
#include "client/psctl/cluster.h"
#include "proto/ps/v1/ps.pb.h"

namespace ps::psctl {

// Exit statuses.
inline constexpr int kExitOk = 0;
// A shard refused, failed or did not answer (or the cluster disagrees with
// itself, for `info`).
inline constexpr int kExitShardFailed = 1;
// Bad usage: an unknown command, rule or flag, a bad value, or a config that
// fails validation (nothing was sent).
inline constexpr int kExitUsage = 2;

struct Output {
  bool json = false;
  std::ostream* out = nullptr;  // results
  std::ostream* err = nullptr;  // problems, one line each
};

// What each shard says it is (from ShardSet::ReadLayout, or asked here when
// it has not run) and its default optimizer; exit 1 when a shard fails or
// the layout has a problem.
int RunInfo(const ShardSet& shards, const Output& output);

// --var takes a glob (fnmatch(3), no flags: '*' and '?' match any
// character, '/' and '.' included, [...] a set): a command given one runs on
// every variable (and table) whose name it matches, and a glob that matches
// nothing is an error (kExitUsage) before anything changes.

// ListVariables of every shard, merged per variable; with `pattern` only
// the names it matches.
int RunVars(const ShardSet& shards, const std::string& pattern,
            const Output& output);

// The optimizer in force for `variable` ("" = the default, or a glob) on
// every shard.
int RunOptimizerGet(const ShardSet& shards, const std::string& variable,
                    const Output& output);

// Deletes the variables and tables `pattern` (a name or a glob) matches on
// every shard (DeleteVariable): their values, rows, state and records go.
int RunDelete(const ShardSet& shards, const std::string& pattern,
              const Output& output);

// A change of optimizer config, made by reading each shard's config and
// rewriting it.
struct ConfigChangeRequest {
  std::string command;  // for the output, e.g. "lr set"
  // "" = the default and every variable without its own; or a name, or a
  // glob: every variable and table it matches.
  std::string variable;
  bool reset_state = false;
  // The new config from a shard's current one (config_version cleared).
  std::function<absl::StatusOr<v1::OptimizerConfig>(
      const v1::OptimizerConfig& current)>
      change;
};

// Reads the current config from every shard (nothing is sent unless all
// answer), makes and validates each new config locally (nothing is sent if
// one is invalid: kExitUsage), then sends SetOptimizer to every shard at
// once and prints each shard's answer and new config version. A change of
// the default also says how many variables kept their own optimizer.
int RunConfigChange(const ShardSet& shards, const ConfigChangeRequest& request,
                    const Output& output);

struct StatsOptions {
  bool watch = false;
  double interval_s = 2;
  // With watch: rounds to print, 0 = until interrupted.
  int count = 0;
};

// GetStats of every shard (and, with watch, again every interval).
int RunStats(const ShardSet& shards, const StatsOptions& options,
             const Output& output);

// A cluster checkpoint, made by shard 0: its number and every part.
int RunCheckpoint(const ShardSet& shards, const Output& output);
// The complete cluster checkpoints shard 0 sees, newest first.
int RunCheckpoints(const ShardSet& shards, const Output& output);

// grpc.health.v1 Check on every shard; non-zero unless all are SERVING.
int RunHealth(const ShardSet& shards, const Output& output);

// Refuses to run `command` (e.g. "lr set") because the layout that
// ShardSet::ReadLayout read has a problem or, for a `change`, a server did
// not answer: one line on stderr (and with --json the shards' answers on
// stdout). Returns kExitShardFailed.
int RefuseLayout(const ShardSet& shards, const std::string& command,
                 bool change, const Output& output);

// After a read that succeeded: kExitOk when every server said which shard it
// is; otherwise one line on stderr naming those that did not, and
// kExitShardFailed.
int ReportUnverified(const ShardSet& shards, const std::string& command,
                     const Output& output);

}  // namespace ps::psctl

#endif  // PS_CLIENT_PSCTL_COMMANDS_H_
