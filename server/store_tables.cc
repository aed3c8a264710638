// VariableStore's sparse tables: creation, rows in pulls, and rows in
// pushes from decoding to their application (async and sync), under the
// locks the dense path takes with them (server/store.cc).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <new>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/optimizer_config.h"
#include "common/partition.h"
#include "common/row_init.h"
#include "common/rule_catalog.h"
#include "common/status.h"
#include "common/wire.h"
#include "google/protobuf/util/message_differencer.h"
#include "server/exactly_once.h"
#include "server/store_impl.h"

namespace ps {
namespace {

using google::protobuf::util::MessageDifferencer;

// The most ids one RowSlice may carry.
constexpr int kMaxIdsPerSlice = 1 << 24;

std::string TableWhat(const SparseTable& table) {
  return absl::StrCat("table '", table.name(), "'");
}

// INVALID_ARGUMENT unless the ids are unique; FAILED_PRECONDITION, naming
// the owner, for an id of another shard. Run after every check of the
// slice's form, so a malformed slice is INVALID_ARGUMENT on every shard.
absl::Status CheckIds(const v1::RowSlice& slice, const SparseTable& table,
                      uint32_t shard_index, uint32_t num_shards) {
  if (slice.ids_size() > kMaxIdsPerSlice) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a slice of table '", table.name(), "' holds ", slice.ids_size(),
        " ids, more than ", kMaxIdsPerSlice, "; send fewer per call"));
  }
  absl::flat_hash_set<uint64_t> seen;
  seen.reserve(slice.ids_size());
  for (uint64_t id : slice.ids()) {
    if (!seen.insert(id).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "id ", id, " appears twice in a slice of table '", table.name(),
          "'; sum the gradients of repeated ids first (as torch's coalesce "
          "does)"));
    }
  }
  for (uint64_t id : slice.ids()) {
    const uint32_t owner = RowShard(table.name_hash(), id, num_shards);
    if (owner != shard_index) {
      return absl::FailedPreconditionError(absl::StrCat(
          "row ", id, " of table '", table.name(), "' belongs to shard ", owner,
          ", not shard ", shard_index, " (row_shard, DESIGN.md)"));
    }
  }
  return absl::OkStatus();
}

// NOT_FOUND for a push to a table deleted since the push found it;
// FAILED_PRECONDITION for a push of a fenced session, or to a table whose
// values are no longer finite.
absl::Status CheckTableTakesPush(const PreparedPush& push,
                                 const SparseTable& table)
    ABSL_SHARED_LOCKS_REQUIRED(table.mu) {
  if (table.deleted) {
    return absl::NotFoundError(absl::StrCat(
        "table '", table.name(), "' was deleted while the push to it ",
        "was on its way; create it again before pushing to it"));
  }
  PS_RETURN_IF_ERROR(CheckNotFenced(push, table.applied, TableWhat(table)));
  if (table.diverged()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "table '", table.name(),
        "' has values that are not finite and takes no more pushes"));
  }
  return absl::OkStatus();
}

// INVALID_ARGUMENT when the rule cannot take the update (Eve's loss).
absl::Status CheckTableUpdate(const optimizer::OptimizerSettings& settings,
                              const SparseTable& table,
                              std::optional<double> loss)
    ABSL_SHARED_LOCKS_REQUIRED(table.mu) {
  absl::Status check =
      optimizer::CheckUpdate(settings, table.rule_state(), loss);
  if (!check.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("push to table '", table.name(), "': ", check.message()));
  }
  return absl::OkStatus();
}

std::string PolicyString(const v1::TablePolicy& policy) {
  return absl::StrCat("max_rows ", policy.max_rows(), ", evict_after_steps ",
                      policy.evict_after_steps(), ", min_count ",
                      policy.min_count());
}

}  // namespace

