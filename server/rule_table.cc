#include "server/rule_table.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/optimizer_config.h"
#include "common/rule_catalog.h"

namespace ps {
namespace {

using optimizer::RuleParams;
using optimizer::SlotMeaning;
using optimizer::StateSlots;

}  // namespace

StateSlots KeptSlots(const RuleParams& from, const RuleParams& to,
                     bool reset_state, StateSlots held) {
  if (reset_state) return 0;
  if (from.index() == to.index()) return held;
  // A slot stays when both rules mean the same by it (rule_catalog.h).
  const auto& before = optimizer::DescriptorOf(from).meanings;
  const auto& after = optimizer::DescriptorOf(to).meanings;
  StateSlots kept = 0;
  for (size_t i = 0; i < optimizer::kSlotBits.size(); ++i) {
    if (before[i] == after[i] && before[i] != SlotMeaning::kUnused &&
        before[i] != SlotMeaning::kOwn) {
      kept |= optimizer::kSlotBits[i];
    }
  }
  return held & kept;
}

void AdaptState(const RuleParams& from, const RuleParams& to, bool reset_state,
                optimizer::BlockOptimizerState& state) {
  if (reset_state) {
    state = optimizer::BlockOptimizerState();
    return;
  }
  if (from.index() == to.index()) return;
  optimizer::ReleaseSlots(
      KeptSlots(from, to, reset_state, optimizer::HeldSlots(state)), state);
  state.eve = optimizer::EveFeedbackState();
}

RuleTable::RuleTable(const v1::OptimizerConfig& default_config) {
  auto entry = std::make_shared<OptimizerEntry>();
  entry->config = default_config;
  entry->settings = *ResolveOptimizerConfig(default_config);
  default_ = std::move(entry);
}

std::shared_ptr<const OptimizerEntry> RuleTable::For(
    const std::string& name) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = own_.find(name);
  return it == own_.end() ? default_ : it->second;
}

bool RuleTable::HasOwn(const std::string& name) const {
  absl::ReaderMutexLock lock(&mu_);
  return own_.contains(name);
}

v1::OptimizerConfig RuleTable::ConfigOf(const std::string& name) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = name.empty() ? own_.end() : own_.find(name);
  v1::OptimizerConfig config =
      it == own_.end() ? default_->config : it->second->config;
  config.set_config_version(version_);
  return config;
}

uint64_t RuleTable::version() const {
  absl::ReaderMutexLock lock(&mu_);
  return version_;
}

void RuleTable::SetOwn(const std::string& name,
                       std::shared_ptr<const OptimizerEntry> entry) {
  absl::MutexLock lock(&mu_);
  own_[name] = std::move(entry);
}

void RuleTable::Forget(const std::string& name) {
  absl::MutexLock lock(&mu_);
  own_.erase(name);
}

uint64_t RuleTable::Change(const std::string& name,
                           std::shared_ptr<const OptimizerEntry> entry) {
  absl::MutexLock lock(&mu_);
  if (name.empty()) {
    default_ = std::move(entry);
  } else {
    own_[name] = std::move(entry);
  }
  return version_++;
}

void RuleTable::Snapshot(storage::v1::ShardState& state) const {
  absl::ReaderMutexLock lock(&mu_);
  *state.mutable_default_optimizer() = default_->config;
  state.set_config_version(version_);
  for (auto& header : *state.mutable_variables()) {
    auto it = own_.find(header.name());
    if (it != own_.end()) *header.mutable_optimizer() = it->second->config;
  }
  for (auto& header : *state.mutable_tables()) {
    auto it = own_.find(header.name());
    if (it != own_.end()) *header.mutable_optimizer() = it->second->config;
  }
}

absl::Status RuleTable::Restore(const storage::v1::ShardState& state) {
  auto settings = ResolveOptimizerConfig(state.default_optimizer());
  if (!settings.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the default optimizer: ", settings.status().message()));
  }
  absl::MutexLock lock(&mu_);
  default_ = std::make_shared<const OptimizerEntry>(
      OptimizerEntry{state.default_optimizer(), *std::move(settings)});
  version_ = state.config_version();
  return absl::OkStatus();
}

}  // namespace ps
