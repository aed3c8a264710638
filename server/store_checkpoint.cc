// VariableStore's checkpoint side: a consistent cut of the shard, and its
// restore.
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/optimizer_config.h"
#include "common/row_init.h"
#include "common/status.h"
#include "server/store_impl.h"
#include "spdlog/spdlog.h"

namespace ps {

absl::Status VariableStore::Snapshot(
    absl::FunctionRef<absl::Status(const storage::v1::ShardState&)> write_state,
    absl::FunctionRef<absl::Status(const storage::v1::BlockRecord&)>
        write_block) const {
  absl::ReaderMutexLock structure_lock(&structure_mu_);
  const std::vector<std::shared_ptr<DenseVariable>> variables =
      SortedVariables();
  storage::v1::ShardState state;
  for (const auto& variable : variables) {
    storage::v1::VariableHeader* header = state.add_variables();
    header->set_name(variable->name());
    for (uint64_t dim : variable->shape()) header->add_shape(dim);
    if (auto it = origins_.find(variable->name()); it != origins_.end()) {
      *header->mutable_origin() = it->second;
    }
  }
  const std::vector<std::shared_ptr<SparseTable>> tables = SortedTables();
  for (const auto& table : tables) {
    storage::v1::TableHeader* header = state.add_tables();
    header->set_name(table->name());
    header->set_dim(table->dim());
    *header->mutable_init() = table->init();
    *header->mutable_policy() = table->policy();
    if (auto it = origins_.find(table->name()); it != origins_.end()) {
      *header->mutable_origin() = it->second;
    }
  }
  rules_.Snapshot(state);
  sessions_.Snapshot(state.mutable_sessions());
  state.set_sync_step(sync_.step());
  PS_RETURN_IF_ERROR(write_state(state));
  for (const auto& variable : variables) {
    PS_RETURN_IF_ERROR(variable->Snapshot(write_block));
  }
  for (const auto& table : tables) {
    PS_RETURN_IF_ERROR(table->Snapshot(write_block));
  }
  return absl::OkStatus();
}

absl::Status VariableStore::RestoreState(const storage::v1::ShardState& state) {
  // The default first: variables are created (and their memory counted)
  // under the rule they had.
  if (absl::Status status = rules_.Restore(state); !status.ok()) {
    return absl::DataLossError(status.message());
  }
  sessions_.Restore(state.sessions());
  CountSessions();
  // The workers with a session are members again, each with a fresh
  // lease: those that do not come back are dropped when it runs out.
  if (options_.sync || options_.ssp) {
    for (const storage::v1::SessionRecord& session : state.sessions()) {
      members_.Join(session.worker_id(), absl::Now());
    }
  }
  sync_.Raise(state.sync_step());
  for (const storage::v1::VariableHeader& header : state.variables()) {
    v1::CreateVariableRequest create;
    create.set_name(header.name());
    for (uint64_t dim : header.shape()) create.add_shape(dim);
    if (header.has_optimizer()) {
      *create.mutable_optimizer() = header.optimizer();
    }
    auto created = CreateVariable(create);
    if (!created.ok()) {
      const absl::StatusCode code =
          created.status().code() == absl::StatusCode::kResourceExhausted
              ? absl::StatusCode::kResourceExhausted
              : absl::StatusCode::kDataLoss;
      return absl::Status(code, absl::StrCat("variable '", header.name(), "': ",
                                             created.status().message()));
    }
    // What it was created with, as the checkpoint recorded it (unknown for
    // checkpoints that did not).
    absl::MutexLock structure_lock(&structure_mu_);
    if (header.has_origin()) {
      origins_[header.name()] = header.origin();
    } else {
      origins_.erase(header.name());
    }
  }
  for (const storage::v1::TableHeader& header : state.tables()) {
    v1::CreateTableRequest create;
    create.set_name(header.name());
    create.set_dim(header.dim());
    *create.mutable_init() = header.init();
    *create.mutable_policy() = header.policy();
    if (header.has_optimizer())
      *create.mutable_optimizer() = header.optimizer();
    auto created = CreateTable(create);
    if (!created.ok()) {
      return absl::DataLossError(absl::StrCat(
          "table '", header.name(), "': ", created.status().message()));
    }
    absl::MutexLock structure_lock(&structure_mu_);
    if (header.has_origin()) {
      origins_[header.name()] = header.origin();
    } else {
      origins_.erase(header.name());
    }
  }
  return absl::OkStatus();
}

absl::Status VariableStore::RestoreRows(
    const storage::v1::BlockRecord& record) {
  auto table = FindTable(record.variable());
  if (table == nullptr) {
    return absl::DataLossError(absl::StrCat(
        "rows of table '", record.variable(), "', which the checkpoint lacks"));
  }
  PS_RETURN_IF_ERROR(table->Restore(record).status());
  absl::MutexLock lock(&table->mu);
  if (table->sync.started) sync_.Raise(table->sync.next_step);
  memory_.AddAppliedRecords(record.rows().state().applied_size());
  // Restored rows count against the limit as they did before the restart.
  memory_.AddTableBytes(table->TakeBytesChange());
  return absl::OkStatus();
}

void VariableStore::ChargeHeldSlots(const DenseVariable& variable,
                                    optimizer::StateSlots held) {
  const optimizer::StateSlots charged = memory_.SlotsOf(variable.name());
  if ((held & ~charged) != 0) {
    memory_.Charge(variable.name(), memory_.ShapeOf(variable.name()),
                   charged | held);
  }
}

absl::Status VariableStore::RestoreBlock(
    const storage::v1::BlockRecord& record) {
  if (record.has_rows()) return RestoreRows(record);
  auto variable = Find(record.variable());
  if (variable == nullptr) {
    return absl::DataLossError(absl::StrCat("a block of '", record.variable(),
                                            "', which the checkpoint lacks"));
  }
  PS_ASSIGN_OR_RETURN(const optimizer::StateSlots held,
                      variable->Restore(record));
  memory_.AddAppliedRecords(record.applied_size());
  if (record.sync_started()) sync_.Raise(record.sync_next_step());

  // A slot kept across an earlier rule change (AMSGrad's running max after
  // a switch to plain Adam) is counted as it was before the restart.
  absl::MutexLock structure_lock(&structure_mu_);
  ChargeHeldSlots(*variable, held);
  return absl::OkStatus();
}

absl::Status VariableStore::RolledBackError() const {
  return absl::FailedPreconditionError(absl::StrCat(
      kRolledBackPrefix, rollback_checkpoint_.load(), ": shard ",
      options_.shard_index,
      " and the cluster went back to the state before "
      "step ",
      rollback_step_.load(),
      ", so this push is not applied; open a new session and resume from "
      "step ",
      rollback_step_.load(), " (ps::Client and psclient do this)"));
}

void VariableStore::DropCollectedSteps(const absl::Status& why) {
  for (const auto& variable : SortedVariables()) {
    for (Block* block : variable->SortedBlocks()) {
      ReadyParts ready;
      {
        absl::MutexLock lock(&block->mu);
        SyncSlot& sync = block->sync;
        for (auto& [waiter, index] : sync.waiters) {
          ready.emplace_back(std::move(waiter), why);
        }
        sync.waiters.clear();
        sync.sum.clear();
        sync.workers.clear();
        sync.loss_sum = 0;
        sync.losses = 0;
        sync.ahead.clear();
      }
      for (auto& [waiter, status] : ready) waiter->PartDone(std::move(status));
    }
  }
  for (const auto& table : SortedTables()) {
    ReadyParts ready;
    {
      absl::MutexLock lock(&table->mu);
      SparseTable::Sync& sync = table->sync;
      for (SparseTable::Sync::Waiter& waiter : sync.waiters) {
        ready.emplace_back(std::move(waiter.completion), why);
      }
      sync.waiters.clear();
      sync.ids.clear();
      sync.index.clear();
      sync.sum.clear();
      sync.workers.clear();
      sync.loss_sum = 0;
      sync.losses = 0;
    }
    for (auto& [waiter, status] : ready) waiter->PartDone(std::move(status));
  }
}

void VariableStore::StartAfterRollBack(uint64_t checkpoint, uint64_t step) {
  if (!options_.sync) return;
  rollback_checkpoint_.store(checkpoint);
  rollback_step_.store(step);
  rollbacks_.fetch_add(1);
  sessions_.RollBack(checkpoint, step);
  sync_.Release();
  DropCollectedSteps(RolledBackError());
  sync_.Reset(step);
}

absl::Status VariableStore::RollBack(
    const storage::v1::ShardState& state, uint64_t checkpoint, uint64_t step,
    absl::FunctionRef<absl::Status(
        absl::FunctionRef<absl::Status(const storage::v1::BlockRecord&)>)>
        read_blocks) {
  if (!options_.sync) {
    return absl::FailedPreconditionError(
        "a roll-back in place needs --consistency=sync");
  }
  absl::MutexLock structure_lock(&structure_mu_);
  // Everything is checked before anything changes.
  auto cannot = [&](absl::string_view what, absl::string_view name,
                    absl::string_view why) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, " '", name, "' of checkpoint ", checkpoint, " ", why,
                     " on shard ", options_.shard_index,
                     ": restart it to load the checkpoint"));
  };
  // Each entry's own optimizer as the checkpoint has it (null: the
  // default).
  std::vector<std::pair<std::string, std::shared_ptr<const OptimizerEntry>>>
      own;
  auto own_of = [&](const std::string& name, bool has,
                    const v1::OptimizerConfig& config) -> absl::Status {
    std::shared_ptr<const OptimizerEntry> entry;
    if (has) {
      auto settings = ResolveOptimizerConfig(config);
      if (!settings.ok()) {
        return absl::DataLossError(absl::StrCat(
            "optimizer of '", name, "': ", settings.status().message()));
      }
      entry = std::make_shared<OptimizerEntry>(
          OptimizerEntry{config, *std::move(settings)});
    }
    own.emplace_back(name, std::move(entry));
    return absl::OkStatus();
  };
  absl::flat_hash_set<std::string> kept;
  for (const storage::v1::VariableHeader& header : state.variables()) {
    auto variable = Find(header.name());
    const std::vector<uint64_t> shape(header.shape().begin(),
                                      header.shape().end());
    if (variable == nullptr) {
      return cannot("variable", header.name(), "is missing");
    }
    if (variable->shape() != shape) {
      return cannot("variable", header.name(), "has another shape");
    }
    PS_RETURN_IF_ERROR(
        own_of(header.name(), header.has_optimizer(), header.optimizer()));
    kept.insert(header.name());
  }
  for (const storage::v1::TableHeader& header : state.tables()) {
    if (Find(header.name()) != nullptr) {
      return cannot("table", header.name(), "is a variable");
    }
    if (header.dim() == 0 || header.dim() > SparseTable::kMaxDim ||
        !ValidateRowInit(header.init()).ok()) {
      return absl::DataLossError(absl::StrCat("table '", header.name(),
                                              "' of checkpoint ", checkpoint,
                                              " has a bad dim or init"));
    }
    PS_RETURN_IF_ERROR(
        own_of(header.name(), header.has_optimizer(), header.optimizer()));
    kept.insert(header.name());
  }

  rolling_back_.store(true);
  rollback_checkpoint_.store(checkpoint);
  rollback_step_.store(step);
  // Pushes admitted before this are refused where they would apply.
  rollbacks_.fetch_add(1);
  sessions_.RollBack(checkpoint, step);
  sync_.Release();
  DropCollectedSteps(RolledBackError());
  absl::Status status = [&]() -> absl::Status {
    structure_mu_.AssertHeld();  // by structure_lock
    if (absl::Status rules = rules_.Restore(state); !rules.ok()) {
      return absl::DataLossError(rules.message());
    }
    // What the checkpoint did not hold was created after it: gone with it.
    std::vector<std::string> dropped;
    for (const auto& variable : SortedVariables()) {
      if (kept.contains(variable->name())) continue;
      dropped.push_back(variable->name());
      RemoveVariable(*variable);
    }
    for (const auto& table : SortedTables()) {
      if (kept.contains(table->name())) continue;
      dropped.push_back(table->name());
      RemoveTable(*table);
    }
    if (!dropped.empty()) {
      spdlog::warn(
          "going back to checkpoint {} deleted what was created after it: {}",
          checkpoint, absl::StrJoin(dropped, ", "));
    }
    auto origin_of = [&](const auto& header) {
      structure_mu_.AssertHeld();
      if (header.has_origin()) {
        origins_[header.name()] = header.origin();
      } else {
        origins_.erase(header.name());
      }
    };
    for (const storage::v1::VariableHeader& header : state.variables()) {
      origin_of(header);
    }
    // A table is replaced by an empty one that the records fill: rows
    // created after the checkpoint must go, not only those it holds be
    // overwritten.
    for (const storage::v1::TableHeader& header : state.tables()) {
      if (auto existing = FindTable(header.name())) RemoveTable(*existing);
      auto table = std::make_shared<SparseTable>(
          header.name(), header.dim(), header.init(), header.policy());
      {
        absl::MutexLock lock(&entries_mu_);
        tables_.emplace(header.name(), std::move(table));
      }
      // The one it replaces was given back by RemoveTable; the checkpoint
      // held it, so it fits as it did then.
      memory_.AddTableBytes(SparseTable::kTableBytes);
      origin_of(header);
    }
    // Own optimizers last: replacing a table (RemoveTable) forgets its own.
    for (auto& [name, entry] : own) {
      if (entry != nullptr) {
        rules_.SetOwn(name, std::move(entry));
      } else {
        rules_.Forget(name);
      }
    }
    return read_blocks([&](const storage::v1::BlockRecord& record) {
      structure_mu_.AssertHeld();
      if (record.has_rows()) return RestoreRows(record);
      auto variable = Find(record.variable());
      if (variable == nullptr) {
        return absl::DataLossError(
            absl::StrCat("a block of '", record.variable(),
                         "', which the checkpoint lacks"));
      }
      PS_ASSIGN_OR_RETURN(const optimizer::StateSlots held,
                          variable->Restore(record));
      ChargeHeldSlots(*variable, held);
      return absl::OkStatus();
    });
  }();
  // The steps the part was collecting at its cut were never answered:
  // the workers push them again in their new sessions.
  DropCollectedSteps(RolledBackError());
  sync_.Reset(step);
  rolling_back_.store(false);
  return status;
}

}  // namespace ps