absl::StatusOr<bool> VariableStore::CreateTable(
    const v1::CreateTableRequest& request) {
  const std::string& name = request.name();
  if (name.empty()) {
    return absl::InvalidArgumentError("a table needs a non-empty name");
  }
  if (request.dim() == 0 || request.dim() > SparseTable::kMaxDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("table '", name, "' has dim ", request.dim(),
                     "; it must be between 1 and ", SparseTable::kMaxDim));
  }
  if (absl::Status init = ValidateRowInit(request.init()); !init.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("table '", name, "': ", init.message()));
  }
  std::shared_ptr<const OptimizerEntry> own;
  if (request.has_optimizer()) {
    auto settings = ResolveOptimizerConfig(request.optimizer());
    if (!settings.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "optimizer of table '", name, "': ", settings.status().message()));
    }
    own = std::make_shared<OptimizerEntry>(
        OptimizerEntry{request.optimizer(), *std::move(settings)});
  }

  if (!v1::OnExists_IsValid(request.on_exists())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown on_exists ", static_cast<int>(request.on_exists()),
        "; use ON_EXISTS_ERROR, ON_EXISTS_REUSE or ON_EXISTS_RESET"));
  }
  // What this request creates the table with (its optimizer; rows have no
  // initial values to compare but init, compared below).
  storage::v1::VariableOrigin origin;
  if (request.has_optimizer()) {
    *origin.mutable_optimizer() = request.optimizer();
    origin.mutable_optimizer()->clear_config_version();
  }

  absl::MutexLock structure_lock(&structure_mu_);
  if (Find(name) != nullptr) {
    return absl::AlreadyExistsError(
        absl::StrCat("a variable named '", name,
                     "' exists; variables and tables share one namespace"));
  }
  auto existing = FindTable(name);
  const bool creates =
      existing == nullptr || request.on_exists() == v1::ON_EXISTS_RESET;
  // What the new table costs before its first row, checked before anything
  // changes (a reset's old table is still there: its bytes are not
  // counted as freed).
  if (creates) {
    PS_RETURN_IF_ERROR(memory_.ReserveTableBytes(
        SparseTable::kTableBytes,
        absl::StrCat("table '", name, "' (", SparseTable::kTableBytes,
                     " bytes before its first row)"),
        options_.shard_index));
  }
  if (existing != nullptr) {
    if (request.on_exists() == v1::ON_EXISTS_RESET) {
      RemoveTable(*existing);
      spdlog::info("table '{}' reset: created again, every row from its init",
                   name);
    } else {
      const bool same_dim = existing->dim() == request.dim();
      if (same_dim && request.on_exists() == v1::ON_EXISTS_REUSE) return false;
      if (!same_dim ||
          !MessageDifferencer::Equals(existing->init(), request.init()) ||
          !MessageDifferencer::Equals(existing->policy(), request.policy())) {
        return absl::AlreadyExistsError(absl::StrCat(
            "table '", name, "' exists with dim ", existing->dim(), " and ",
            PolicyString(existing->policy()), "; cannot create it with dim ",
            request.dim(), " and ", PolicyString(request.policy()),
            " (or another init)",
            same_dim ? "; ask to reuse it (on_exists=reuse) or to reset it "
                       "(on_exists=reset), or delete it first"
                     : "; reset it (on_exists=reset) or delete it first"));
      }
      PS_RETURN_IF_ERROR(CheckSameOrigin(name, "table", origin));
      return false;
    }
  }
  auto table = std::make_shared<SparseTable>(name, request.dim(),
                                             request.init(), request.policy());
  if (own != nullptr) rules_.SetOwn(name, std::move(own));
  // Charged in the check above, given back by RemoveTable.
  origins_[name] = std::move(origin);
  absl::MutexLock lock(&entries_mu_);
  tables_.emplace(name, std::move(table));
  return true;
}

absl::Status VariableStore::PullRows(const v1::PullRequest& request,
                                     uint64_t slice_bytes,
                                     v1::PullResponse* response) const {
  std::vector<std::shared_ptr<SparseTable>> tables;
  tables.reserve(request.rows_size());
  uint64_t answer_bytes = slice_bytes;
  for (const v1::RowSlice& slice : request.rows()) {
    auto table = FindTable(slice.table());
    if (table == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("no table named '", slice.table(), "'"));
    }
    PS_RETURN_IF_ERROR(
        CheckIds(slice, *table, options_.shard_index, options_.num_shards));
    answer_bytes += slice.table().size() + 16 +
                    slice.ids_size() *
                        (sizeof(uint64_t) + uint64_t{table->dim()} *
                                                BytesPerValue(request.dtype()));
    tables.push_back(std::move(table));
  }
  PS_RETURN_IF_ERROR(
      CheckAnswerSize(answer_bytes, request.slices_size() + request.rows_size(),
                      options_.max_answer_bytes));
  std::vector<float> values;
  for (int i = 0; i < request.rows_size(); ++i) {
    const v1::RowSlice& asked = request.rows(i);
    const SparseTable& table = *tables[i];
    values.resize(asked.ids_size() * size_t{table.dim()});
    {
      absl::ReaderMutexLock lock(&table.mu);
      table.Read(
          std::span<const uint64_t>(asked.ids().data(), asked.ids_size()),
          values);
    }
    v1::RowSlice* rows = response->add_rows();
    rows->set_table(asked.table());
    *rows->mutable_ids() = asked.ids();
    rows->set_dtype(request.dtype());
    EncodeValues(request.dtype(), values, rows->mutable_data());
  }
  return absl::OkStatus();
}

