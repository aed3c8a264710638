// The optimizer configs of one shard: the default, the variables' own, and
// the config version that counts every change; and what a change of rule
// does to a part's optimizer state (docs/optimizers.md).
//
// Thread safety: every method may be called concurrently; the table has its
// own lock, taken after any block lock (see VariableStore's lock order).
#ifndef PS_SERVER_RULE_TABLE_H_
#define PS_SERVER_RULE_TABLE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "common/optimizer_settings.h"
#include "proto/ps/storage/v1/checkpoint.pb.h"
#include "proto/ps/v1/ps.pb.h"
#include "server/optimizer/update.h"

namespace ps {

// An optimizer config as given and as resolved; immutable once made.
struct OptimizerEntry {
  v1::OptimizerConfig config;
  optimizer::OptimizerSettings settings;
};

// Of the slots `held`, those a part keeps when its rule changes from `from`
// to `to`: all of them for the same rule, those whose meaning carries over
// for another (a running mean of the gradient, a running mean of its
// square), none with `reset_state`.
optimizer::StateSlots KeptSlots(const optimizer::RuleParams& from,
                                const optimizer::RuleParams& to,
                                bool reset_state, optimizer::StateSlots held);

// Adapts a part's optimizer state from rule `from` to rule `to`: fresh with
// `reset_state`; otherwise the step count stays, the slots KeptSlots keeps
// stay, the others are freed (they start afresh when a rule needs them), and
// Eve's feedback starts over on another rule.
void AdaptState(const optimizer::RuleParams& from,
                const optimizer::RuleParams& to, bool reset_state,
                optimizer::BlockOptimizerState& state);

class RuleTable {
 public:
  // REQUIRES: `default_config` is valid.
  explicit RuleTable(const v1::OptimizerConfig& default_config);

  // The optimizer in force for `name` (the default when it has none).
  std::shared_ptr<const OptimizerEntry> For(const std::string& name) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // Whether `name` has its own.
  bool HasOwn(const std::string& name) const ABSL_LOCKS_EXCLUDED(mu_);
  // The config in force for `name` ("" = the default), with config_version
  // set to the current version.
  v1::OptimizerConfig ConfigOf(const std::string& name) const
      ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t version() const ABSL_LOCKS_EXCLUDED(mu_);

  // Sets `name`'s own optimizer without counting a change (a variable
  // created with its own).
  void SetOwn(const std::string& name,
              std::shared_ptr<const OptimizerEntry> entry)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Drops `name`'s own optimizer, if any (the variable was deleted),
  // without counting a change.
  void Forget(const std::string& name) ABSL_LOCKS_EXCLUDED(mu_);

  // A change: the default ("" ) or `name`'s own becomes `entry`; the
  // version goes up by one. Returns the version before.
  uint64_t Change(const std::string& name,
                  std::shared_ptr<const OptimizerEntry> entry)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Checkpoints: the default, the version and every variable's own config
  // into `state` (for the variables it lists), and back.
  void Snapshot(storage::v1::ShardState& state) const ABSL_LOCKS_EXCLUDED(mu_);
  // Restores the default and the version; INVALID_ARGUMENT when the
  // default is not a valid config.
  absl::Status Restore(const storage::v1::ShardState& state)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 1;
  std::shared_ptr<const OptimizerEntry> default_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<const OptimizerEntry>> own_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace ps

#endif  // PS_SERVER_RULE_TABLE_H_
