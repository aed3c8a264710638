// VariableStore's operator side: optimizer changes, listings and stats.
#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/optimizer_config.h"
#include "common/rule_catalog.h"
#include "common/status.h"
#include "server/locked_set.h"
#include "server/store_impl.h"

namespace ps {

absl::StatusOr<v1::OptimizerConfig> VariableStore::GetOptimizer(
    const std::string& variable) const {
  if (!variable.empty() && !Exists(variable)) {
    return absl::NotFoundError(
        absl::StrCat("no variable or table named '", variable, "'"));
  }
  return rules_.ConfigOf(variable);
}

absl::StatusOr<Store::ConfigChange> VariableStore::SetOptimizer(
    const std::string& variable, const v1::OptimizerConfig& config,
    bool reset_state, bool validate_only) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  v1::OptimizerConfig stored = config;
  stored.clear_config_version();
  auto settings = ResolveOptimizerConfig(stored);
  if (!settings.ok()) return settings.status();
  auto entry = std::make_shared<const OptimizerEntry>(
      OptimizerEntry{std::move(stored), *std::move(settings)});

  absl::MutexLock structure_lock(&structure_mu_);
  // The variables whose optimizer changes, each with the rule it changes
  // from: one variable's own, or the default of every variable without
  // its own.
  std::vector<std::pair<std::shared_ptr<DenseVariable>,
                        std::shared_ptr<const OptimizerEntry>>>
      affected;
  // Tables allocate the slots a new rule needs with their next push, which
  // checks the memory limit then; a change only frees what it does not keep.
  std::vector<std::pair<std::shared_ptr<SparseTable>,
                        std::shared_ptr<const OptimizerEntry>>>
      tables;
  uint64_t kept_overrides = 0;
  if (!variable.empty()) {
    auto found = Find(variable);
    auto table = FindTable(variable);
    if (found == nullptr && table == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("no variable or table named '", variable, "'"));
    }
    if (found != nullptr) {
      affected.emplace_back(std::move(found), rules_.For(variable));
    } else {
      tables.emplace_back(std::move(table), rules_.For(variable));
    }
  } else {
    for (auto& v : SortedVariables()) {
      if (rules_.HasOwn(v->name())) {
        ++kept_overrides;
        continue;
      }
      auto from = rules_.For(v->name());
      affected.emplace_back(std::move(v), std::move(from));
    }
    for (auto& t : SortedTables()) {
      if (rules_.HasOwn(t->name())) {
        ++kept_overrides;
        continue;
      }
      auto from = rules_.For(t->name());
      tables.emplace_back(std::move(t), std::move(from));
    }
  }

  // Their memory under the new rule; nothing changes if it does not fit.
  std::vector<std::pair<const DenseVariable*, optimizer::StateSlots>> charges;
  uint64_t before = 0, after = 0;
  for (const auto& [v, from] : affected) {
    const EntryShape shape = memory_.ShapeOf(v->name());
    const optimizer::StateSlots slots = memory_.SlotsOf(v->name());
    const optimizer::StateSlots changed =
        KeptSlots(from->settings.rule, entry->settings.rule, reset_state,
                  slots) |
        optimizer::SlotsOf(entry->settings.rule);
    before += memory_.ArrayBytes(shape, slots);
    after += memory_.ArrayBytes(shape, changed);
    charges.emplace_back(v.get(), changed);
  }
  if (after > before) {
    PS_RETURN_IF_ERROR(memory_.Check(
        after - before,
        absl::StrCat("changing the optimizer of ",
                     variable.empty() ? "the variables without their own"
                                      : absl::StrCat("'", variable, "'"),
                     " to ",
                     std::string(optimizer::RuleName(entry->settings.rule))),
        options_.shard_index));
  }
  const uint64_t version = rules_.version();
  if (validate_only) return ConfigChange{version, version, kept_overrides};

  // The change lands between two updates of every affected block.
  std::vector<absl::Mutex*> locks;
  for (const auto& [v, from] : affected) v->CollectLocks(locks);
  for (const auto& [t, from] : tables) t->CollectLocks(locks);
  LockedSet locked(std::move(locks));
  for (const auto& [v, from] : affected) {
    v->AdaptState(from->settings.rule, entry->settings.rule, reset_state);
  }
  for (const auto& [t, from] : tables) {
    t->AdaptState(from->settings.rule, entry->settings.rule, reset_state);
    memory_.AddTableBytes(t->TakeBytesChange());
  }
  for (const auto& [v, slots] : charges) {
    memory_.Charge(v->name(), memory_.ShapeOf(v->name()), slots);
  }
  const uint64_t previous = rules_.Change(variable, std::move(entry));
  return ConfigChange{previous, previous + 1, kept_overrides};
}