absl::Status VariableStore::DecodeRows(const v1::PushRequest& request,
                                       PreparedPush& push,
                                       uint64_t& answer_bytes) const {
  absl::flat_hash_set<const SparseTable*> seen;
  push.rows.reserve(request.rows_size());
  for (const v1::RowSlice& slice : request.rows()) {
    PreparedPush::Rows part;
    part.table = FindTable(slice.table());
    if (part.table == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("no table named '", slice.table(),
                       "'; create it before pushing to it"));
    }
    const SparseTable& table = *part.table;
    if (!seen.insert(&table).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("the push holds table '", table.name(),
                       "' twice; send its rows in one slice"));
    }
    const size_t values = slice.ids_size() * size_t{table.dim()};
    if (absl::Status size =
            CheckEncodedSize(slice.dtype(), slice.data().size(), values);
        !size.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("rows of table '", table.name(), "' (", slice.ids_size(),
                       " ids of dim ", table.dim(), "): ", size.message()));
    }
    PS_RETURN_IF_ERROR(
        CheckIds(slice, table, options_.shard_index, options_.num_shards));
    part.ids.assign(slice.ids().begin(), slice.ids().end());
    part.unanswered = slice.unanswered();
    bool finite = false;
    PS_RETURN_IF_ERROR(ViewValues(slice.dtype(), slice.data(), values,
                                  part.decoded, part.gradients, finite));
    if (auto bad = finite ? std::nullopt : FirstNonFinite(part.gradients)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gradient of row ", part.ids[*bad / table.dim()], " of table '",
          table.name(), "' holds ", part.gradients[*bad], " at value ",
          *bad % table.dim(), "; every value must be finite"));
    }
    answer_bytes +=
        slice.table().size() + 16 +
        part.answered().size() *
            (sizeof(uint64_t) +
             uint64_t{table.dim()} * BytesPerValue(request.pull_dtype()));
    push.rows.push_back(std::move(part));
  }
  return absl::OkStatus();
}

absl::Status VariableStore::CheckRowsAsync(PreparedPush& push,
                                           std::vector<bool>& duplicate,
                                           uint64_t& reserved) {
  int64_t more = 0;
  for (size_t j = 0; j < push.rows.size(); ++j) {
    PreparedPush::Rows& part = push.rows[j];
    const SparseTable& table = *part.table;
    duplicate[j] = AlreadyApplied(push, table.applied);
    if (duplicate[j]) continue;
    PS_RETURN_IF_ERROR(CheckTableTakesPush(push, table));
    // The rule the part is checked, planned and booked with (an optimizer
    // change waits for the push's locks).
    part.rule = rules_.For(table.name());
    PS_RETURN_IF_ERROR(CheckTableUpdate(part.rule->settings, table, push.loss));
    PS_ASSIGN_OR_RETURN(part.plan, table.PlanPush(part.ids));
    more += table.BytesDelta(part.plan, part.rule->settings);
  }
  if (more > 0) {
    PS_RETURN_IF_ERROR(memory_.ReserveTableBytes(
        static_cast<uint64_t>(more),
        absl::StrCat("a push creating rows of ",
                     push.rows.size() == 1 ? TableWhat(*push.rows[0].table)
                                           : "its tables"),
        options_.shard_index));
    reserved = static_cast<uint64_t>(more);
  }
  return absl::OkStatus();
}

