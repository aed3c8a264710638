// VariableStore's operator side: optimizer changes, listings and stats.
#include <algorithm>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "common/optimizer_config.h"
#include "common/status.h"
#include "server/store.h"

namespace ps {
namespace {

using optimizer::AdagradParams;
using optimizer::AdamParams;
using optimizer::BlockOptimizerState;
using optimizer::EveParams;
using optimizer::MomentumParams;
using optimizer::RmsPropParams;
using optimizer::RuleParams;
using optimizer::StateSlots;

template <typename T>
bool Is(const RuleParams& rule) {
  return std::holds_alternative<T>(rule);
}

// Momentum's buffer and Adam's and Eve's first moment are running sums of
// the gradient; RMSProp's momentum buffer holds g / d, another quantity.
bool SharesFirstMoment(const RuleParams& a, const RuleParams& b) {
  auto gradient_average = [](const RuleParams& r) {
    return Is<MomentumParams>(r) || Is<AdamParams>(r) || Is<EveParams>(r);
  };
  return (gradient_average(a) && gradient_average(b)) ||
         (Is<RmsPropParams>(a) && Is<RmsPropParams>(b));
}

// RMSProp's, Adam's and Eve's second moments are averages of g^2; Adagrad's
// is a sum, kept only by Adagrad.
bool SharesSecondMoment(const RuleParams& a, const RuleParams& b) {
  auto square_average = [](const RuleParams& r) {
    return Is<RmsPropParams>(r) || Is<AdamParams>(r) || Is<EveParams>(r);
  };
  return (square_average(a) && square_average(b)) ||
         (Is<AdagradParams>(a) && Is<AdagradParams>(b));
}

// Of the slots `held`, those a block keeps when its rule changes from
// `from` to `to` (see SetOptimizer). Centered RMSProp's grad_avg and
// AMSGrad's max_square_avg mean nothing to another rule.
StateSlots KeptSlots(const RuleParams& from, const RuleParams& to,
                     bool reset_state, StateSlots held) {
  if (reset_state) return 0;
  if (from.index() == to.index()) return held;
  StateSlots kept = 0;
  if (SharesFirstMoment(from, to)) kept |= optimizer::kMomentumSlot;
  if (SharesSecondMoment(from, to)) kept |= optimizer::kSquareAvgSlot;
  return held & kept;
}

// Adapts a block's state from rule `from` to rule `to` (see SetOptimizer).
void AdaptState(const RuleParams& from, const RuleParams& to, bool reset_state,
                BlockOptimizerState& state) {
  if (reset_state) {
    state = BlockOptimizerState();
    return;
  }
  if (from.index() == to.index()) return;
  optimizer::ReleaseSlots(
      KeptSlots(from, to, reset_state, optimizer::HeldSlots(state)), state);
  state.eve = optimizer::EveFeedbackState();
}

}  // namespace

absl::StatusOr<v1::OptimizerConfig> VariableStore::GetOptimizer(
    const std::string& variable) const {
  if (!variable.empty() && Find(variable) == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("no variable named '", variable, "'"));
  }
  absl::ReaderMutexLock lock(&config_mu_);
  auto it = variable.empty() ? overrides_.end() : overrides_.find(variable);
  v1::OptimizerConfig config =
      it == overrides_.end() ? default_optimizer_->config : it->second->config;
  config.set_config_version(config_version_);
  return config;
}