v1::ListVariablesResponse VariableStore::ListVariables() const {
  v1::ListVariablesResponse response;
  for (const auto& variable : SortedVariables()) {
    v1::VariableInfo* info = response.add_variables();
    variable->Describe(info);
    info->set_optimizer_override(rules_.HasOwn(variable->name()));
    v1::OptimizerConfig config = rules_.ConfigOf(variable->name());
    config.clear_config_version();
    *info->mutable_optimizer() = std::move(config);
  }
  for (const auto& table : SortedTables()) {
    v1::VariableInfo* info = response.add_variables();
    table->Describe(info);
    info->set_optimizer_override(rules_.HasOwn(table->name()));
    v1::OptimizerConfig config = rules_.ConfigOf(table->name());
    config.clear_config_version();
    *info->mutable_optimizer() = std::move(config);
  }
  response.set_config_version(rules_.version());
  return response;
}

v1::Stats VariableStore::Stats() const {
  v1::Stats stats;
  counters_.Fill(&stats);
  stats.set_shard_index(options_.shard_index);
  for (const auto& variable : SortedVariables()) {
    const Entry::Progress progress = variable->GetProgress();
    auto entry = rules_.For(variable->name());
    v1::VariableStats* v = stats.add_variables();
    v->set_name(variable->name());
    v->set_step(progress.step);
    v->set_learning_rate(optimizer::ScheduledLearningRate(
        entry->settings.learning_rate, entry->settings.schedule,
        std::max<uint64_t>(progress.step, 1)));
    v->set_rule(std::string(optimizer::RuleName(entry->settings.rule)));
    v->set_diverged_blocks(progress.diverged);
    stats.set_diverged_blocks(stats.diverged_blocks() + progress.diverged);
  }
  for (const auto& table : SortedTables()) {
    const Entry::Progress progress = table->GetProgress();
    auto entry = rules_.For(table->name());
    v1::VariableStats* t = stats.add_variables();
    t->set_name(table->name());
    t->set_step(progress.step);
    t->set_learning_rate(optimizer::ScheduledLearningRate(
        entry->settings.learning_rate, entry->settings.schedule,
        std::max<uint64_t>(progress.step, 1)));
    t->set_rule(std::string(optimizer::RuleName(entry->settings.rule)));
    t->set_diverged_blocks(progress.diverged);
    table->FillInfo(t->mutable_table());
  }
  const optimizer::HelperThreads::Counters helped = helpers_.counters();
  v1::UpdateHelperStats* h = stats.mutable_update_helpers();
  h->set_threads(static_cast<uint32_t>(helpers_.helpers()));
  h->set_split_updates(helped.split_runs);
  h->set_tasks(helped.tasks);
  h->set_helper_tasks(helped.helper_tasks);
  h->set_helped_updates(helped.helped_runs);
  h->set_wait_seconds(static_cast<double>(helped.wait_ns) * 1e-9);
  stats.set_state_bytes(memory_.StateBytes());
  stats.set_bookkeeping_bytes(memory_.BookkeepingBytes());
  stats.set_memory_limit_bytes(options_.memory_limit_bytes);
  stats.set_config_version(rules_.version());
  stats.set_consistency(options_.sync  ? "sync"
                        : options_.ssp ? "ssp"
                                       : "async");
  stats.set_sync_step(sync_.step());
  members_.Fill(&stats, absl::Now());
  return stats;
}

}  // namespace ps
