// VariableStore's checkpoint side: snapshots and restores of its state.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/optimizer_config.h"
#include "common/status.h"
#include "common/wire.h"
#include "server/store.h"

namespace ps {
namespace {

using storage::v1::BlockRecord;

void PutFloats(const std::vector<float>& values, std::string* out) {
  out->resize(values.size() * sizeof(float));
  if (!values.empty()) {
    std::memcpy(out->data(), values.data(), out->size());
  }
}

absl::Status GetFloats(const std::string& bytes, size_t expected,
                       absl::string_view what, std::vector<float>* out) {
  if (bytes.empty()) {
    out->clear();
    return absl::OkStatus();
  }
  if (bytes.size() != expected * sizeof(float)) {
    return absl::DataLossError(absl::StrCat(what, " holds ", bytes.size(),
                                            " bytes, expected ",
                                            expected * sizeof(float)));
  }
  out->resize(expected);
  std::memcpy(out->data(), bytes.data(), bytes.size());
  return absl::OkStatus();
}

}  // namespace

absl::Status VariableStore::Snapshot(
    absl::FunctionRef<absl::Status(const storage::v1::ShardState&)> write_state,
    absl::FunctionRef<absl::Status(const BlockRecord&)> write_block) const {
  absl::ReaderMutexLock structure_lock(&memory_mu_);
  std::vector<std::shared_ptr<Variable>> variables;
  storage::v1::ShardState state;
  {
    absl::ReaderMutexLock lock(&variables_mu_);
    for (const auto& [name, variable] : variables_) {
      variables.push_back(variable);
    }
  }
  std::sort(variables.begin(), variables.end(),
            [](const auto& a, const auto& b) { return a->name < b->name; });
  {
    absl::ReaderMutexLock lock(&config_mu_);
    *state.mutable_default_optimizer() = default_optimizer_->config;
    state.set_config_version(config_version_);
    sessions_.Snapshot(state.mutable_sessions());
    state.set_sync_step(sync_step_.load());
    for (const auto& variable : variables) {
      storage::v1::VariableHeader* header = state.add_variables();
      header->set_name(variable->name);
      for (uint64_t dim : variable->shape) header->add_shape(dim);
      auto it = overrides_.find(variable->name);
      if (it != overrides_.end())
        *header->mutable_optimizer() = it->second->config;
    }
  }
  PS_RETURN_IF_ERROR(write_state(state));

  BlockRecord record;
  for (const auto& variable : variables) {
    std::vector<uint64_t> indexes;
    for (const auto& [k, block] : variable->blocks) indexes.push_back(k);
    std::sort(indexes.begin(), indexes.end());
    for (uint64_t k : indexes) {
      const Block& block = *variable->blocks.at(k);
      record.Clear();
      record.set_variable(variable->name);
      record.set_index(k);
      {
        absl::ReaderMutexLock lock(&block.mu);
        PutFloats(block.values, record.mutable_values());
        const optimizer::BlockOptimizerState& state = block.state;
        record.set_step(state.step);
        PutFloats(state.momentum, record.mutable_momentum());
        PutFloats(state.square_avg, record.mutable_square_avg());
        PutFloats(state.grad_avg, record.mutable_grad_avg());
        PutFloats(state.max_square_avg, record.mutable_max_square_avg());
        record.set_eve_d(state.eve.d);
        record.set_eve_f_hat(state.eve.f_hat);
        record.set_eve_started(state.eve.started);
        const SyncSlot& sync = block.sync;
        record.set_sync_started(sync.started);
        record.set_sync_next_step(sync.next_step);
        PutFloats(sync.sum, record.mutable_sync_sum());
        for (const std::string& worker : sync.workers) {
          record.add_sync_workers(worker);
        }
        record.set_sync_loss_sum(sync.loss_sum);
        record.set_sync_losses(sync.losses);
        for (const auto& [worker, seqs] : block.applied) {
          storage::v1::AppliedSeqs* applied = record.add_applied();
          applied->set_worker_id(worker);
          applied->set_epoch(seqs.epoch);
          applied->set_highest(seqs.seqs.highest());
          applied->set_window(seqs.seqs.window());
        }
      }
      PS_RETURN_IF_ERROR(write_block(record));
    }
  }
  return absl::OkStatus();
}

uint64_t VariableStore::NumBlocks() const {
  absl::ReaderMutexLock lock(&variables_mu_);
  uint64_t blocks = 0;
  for (const auto& [name, variable] : variables_) {
    blocks += variable->blocks.size();
  }
  return blocks;
}

absl::Status VariableStore::RestoreState(const storage::v1::ShardState& state) {
  auto default_settings = ResolveOptimizerConfig(state.default_optimizer());
  if (!default_settings.ok()) {
    return absl::DataLossError(absl::StrCat(
        "the default optimizer: ", default_settings.status().message()));
  }
  sessions_.Restore(state.sessions());
  RaiseSyncStep(state.sync_step());
  // The default first: variables are created (and their memory counted)
  // under the rule they had.
  {
    absl::MutexLock lock(&config_mu_);
    default_optimizer_ = std::make_shared<const OptimizerEntry>(OptimizerEntry{
        state.default_optimizer(), *std::move(default_settings)});
    config_version_ = state.config_version();
  }
  for (const storage::v1::VariableHeader& header : state.variables()) {
    v1::CreateVariableRequest create;
    create.set_name(header.name());
    for (uint64_t dim : header.shape()) create.add_shape(dim);
    if (header.has_optimizer())
      *create.mutable_optimizer() = header.optimizer();
    auto created = CreateVariable(create);
    if (!created.ok()) {
      const absl::StatusCode code =
          created.status().code() == absl::StatusCode::kResourceExhausted
              ? absl::StatusCode::kResourceExhausted
              : absl::StatusCode::kDataLoss;
      return absl::Status(code, absl::StrCat("variable '", header.name(), "': ",
                                             created.status().message()));
    }
  }
  return absl::OkStatus();
}

absl::Status VariableStore::RestoreBlock(const BlockRecord& record) {
  auto variable = Find(record.variable());
  if (variable == nullptr) {
    return absl::DataLossError(absl::StrCat("a block of '", record.variable(),
                                            "', which the checkpoint lacks"));
  }
  auto it = variable->blocks.find(record.index());
  if (it == variable->blocks.end()) {
    return absl::DataLossError(absl::StrCat("block ", record.index(), " of '",
                                            record.variable(),
                                            "' does not belong to this shard"));
  }
  Block& block = *it->second;
  const size_t n = block.range.length;
  const std::string what =
      absl::StrCat("block ", record.index(), " of '", record.variable(), "'");
  optimizer::StateSlots held = 0;
  {
    absl::MutexLock lock(&block.mu);
    if (record.values().size() != n * sizeof(float)) {
      return absl::DataLossError(
          absl::StrCat(what, " holds ", record.values().size(),
                       " bytes of values, expected ", n * sizeof(float)));
    }
    PS_RETURN_IF_ERROR(GetFloats(record.values(), n, what, &block.values));
    optimizer::BlockOptimizerState& state = block.state;
    state.step = record.step();
    PS_RETURN_IF_ERROR(GetFloats(record.momentum(), n, what, &state.momentum));
    PS_RETURN_IF_ERROR(
        GetFloats(record.square_avg(), n, what, &state.square_avg));
    PS_RETURN_IF_ERROR(GetFloats(record.grad_avg(), n, what, &state.grad_avg));
    PS_RETURN_IF_ERROR(
        GetFloats(record.max_square_avg(), n, what, &state.max_square_avg));
    state.eve.d = record.eve_d();
    state.eve.f_hat = record.eve_f_hat();
    state.eve.started = record.eve_started();
    SyncSlot& sync = block.sync;
    sync.started = record.sync_started();
    sync.next_step = record.sync_next_step();
    PS_RETURN_IF_ERROR(GetFloats(record.sync_sum(), n, what, &sync.sum));
    sync.workers.clear();
    for (const std::string& worker : record.sync_workers()) {
      sync.workers.insert(worker);
    }
    sync.loss_sum = record.sync_loss_sum();
    sync.losses = record.sync_losses();
    bookkeeping_bytes_ -= block.applied.size() * kAppliedRecordBytes;
    bookkeeping_bytes_ += record.applied_size() * kAppliedRecordBytes;
    block.applied.clear();
    for (const auto& applied : record.applied()) {
      block.applied[applied.worker_id()] = {
          applied.epoch(), SeqWindow(applied.highest(), applied.window())};
    }
    if (sync.started) RaiseSyncStep(sync.next_step);
    held = optimizer::HeldSlots(state);
    block.diverged = !AllFinite(block.values);
    block.diverged_at = block.diverged ? state.step : 0;
  }

  // A slot kept across an earlier rule change (AMSGrad's running max after
  // a switch to plain Adam) is counted as it was before the restart.
  absl::MutexLock memory_lock(&memory_mu_);
  MemoryCharge& charge = charges_[variable->name];
  if ((held & ~charge.slots) != 0) {
    charged_bytes_ -= BytesOf(charge);
    charge.slots |= held;
    charged_bytes_ += BytesOf(charge);
  }
  return absl::OkStatus();
}

}  // namespace ps