absl::StatusOr<VariableStore::ConfigChange> VariableStore::SetOptimizer(
    const std::string& variable, const v1::OptimizerConfig& config,
    bool reset_state, bool validate_only) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  v1::OptimizerConfig stored = config;
  stored.clear_config_version();
  auto settings = ResolveOptimizerConfig(stored);
  if (!settings.ok()) return settings.status();
  auto entry = std::make_shared<const OptimizerEntry>(
      OptimizerEntry{std::move(stored), *std::move(settings)});

  absl::MutexLock memory_lock(&memory_mu_);
  // The variables whose optimizer changes.
  std::vector<std::shared_ptr<Variable>> affected;
  if (!variable.empty()) {
    auto found = Find(variable);
    if (found == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("no variable named '", variable, "'"));
    }
    affected.push_back(std::move(found));
  } else {
    absl::ReaderMutexLock lock(&variables_mu_);
    for (const auto& [name, v] : variables_) affected.push_back(v);
  }

  // Lock every block of them (address order), then the configs.
  std::vector<std::pair<Variable*, Block*>> blocks;
  for (const auto& v : affected) {
    for (const auto& [k, block] : v->blocks)
      blocks.emplace_back(v.get(), block.get());
  }
  std::sort(blocks.begin(), blocks.end(),
            [](const auto& a, const auto& b) { return a.second < b.second; });
  for (auto& [v, block] : blocks) block->mu.Lock();
  ConfigChange change;
  absl::Status status;
  {
    absl::MutexLock lock(&config_mu_);
    // The rule each affected variable changes from; a default change
    // leaves variables with their own optimizer alone.
    absl::flat_hash_map<const Variable*, const RuleParams*> from;
    for (const auto& v : affected) {
      auto it = overrides_.find(v->name);
      const bool has_override = it != overrides_.end();
      if (variable.empty() && has_override) continue;
      from[v.get()] = has_override ? &it->second->settings.rule
                                   : &default_optimizer_->settings.rule;
    }
    // Their memory under the new rule; nothing changes if it does not fit.
    std::vector<std::pair<MemoryCharge*, MemoryCharge>> charges;
    uint64_t before = 0, after = 0;
    for (const auto& [v, rule] : from) {
      MemoryCharge& charge = charges_[v->name];
      MemoryCharge changed = charge;
      changed.slots =
          KeptSlots(*rule, entry->settings.rule, reset_state, charge.slots) |
          optimizer::SlotsOf(entry->settings.rule);
      before += BytesOf(charge);
      after += BytesOf(changed);
      charges.emplace_back(&charge, changed);
    }
    if (after > before) {
      status = CheckMemory(
          after - before,
          absl::StrCat("changing the optimizer of ",
                       variable.empty() ? "the variables without their own"
                                        : absl::StrCat("'", variable, "'"),
                       " to ",
                       std::string(optimizer::RuleName(entry->settings.rule))));
    }
    if (status.ok() && validate_only) {
      change.previous_version = change.version = config_version_;
    } else if (status.ok()) {
      for (auto& [v, block] : blocks) {
        auto it = from.find(v);
        if (it == from.end()) continue;
        AdaptState(*it->second, entry->settings.rule, reset_state,
                   block->state);
      }
      for (auto& [charge, changed] : charges) *charge = changed;
      charged_bytes_ += after - before;  // modulo 2^64 when it shrinks
      if (variable.empty()) {
        default_optimizer_ = entry;
      } else {
        overrides_[variable] = entry;
      }
      change.previous_version = config_version_;
      change.version = ++config_version_;
    }
  }
  for (auto& [v, block] : blocks) block->mu.Unlock();
  if (!status.ok()) return status;
  return change;
}

v1::ListVariablesResponse VariableStore::ListVariables() const {
  v1::ListVariablesResponse response;
  for (const std::string& name : VariableNames()) {
    auto variable = Find(name);
    if (variable == nullptr) continue;
    v1::VariableInfo* info = response.add_variables();
    info->set_name(name);
    for (uint64_t dim : variable->shape) info->add_shape(dim);
    info->set_size(variable->size);
    std::vector<uint64_t> indexes;
    for (const auto& [k, block] : variable->blocks) indexes.push_back(k);
    std::sort(indexes.begin(), indexes.end());
    for (uint64_t k : indexes) {
      const Block& block = *variable->blocks.at(k);
      absl::ReaderMutexLock lock(&block.mu);
      info->add_blocks(k);
      info->add_versions(block.state.step);
    }
    absl::ReaderMutexLock lock(&config_mu_);
    auto it = overrides_.find(name);
    info->set_optimizer_override(it != overrides_.end());
    *info->mutable_optimizer() = it != overrides_.end()
                                     ? it->second->config
                                     : default_optimizer_->config;
  }
  absl::ReaderMutexLock lock(&config_mu_);
  response.set_config_version(config_version_);
  return response;
}

v1::Stats VariableStore::Stats() const {
  v1::Stats stats;
  stats_.Fill(&stats);
  stats.set_shard_index(options_.shard_index);
  for (const std::string& name : VariableNames()) {
    auto variable = Find(name);
    if (variable == nullptr) continue;
    uint64_t step = 0;
    uint64_t diverged = 0;
    for (const auto& [k, block] : variable->blocks) {
      absl::ReaderMutexLock lock(&block->mu);
      step = std::max(step, block->state.step);
      diverged += block->diverged ? 1 : 0;
    }
    auto entry = OptimizerFor(name);
    v1::VariableStats* v = stats.add_variables();
    v->set_name(name);
    v->set_step(step);
    v->set_learning_rate(optimizer::ScheduledLearningRate(
        entry->settings.learning_rate, entry->settings.schedule,
        std::max<uint64_t>(step, 1)));
    v->set_rule(std::string(optimizer::RuleName(entry->settings.rule)));
    v->set_diverged_blocks(diverged);
    stats.set_diverged_blocks(stats.diverged_blocks() + diverged);
  }
  stats.set_state_bytes(StateBytes());
  stats.set_bookkeeping_bytes(BookkeepingBytes());
  stats.set_memory_limit_bytes(options_.memory_limit_bytes);
  absl::ReaderMutexLock lock(&config_mu_);
  stats.set_config_version(config_version_);
  return stats;
}

}  // namespace ps