int64_t VariableStore::ApplyRowsAsync(
    PreparedPush& push, const std::vector<bool>& duplicate, uint64_t reserved,
    const std::shared_ptr<PushCompletion>& completion) {
  int64_t new_records = 0;
  int64_t change = 0;
  for (size_t j = 0; j < push.rows.size(); ++j) {
    PreparedPush::Rows& part = push.rows[j];
    SparseTable& table = *part.table;
    // The rows after the update, when the answer carries them (answered()
    // is the pushed ids or none). In float32 both ways they are written
    // over the gradients, in the request's own bytes: Run reads each row's
    // gradient before it writes that row.
    const bool answered = completion->with_values() && !part.answered().empty();
    const size_t values = answered ? part.ids.size() * size_t{table.dim()} : 0;
    part.in_buffer = answered && completion->dtype() == v1::FLOAT32 &&
                     part.buffer.size() == values * sizeof(float) &&
                     part.gradients.data() ==
                         reinterpret_cast<const float*>(part.buffer.data());
    if (part.in_buffer) {
      part.after = std::span<float>(
          reinterpret_cast<float*>(part.buffer.data()), values);
    } else {
      part.answer.resize(values);
      part.after = part.answer;
    }
    if (!duplicate[j]) {
      // Booked here, under the push's locks; the rows are updated by
      // RunRowsAsync after they are released.
      table.Book(part.rule->settings, part.plan, part.ids, part.gradients,
                 push.loss, part.after, &helpers_, part.update);
      new_records += MarkApplied(push, table.applied) ? 1 : 0;
      change += table.TakeBytesChange();
    } else if (answered) {
      table.Read(part.answered(), part.after);
    }
  }
  // Settle the reservation with what the rows took (eviction may free more).
  memory_.AddTableBytes(change - static_cast<int64_t>(reserved));
  return new_records;
}

void VariableStore::RunRowsAsync(
    PreparedPush& push, const std::shared_ptr<PushCompletion>& completion) {
  for (size_t j = 0; j < push.rows.size(); ++j) {
    PreparedPush::Rows& part = push.rows[j];
    SparseTable& table = *part.table;
    const absl::Time start = absl::Now();
    if (part.rule != nullptr) {  // booked (not a duplicate)
      table.Run(part.update, &helpers_);
      counters_.RecordUpdate(absl::Now() - start);
    }
    if (part.in_buffer) {
      completion->FillEncodedRows(j, table.name(), part.answered(),
                                  std::move(part.buffer));
    } else {
      completion->FillRows(j, table.name(), part.answered(), part.answer);
    }
  }
}

absl::Status VariableStore::CheckRowsSync(const PreparedPush& push,
                                          std::vector<bool>& duplicate) {
  for (size_t j = 0; j < push.rows.size(); ++j) {
    const SparseTable& table = *push.rows[j].table;
    duplicate[j] = AlreadyApplied(push, table.applied);
    if (duplicate[j]) continue;
    PS_RETURN_IF_ERROR(CheckTableTakesPush(push, table));
    const SparseTable::Sync& sync = table.sync;
    if (sync.started && push.step == sync.next_step &&
        sync.workers.contains(push.worker_id)) {
      return absl::AlreadyExistsError(
          absl::StrCat("worker '", push.worker_id, "' already pushed step ",
                       push.step, " of table '", table.name(), "'"));
    }
    if (sync.started && push.step < sync.next_step) {
      return absl::AbortedError(absl::StrCat(
          "step ", push.step, " of table '", table.name(),
          "' was already applied; the current step is ", sync.next_step));
    }
    if (sync.started && push.step > sync.next_step && !sync.workers.empty()) {
      return absl::UnavailableError(absl::StrCat(
          "step ", push.step, " is ahead of step ", sync.next_step,
          " of table '", table.name(), "' on shard ", options_.shard_index,
          ", which other workers are still pushing; retry"));
    }
    auto entry = rules_.For(table.name());
    PS_RETURN_IF_ERROR(CheckTableUpdate(entry->settings, table, push.loss));
  }
  return absl::OkStatus();
}

int64_t VariableStore::ApplyRowsSync(
    PreparedPush& push, const std::vector<bool>& duplicate,
    const std::shared_ptr<PushCompletion>& completion, ReadyParts& ready) {
  const uint32_t quorum =
      options_.quorum != 0 ? options_.quorum : options_.num_workers;
  int64_t new_records = 0;
  for (size_t j = 0; j < push.rows.size(); ++j) {
    PreparedPush::Rows& part = push.rows[j];
    SparseTable& table = *part.table;
    SparseTable::Sync& sync = table.sync;
    if (duplicate[j]) {
      // Acknowledge again: wait for the step if it is still collecting.
      if (sync.started && push.step == sync.next_step &&
          sync.workers.contains(push.worker_id)) {
        sync.waiters.push_back(
            {completion, j, {part.answered().begin(), part.answered().end()}});
      } else {
        std::vector<float> answer(part.answered().size() * size_t{table.dim()});
        table.Read(part.answered(), answer);
        completion->FillRows(j, table.name(), part.answered(), answer);
        ready.emplace_back(completion, absl::OkStatus());
      }
      continue;
    }
    // A table that has not started, or whose current step nobody pushed,
    // takes the worker's step (a step may carry no rows of a table).
    if (!sync.started || push.step > sync.next_step) {
      sync.started = true;
      sync.next_step = push.step;
    }
    new_records += MarkApplied(push, table.applied) ? 1 : 0;
    table.AddToSync(part.ids, part.gradients);
    sync.workers.insert(push.worker_id);
    if (push.loss.has_value()) {
      sync.loss_sum += *push.loss;
      ++sync.losses;
    }
    sync.waiters.push_back(
        {completion, j, {part.answered().begin(), part.answered().end()}});
    if (sync.workers.size() >= std::max<uint32_t>(quorum, 1)) {
      // A cut in progress holds the step (CompleteHeldTableSteps).
      absl::ReaderMutexLock hold(sync_.hold_mu());
      if (sync_.MayApply(sync.next_step)) FinishTableStep(table, ready);
    }
  }
  return new_records;
}

void VariableStore::CompleteHeldTableSteps() {
  const uint32_t quorum =
      options_.quorum != 0 ? options_.quorum : options_.num_workers;
  for (const auto& table : SortedTables()) {
    ReadyParts ready;
    {
      absl::MutexLock lock(&table->mu);
      SparseTable::Sync& sync = table->sync;
      if (!sync.started || sync.workers.empty() ||
          sync.workers.size() < std::max<uint32_t>(quorum, 1)) {
        continue;
      }
      absl::ReaderMutexLock hold(sync_.hold_mu());
      if (!sync_.MayApply(sync.next_step)) continue;
      FinishTableStep(*table, ready);
    }
    for (auto& [waiter, status] : ready) waiter->PartDone(std::move(status));
  }
}

void VariableStore::FinishTableStep(SparseTable& table, ReadyParts& ready) {
  SparseTable::Sync& sync = table.sync;
  // The mean over the workers who pushed the step: a row a worker did not
  // push counts as zero, as it would densely.
  const float workers = static_cast<float>(sync.workers.size());
  for (float& value : sync.sum) value /= workers;
  std::optional<double> loss;
  if (sync.losses > 0) loss = sync.loss_sum / sync.losses;
  auto entry = rules_.For(table.name());
  absl::Status status =
      optimizer::CheckUpdate(entry->settings, table.rule_state(), loss);
  if (!status.ok()) {
    status = absl::InvalidArgumentError(
        absl::StrCat("step ", sync.next_step, " of table '", table.name(),
                     "': ", status.message()));
  }
  SparseTable::Plan plan;
  if (status.ok()) {
    absl::StatusOr<SparseTable::Plan> planned = table.PlanPush(sync.ids);
    status = planned.status();
    if (status.ok()) plan = *std::move(planned);
  }
  int64_t more = 0;
  if (status.ok()) {
    more = table.BytesDelta(plan, entry->settings);
    if (more > 0) {
      status = memory_.ReserveTableBytes(
          static_cast<uint64_t>(more),
          absl::StrCat("step ", sync.next_step, " of ", TableWhat(table)),
          options_.shard_index);
    }
  }
  if (status.ok()) {
    const absl::Time start = absl::Now();
    table.Apply(entry->settings, plan, sync.ids, sync.sum, loss, &helpers_);
    counters_.RecordUpdate(absl::Now() - start);
    memory_.AddTableBytes(table.TakeBytesChange() - std::max<int64_t>(more, 0));
  }
  std::vector<float> answer;
  for (SparseTable::Sync::Waiter& waiter : sync.waiters) {
    if (status.ok()) {
      answer.resize(waiter.ids.size() * size_t{table.dim()});
      table.Read(waiter.ids, answer);
      waiter.completion->FillRows(waiter.part, table.name(), waiter.ids,
                                  answer);
    }
    ready.emplace_back(std::move(waiter.completion), status);
  }
  sync_.Raise(sync.next_step + 1);
  sync.waiters.clear();
  sync.ids.clear();
  sync.index.clear();
  sync.sum.clear();
  sync.workers.clear();
  sync.loss_sum = 0;
  sync.losses = 0;
  ++sync.next_step;
}

}  // namespace ps
