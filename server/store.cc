// VariableStore's worker side: creations, pulls, and pushes from decoding to
// their application (async and sync) under the blocks' locks.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <new>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/optimizer_config.h"
#include "common/rule_catalog.h"
#include "common/status.h"
#include "common/wire.h"
#include "server/exactly_once.h"
#include "server/locked_set.h"
#include "server/store_impl.h"
#include "spdlog/spdlog.h"

namespace ps {
namespace {

// The largest variable accepted, in values (about 1 TiB of float32).
constexpr uint64_t kMaxVariableSize = uint64_t{1} << 38;

std::string ShapeString(const std::vector<uint64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status ShapeConflict(const std::string& name,
                           const std::vector<uint64_t>& existing,
                           const std::vector<uint64_t>& wanted) {
  return absl::AlreadyExistsError(absl::StrCat(
      "variable '", name, "' exists with shape ", ShapeString(existing),
      "; cannot create it with shape ", ShapeString(wanted)));
}

absl::StatusOr<uint64_t> CheckShape(const std::string& name,
                                    const std::vector<uint64_t>& shape) {
  uint64_t size = 1;
  for (uint64_t dim : shape) {
    if (dim == 0 || dim > kMaxVariableSize) {
      return absl::InvalidArgumentError(absl::StrCat(
          "variable '", name, "' has dimension ", static_cast<int64_t>(dim),
          " in shape ", ShapeString(shape),
          "; every dimension must be between 1 and ", kMaxVariableSize));
    }
    if (size > kMaxVariableSize / dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("variable '", name, "' of shape ", ShapeString(shape),
                       " has more than ", kMaxVariableSize, " values"));
    }
    size *= dim;
  }
  return size;
}

uint64_t NowMicros() {
  return static_cast<uint64_t>(absl::ToUnixMicros(absl::Now()));
}

// ---- exactly-once, per block (server/exactly_once.h)

bool AlreadyApplied(const PreparedPush& push, const Block& block)
    ABSL_SHARED_LOCKS_REQUIRED(block.mu) {
  return AlreadyApplied(push, block.applied);
}

absl::Status CheckNotFenced(const PreparedPush& push,
                            const DenseVariable& variable, const Block& block)
    ABSL_SHARED_LOCKS_REQUIRED(block.mu) {
  return CheckNotFenced(
      push, block.applied,
      absl::StrCat("block ", block.index, " of '", variable.name(), "'"));
}

bool MarkApplied(const PreparedPush& push, Block& block)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(block.mu) {
  return MarkApplied(push, block.applied);
}

// The locks of a push's blocks and tables.
std::vector<absl::Mutex*> LocksOf(const PreparedPush& push) {
  std::vector<absl::Mutex*> locks;
  locks.reserve(push.gradients.size() + push.rows.size());
  for (const auto& part : push.gradients) locks.push_back(&part.block->mu);
  for (const auto& part : push.rows) locks.push_back(&part.table->mu);
  return locks;
}

}  // namespace

std::unique_ptr<Store> Store::Create(const StoreOptions& options) {
  return std::make_unique<VariableStore>(options);
}

VariableStore::VariableStore(const StoreOptions& options)
    : options_(options),
      plan_(options.num_shards, options.block_size),
      rules_(options.default_optimizer),
      memory_(options.memory_limit_bytes, options.sync,
              DenseVariable::kBookkeepingBytesPerBlock),
      sessions_(options.shard_index, options.max_workers),
      members_(MembershipOptions{options.shard_index,
                                 options.sync ? options.num_workers : 0,
                                 options.quorum, options.lease_timeout}),
      sync_(options.shard_index, options.quorum, options.num_workers,
            &members_),
      staleness_(options.staleness),
      helpers_(options.update_threads - 1) {}

std::shared_ptr<DenseVariable> VariableStore::Find(
    const std::string& name) const {
  absl::ReaderMutexLock lock(&entries_mu_);
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : it->second;
}

std::shared_ptr<SparseTable> VariableStore::FindTable(
    const std::string& name) const {
  absl::ReaderMutexLock lock(&entries_mu_);
  auto it = tables_.find(name);
  return it == tables_.end() ? nullptr : it->second;
}

bool VariableStore::Exists(const std::string& name) const {
  absl::ReaderMutexLock lock(&entries_mu_);
  return entries_.contains(name) || tables_.contains(name);
}

std::vector<std::shared_ptr<SparseTable>> VariableStore::SortedTables() const {
  std::vector<std::shared_ptr<SparseTable>> tables;
  {
    absl::ReaderMutexLock lock(&entries_mu_);
    tables.reserve(tables_.size());
    for (const auto& [name, table] : tables_) tables.push_back(table);
  }
  std::sort(tables.begin(), tables.end(),
            [](const auto& a, const auto& b) { return a->name() < b->name(); });
  return tables;
}

std::vector<std::shared_ptr<DenseVariable>> VariableStore::SortedVariables()
    const {
  std::vector<std::shared_ptr<DenseVariable>> variables;
  {
    absl::ReaderMutexLock lock(&entries_mu_);
    variables.reserve(entries_.size());
    for (const auto& [name, variable] : entries_) variables.push_back(variable);
  }
  std::sort(variables.begin(), variables.end(),
            [](const auto& a, const auto& b) { return a->name() < b->name(); });
  return variables;
}

std::vector<std::string> VariableStore::VariableNames() const {
  std::vector<std::string> names;
  for (const auto& variable : SortedVariables()) {
    names.push_back(variable->name());
  }
  return names;
}

uint64_t VariableStore::NumBlocks() const {
  absl::ReaderMutexLock lock(&entries_mu_);
  uint64_t blocks = 0;
  for (const auto& [name, variable] : entries_) {
    blocks += variable->NumRecords();
  }
  for (const auto& [name, table] : tables_) blocks += table->NumRecords();
  return blocks;
}

absl::Status VariableStore::SetInitialValues(
    DenseVariable& variable, const v1::CreateVariableRequest& request) const {
  const std::string& name = request.name();
  // Checked in full first: a refused request changes nothing.
  absl::flat_hash_set<uint64_t> initialized;
  std::vector<std::pair<Block*, std::vector<float>>> decoded;
  for (const v1::Slice& slice : request.initial_values()) {
    if (!slice.variable().empty() && slice.variable() != name) {
      return absl::InvalidArgumentError(
          absl::StrCat("initial values name variable '", slice.variable(),
                       "' in a request to create '", name, "'"));
    }
    PS_ASSIGN_OR_RETURN(
        Block * block,
        variable.CheckRange(plan_, options_.shard_index, slice.offset(),
                            slice.length(), /*whole_block=*/true));
    if (!initialized.insert(block->index).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("initial values give block ", block->index, " of '",
                       name, "' twice"));
    }
    v1::Slice named = slice;
    named.set_variable(name);
    std::vector<float> values;
    PS_RETURN_IF_ERROR(DecodeFinite(named, "initial values", values));
    decoded.emplace_back(block, std::move(values));
  }
  for (auto& [block, values] : decoded) {
    absl::MutexLock lock(&block->mu);
    // A continued create never overwrites what a push has updated.
    if (block->state.step == 0) block->values = std::move(values);
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> VariableStore::CreateVariable(
    const v1::CreateVariableRequest& request) {
  const std::string& name = request.name();
  if (name.empty()) {
    return absl::InvalidArgumentError("a variable needs a non-empty name");
  }
  std::vector<uint64_t> shape(request.shape().begin(), request.shape().end());
  PS_ASSIGN_OR_RETURN(const uint64_t size, CheckShape(name, shape));

  std::shared_ptr<const OptimizerEntry> own;
  if (request.has_optimizer()) {
    auto settings = ResolveOptimizerConfig(request.optimizer());
    if (!settings.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "optimizer of '", name, "': ", settings.status().message()));
    }
    own = std::make_shared<OptimizerEntry>(
        OptimizerEntry{request.optimizer(), *std::move(settings)});
  }

  if (!v1::OnExists_IsValid(request.on_exists())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown on_exists ", static_cast<int>(request.on_exists()),
        "; use ON_EXISTS_ERROR, ON_EXISTS_REUSE or ON_EXISTS_RESET"));
  }
  // What this request creates the variable with.
  storage::v1::VariableOrigin origin;
  if (request.has_optimizer()) {
    *origin.mutable_optimizer() = request.optimizer();
    origin.mutable_optimizer()->clear_config_version();
  }
  // Zeros, given or not, have one checksum, so a creation with a shape
  // alone matches one with explicit zeros.
  if (request.has_initial_values_checksum()) {
    origin.set_checksum(request.initial_values_checksum());
    origin.set_zeros(origin.checksum() == ZerosChecksum(size));
  } else if (request.initial_values().empty()) {
    origin.set_checksum(ZerosChecksum(size));
    origin.set_zeros(true);
  }

  absl::MutexLock structure_lock(&structure_mu_);
  // What a replaced variable held, which its replacement may take over.
  uint64_t freed = 0;
  if (auto existing = Find(name)) {
    const bool reset =
        request.on_exists() == v1::ON_EXISTS_RESET && !request.continued();
    if (!reset) {
      if (existing->shape() != shape) {
        return ShapeConflict(name, existing->shape(), shape);
      }
      if (request.continued()) {
        PS_RETURN_IF_ERROR(SetInitialValues(*existing, request));
      } else if (request.on_exists() == v1::ON_EXISTS_ERROR) {
        PS_RETURN_IF_ERROR(CheckSameOrigin(name, "variable", origin));
      }
      return false;
    }
    const EntryShape held = memory_.ShapeOf(name);
    freed = memory_.ArrayBytes(held, memory_.SlotsOf(name)) +
            memory_.BlockBytes(held);
  }
  if (FindTable(name) != nullptr) {
    return absl::AlreadyExistsError(
        absl::StrCat("a table named '", name,
                     "' exists; variables and tables share one namespace"));
  }

  // This shard's blocks, and what they and their optimizer state will hold
  // (counting stops once that is over the limit).
  std::shared_ptr<const OptimizerEntry> entry =
      own != nullptr ? own : rules_.For(name);
  const optimizer::StateSlots slots = optimizer::SlotsOf(entry->settings.rule);
  EntryShape charge;
  std::vector<uint64_t> local_blocks;
  const uint64_t num_blocks = plan_.NumBlocks(size);
  const uint64_t limit = options_.memory_limit_bytes;
  auto bytes = [&] {
    return memory_.ArrayBytes(charge, slots) + memory_.BlockBytes(charge);
  };
  for (uint64_t k = 0; k < num_blocks; ++k) {
    if (plan_.ShardOf(name, k) != options_.shard_index) continue;
    local_blocks.push_back(k);
    charge.values += plan_.BlockRange(size, k).length;
    ++charge.blocks;
    if (limit != 0 && bytes() > limit) break;
  }
  PS_RETURN_IF_ERROR(memory_.Check(
      bytes() > freed ? bytes() - freed : 0,
      absl::StrCat("variable '", name, "' (", size, " values, ",
                   std::string(optimizer::RuleName(entry->settings.rule)), ")"),
      options_.shard_index));

  std::shared_ptr<DenseVariable> variable;
  try {
    variable =
        std::make_shared<DenseVariable>(name, shape, size, plan_, local_blocks);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("not enough memory on shard ", options_.shard_index,
                     " for '", name, "' of ", size, " values"));
  }

  PS_RETURN_IF_ERROR(SetInitialValues(*variable, request));

  if (auto replaced = Find(name)) {
    RemoveVariable(*replaced);
    spdlog::info("variable '{}' reset: created again from its initial values",
                 name);
  }
  if (own != nullptr) rules_.SetOwn(name, std::move(own));
  memory_.Charge(name, charge, slots);
  origins_[name] = std::move(origin);
  absl::MutexLock lock(&entries_mu_);
  entries_.emplace(name, std::move(variable));
  return true;
}

absl::Status VariableStore::CheckSameOrigin(
    const std::string& name, const char* what,
    const storage::v1::VariableOrigin& wanted) const {
  auto it = origins_.find(name);
  if (it == origins_.end()) return absl::OkStatus();  // not recorded
  const storage::v1::VariableOrigin& had = it->second;
  std::string differs;
  if (had.has_optimizer() != wanted.has_optimizer() ||
      had.optimizer().SerializeAsString() !=
          wanted.optimizer().SerializeAsString()) {
    auto text = [](const storage::v1::VariableOrigin& o) {
      return o.has_optimizer()
                 ? absl::StrCat("its own optimizer '",
                                OptimizerConfigToText(o.optimizer()), "'")
                 : std::string("the server's default optimizer");
    };
    differs = absl::StrCat("it was created with ", text(had),
                           ", this request asks for ", text(wanted));
  } else if (had.has_checksum() && wanted.has_checksum() &&
             had.checksum() != wanted.checksum()) {
    auto text = [](const storage::v1::VariableOrigin& o) {
      return o.zeros()
                 ? std::string("zeros")
                 : absl::StrCat("values of checksum ",
                                absl::Hex(o.checksum(), absl::kZeroPad16));
    };
    differs = absl::StrCat("it was created with initial ", text(had),
                           ", this request gives initial ", text(wanted));
  }
  if (differs.empty()) return absl::OkStatus();
  return absl::AlreadyExistsError(absl::StrCat(
      what, " '", name, "' exists: ", differs,
      ". Ask to reuse it (on_exists=reuse: keep the server's values and "
      "optimizer) or to reset it (on_exists=reset: replace them), or delete "
      "it first"));
}

absl::StatusOr<bool> VariableStore::DeleteVariable(const std::string& name) {
  if (name.empty()) {
    return absl::InvalidArgumentError("DeleteVariable needs a variable name");
  }
  absl::MutexLock structure_lock(&structure_mu_);
  if (auto table = FindTable(name)) {
    RemoveTable(*table);
    return true;
  }
  auto variable = Find(name);
  if (variable == nullptr) return false;
  RemoveVariable(*variable);
  return true;
}

void VariableStore::RemoveTable(SparseTable& table) {
  const std::string name = table.name();
  ReadyParts ready;
  int64_t records = 0;
  int64_t bytes = 0;
  {
    absl::MutexLock lock(&table.mu);
    // Rows stay until the last push or pull that holds the table lets go
    // of it; nothing changes them from now on.
    table.deleted = true;
    records = static_cast<int64_t>(table.applied.size());
    table.applied.clear();
    // What the memory budget was told of the table.
    bytes = static_cast<int64_t>(table.Bytes()) - table.TakeBytesChange();
    for (SparseTable::Sync::Waiter& waiter : table.sync.waiters) {
      ready.emplace_back(
          std::move(waiter.completion),
          absl::NotFoundError(absl::StrCat(
              "table '", name, "' was deleted while the push waited for ",
              "its step")));
    }
    table.sync = SparseTable::Sync();
  }
  {
    absl::MutexLock lock(&entries_mu_);
    tables_.erase(name);
  }
  rules_.Forget(name);
  origins_.erase(name);
  memory_.AddTableBytes(-bytes -
                        static_cast<int64_t>(SparseTable::kTableBytes));
  memory_.AddAppliedRecords(-records);
  for (auto& [waiter, status] : ready) waiter->PartDone(std::move(status));
}

void VariableStore::RemoveVariable(const DenseVariable& variable) {
  const std::string name = variable.name();
  ReadyParts ready;
  int64_t records = 0;
  // One block at a time (a push holds all of its blocks at once, so it
  // sees each of them before or after, and is refused from the first it
  // finds deleted; the variable goes either way).
  for (Block* block : variable.SortedBlocks()) {
    absl::MutexLock lock(&block->mu);
    // Values stay until the last push or pull that holds the block lets
    // go of it; nothing changes them from now on.
    block->deleted = true;
    records += static_cast<int64_t>(block->applied.size());
    block->applied.clear();
    for (auto& [waiter, index] : block->sync.waiters) {
      ready.emplace_back(
          std::move(waiter),
          absl::NotFoundError(absl::StrCat(
              "variable '", name, "' was deleted while the push waited for ",
              "its step")));
    }
    block->sync = SyncSlot();
  }
  {
    absl::MutexLock lock(&entries_mu_);
    entries_.erase(name);
  }
  rules_.Forget(name);
  memory_.Drop(name);
  memory_.AddAppliedRecords(-records);
  origins_.erase(name);
  for (auto& [waiter, status] : ready) waiter->PartDone(std::move(status));
}

absl::Status VariableStore::Pull(const v1::PullRequest& request,
                                 v1::PullResponse* response) const {
  if (!v1::DType_IsValid(request.dtype())) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown dtype ", static_cast<int>(request.dtype()),
                     "; use FLOAT32, BFLOAT16 or FLOAT16"));
  }
  // Decode and check every slice, then read each under its block's lock.
  std::vector<std::pair<std::shared_ptr<DenseVariable>, Block*>> targets;
  targets.reserve(request.slices_size());
  uint64_t answer_bytes = 0;
  for (const v1::Slice& slice : request.slices()) {
    auto variable = Find(slice.variable());
    if (variable == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("no variable named '", slice.variable(), "'"));
    }
    PS_ASSIGN_OR_RETURN(Block * block,
                        variable->CheckRange(plan_, options_.shard_index,
                                             slice.offset(), slice.length(),
                                             /*whole_block=*/false));
    targets.emplace_back(std::move(variable), block);
    answer_bytes +=
        AnswerBytes(slice.variable(), slice.length(), request.dtype());
  }
  PS_RETURN_IF_ERROR(CheckDisjoint(request.slices(), "pull"));
  PS_RETURN_IF_ERROR(CheckAnswerSize(answer_bytes, request.slices_size(),
                                     options_.max_answer_bytes));
  if (request.rows_size() > 0) {
    // Rows are checked (and bounded together with the slices) first.
    PS_RETURN_IF_ERROR(PullRows(request, answer_bytes, response));
  }
  response->mutable_values()->Reserve(request.slices_size());
  for (int i = 0; i < request.slices_size(); ++i) {
    const v1::Slice& asked = request.slices(i);
    const Block* block = targets[i].second;
    v1::Slice* slice = response->add_values();
    slice->set_variable(asked.variable());
    slice->set_offset(asked.offset());
    slice->set_length(asked.length());
    slice->set_dtype(request.dtype());
    absl::ReaderMutexLock lock(&block->mu);
    slice->set_version(block->state.step);
    EncodeValues(
        request.dtype(),
        std::span<const float>(block->values)
            .subspan(asked.offset() - block->range.offset, asked.length()),
        slice->mutable_data());
  }
  return absl::OkStatus();
}

absl::StatusOr<PreparedPush> VariableStore::PreparePush(
    const v1::PushRequest& request, bool answered) {
  if (!v1::DType_IsValid(request.pull_dtype())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown pull_dtype ", static_cast<int>(request.pull_dtype()),
        "; use FLOAT32, BFLOAT16 or FLOAT16"));
  }
  if (options_.sync && request.worker_id().empty()) {
    return absl::InvalidArgumentError(
        "sync mode averages pushes per worker: set PushRequest.worker_id");
  }
  if (request.has_loss() && !std::isfinite(request.loss())) {
    return absl::InvalidArgumentError(
        absl::StrCat("loss ", request.loss(), " is not finite"));
  }
  // Read before rolling_back_, which a roll-back sets before it counts
  // itself: a push that finds no roll-back under way either carries the
  // count of one that has finished, or is refused when it applies.
  const uint64_t rollbacks = rollbacks_.load();
  if (rolling_back_.load()) {
    return absl::UnavailableError(
        absl::StrCat("shard ", options_.shard_index,
                     " is going back to a checkpoint; retry"));
  }
  PreparedPush push;
  push.rollbacks = rollbacks;
  push.worker_id = request.worker_id();
  push.epoch = request.epoch();
  push.seq = request.seq();
  push.step = request.step();
  if (request.has_loss()) push.loss = request.loss();
  push.gradients.reserve(request.gradients_size());
  absl::flat_hash_set<const Block*> seen;
  uint64_t answer_bytes = 0;
  for (const v1::Slice& slice : request.gradients()) {
    PreparedPush::Gradient part;
    part.variable = Find(slice.variable());
    if (part.variable == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("no variable named '", slice.variable(),
                       "'; create it before pushing to it"));
    }
    PS_ASSIGN_OR_RETURN(
        part.block, part.variable->CheckRange(plan_, options_.shard_index,
                                              slice.offset(), slice.length(),
                                              /*whole_block=*/true));
    if (!seen.insert(part.block).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("the push holds block ", part.block->index, " of '",
                       slice.variable(), "' twice"));
    }
    // Sync mode sums the widened gradients, so it widens them here.
    PS_RETURN_IF_ERROR(ViewGradient(slice, !options_.sync, part));
    if (options_.sync) {
      // Each worker's loss must suit the rule on its own (their mean is what
      // the step uses); async pushes are checked where they are applied.
      auto entry = rules_.For(slice.variable());
      absl::ReaderMutexLock lock(&part.block->mu);
      absl::Status check =
          optimizer::CheckUpdate(entry->settings, part.block->state, push.loss);
      if (!check.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "push to '", slice.variable(), "': ", check.message()));
      }
    }
    answer_bytes +=
        AnswerBytes(slice.variable(), slice.length(), request.pull_dtype());
    push.gradients.push_back(std::move(part));
  }
  PS_RETURN_IF_ERROR(DecodeRows(request, push, answer_bytes));
  if (answered) {
    PS_RETURN_IF_ERROR(CheckAnswerSize(
        answer_bytes, request.gradients_size() + request.rows_size(),
        options_.max_answer_bytes));
  }
  if (push.exactly_once()) {
    PS_RETURN_IF_ERROR(
        sessions_.Admit(push.worker_id, push.epoch, push.seq, NowMicros()));
    CountSessions();
  }
  // Sync: the push counts the worker in its step. Ssp: it renews the
  // lease now, and moves the worker's clock once it is applied. Pushes
  // without a session join too, up to max_workers members.
  if (!push.worker_id.empty() && (options_.sync || options_.ssp) &&
      options_.max_workers != 0 && !members_.IsMember(push.worker_id) &&
      members_.size() >= options_.max_workers) {
    return absl::ResourceExhaustedError(
        absl::StrCat("shard ", options_.shard_index, " has ",
                     options_.max_workers, " members already (--max_workers)"));
  }
  if (!push.worker_id.empty() && options_.sync) {
    members_.RecordPush(push.worker_id, push.step, push.loss, absl::Now());
  } else if (!push.worker_id.empty() && options_.ssp) {
    members_.Renew(push.worker_id, absl::Now());
  }
  return push;
}

absl::StatusOr<Store::Session> VariableStore::OpenSession(
    const std::string& worker, uint64_t epoch) {
  if (rolling_back_.load()) {
    return absl::UnavailableError(
        absl::StrCat("shard ", options_.shard_index,
                     " is going back to a checkpoint; retry"));
  }
  Session session;
  PS_ASSIGN_OR_RETURN(session.epoch,
                      sessions_.Open(worker, epoch, NowMicros()));
  CountSessions();
  if (options_.sync || options_.ssp) members_.Join(worker, absl::Now());
  session.sync_step = sync_.step();
  return session;
}

absl::Status VariableStore::CheckCaller(const std::string& worker,
                                        uint64_t epoch) const {
  if (worker.empty()) {
    return absl::InvalidArgumentError("worker_id must not be empty");
  }
  const uint64_t known = sessions_.EpochOf(worker);
  if (epoch != 0 && epoch < known) {
    return absl::FailedPreconditionError(absl::StrCat(
        "fenced: worker '", worker, "' has a newer session (epoch ", known,
        " > ", epoch, ") on shard ", options_.shard_index));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> VariableStore::Heartbeat(const std::string& worker,
                                                  uint64_t epoch) {
  PS_RETURN_IF_ERROR(CheckCaller(worker, epoch));
  if (!options_.sync && !options_.ssp) return 0;
  if (options_.max_workers != 0 && !members_.IsMember(worker) &&
      members_.size() >= options_.max_workers) {
    return absl::ResourceExhaustedError(
        absl::StrCat("shard ", options_.shard_index, " has ",
                     options_.max_workers, " members already"));
  }
  members_.Renew(worker, absl::Now());
  return static_cast<uint32_t>(members_.size());
}

absl::StatusOr<bool> VariableStore::Leave(const std::string& worker,
                                          uint64_t epoch) {
  PS_RETURN_IF_ERROR(CheckCaller(worker, epoch));
  if (!options_.sync && !options_.ssp) return false;
  const bool was_member = members_.Leave(worker);
  if (was_member) {
    CompleteWaitingSteps();
    staleness_.Release(members_.MinClock());
  }
  return was_member;
}

void VariableStore::AwaitStaleness(const std::string& worker, uint64_t step,
                                   absl::Time deadline,
                                   std::function<void(absl::Status)> done) {
  if (!options_.ssp || worker.empty()) {
    done(absl::OkStatus());
    return;
  }
  staleness_.Await(worker, step, members_.MinClock(), deadline,
                   std::move(done));
  // A push may have moved the slowest clock while this one was queued.
  staleness_.Release(members_.MinClock());
}

void VariableStore::Tick() {
  const absl::Time now = absl::Now();
  members_.Expire(now);
  if (options_.sync && sync_.ReleaseExpired(now)) {
    spdlog::warn(
        "shard {}: a checkpoint's hold on sync steps ran out before its part "
        "was asked for; training goes on",
        options_.shard_index);
    CompleteWaitingSteps();
  }
  if (options_.sync && members_.generation(now) != checked_generation_.load()) {
    CompleteWaitingSteps();
  }
  if (options_.ssp) staleness_.Expire(now, members_.MinClock());
}

void VariableStore::CompleteWaitingSteps() {
  if (!options_.sync) return;
  checked_generation_.store(members_.generation(absl::Now()));
  for (const auto& variable : SortedVariables()) {
    for (Block* block : variable->SortedBlocks()) {
      ReadyParts ready;
      {
        absl::MutexLock lock(&block->mu);
        if (!sync_.Complete(*block)) continue;
        ApplyStep(*variable, *block, ready);
      }
      for (auto& [waiter, status] : ready) waiter->PartDone(std::move(status));
    }
  }
  CompleteHeldTableSteps();
}

uint64_t VariableStore::HoldSteps(absl::Duration limit) {
  if (!options_.sync) return 0;
  return sync_.HoldNow(absl::Now() + limit);
}

absl::Status VariableStore::CutBefore(uint64_t step, absl::Time deadline) {
  if (!options_.sync) {
    return absl::FailedPreconditionError("a sync cut needs --consistency=sync");
  }
  // Until the part is written: ReleaseSteps ends it.
  sync_.HoldFrom(step, absl::InfiniteFuture());
  CompleteWaitingSteps();  // the steps below `step` that were held
  std::string behind;
  while (true) {
    behind.clear();
    for (const auto& variable : SortedVariables()) {
      for (Block* block : variable->SortedBlocks()) {
        absl::ReaderMutexLock lock(&block->mu);
        if (block->sync.started && block->sync.next_step < step) {
          behind =
              absl::StrCat("block ", block->index, " of '", variable->name(),
                           "' is at step ", block->sync.next_step);
          break;
        }
      }
      if (!behind.empty()) break;
    }
    if (behind.empty()) {
      for (const auto& table : SortedTables()) {
        absl::MutexLock lock(&table->mu);
        if (table->sync.started && table->sync.next_step < step) {
          behind = absl::StrCat("table '", table->name(), "' is at step ",
                                table->sync.next_step);
          break;
        }
      }
    }
    if (behind.empty()) return absl::OkStatus();
    if (absl::Now() >= deadline) break;
    absl::SleepFor(absl::Milliseconds(1));
  }
  ReleaseSteps();
  return absl::DeadlineExceededError(absl::StrCat(
      "shard ", options_.shard_index, " could not cut before step ", step, ": ",
      behind,
      " and its workers did not push the steps between in time (do all "
      "workers push every variable at every step?)"));
}

void VariableStore::ReleaseSteps() {
  if (!options_.sync) return;
  sync_.Release();
  CompleteWaitingSteps();
}

void VariableStore::ApplyPush(PreparedPush push,
                              std::shared_ptr<PushCompletion> completion) {
  if (!push.rows.empty()) completion->ExpectRows(push.rows.size());
  if (options_.sync) {
    ApplySync(push, completion);
  } else {
    ApplyAsync(push, completion);
    if (options_.ssp && !push.worker_id.empty()) {
      members_.RecordPush(push.worker_id, push.step, push.loss, absl::Now());
      staleness_.Release(members_.MinClock());
    }
  }
  completion->PartDone();  // the launcher's share: every part is handed out
}

void VariableStore::ApplyAsync(
    PreparedPush& push, const std::shared_ptr<PushCompletion>& completion) {
  LockedSet locked(LocksOf(push));
  // Check every part before changing any, under the locks: an optimizer
  // change cannot land between two of them, so a push is all or nothing.
  const size_t n = push.gradients.size();
  std::vector<bool> duplicate(n);
  std::vector<std::shared_ptr<const OptimizerEntry>> entries(n);
  absl::Status refusal;
  for (size_t i = 0; i < n && refusal.ok(); ++i) {
    const PreparedPush::Gradient& part = push.gradients[i];
    duplicate[i] = AlreadyApplied(push, *part.block);
    if (duplicate[i]) continue;
    refusal = CheckNotFenced(push, *part.variable, *part.block);
    if (!refusal.ok()) break;
    refusal = CheckUpdatable(*part.variable, *part.block);
    if (!refusal.ok()) break;
    entries[i] = rules_.For(part.variable->name());
    absl::Status check = optimizer::CheckUpdate(entries[i]->settings,
                                                part.block->state, push.loss);
    if (!check.ok()) {
      refusal = absl::InvalidArgumentError(absl::StrCat(
          "push to '", part.variable->name(), "': ", check.message()));
    }
  }
  std::vector<bool> rows_duplicate(push.rows.size());
  uint64_t reserved = 0;
  if (refusal.ok()) refusal = CheckRowsAsync(push, rows_duplicate, reserved);
  std::vector<absl::Status> statuses(n + push.rows.size());
  const bool refused = !refusal.ok();
  if (refused) {
    statuses[0] = std::move(refusal);
  } else {
    int64_t new_records = 0;
    for (size_t i = 0; i < n; ++i) {
      PreparedPush::Gradient& part = push.gradients[i];
      Block& block = *part.block;
      const std::string& name = part.variable->name();
      if (duplicate[i]) {
        completion->Fill(i, name, block.range.offset, block.values,
                         block.state.step);
        continue;
      }
      // The answer is encoded chunk by chunk as the update writes the values
      // (often over the gradient just consumed), not in a second pass over
      // the block; each chunk is checked for values that are not finite
      // while it is in cache.
      char* answer = completion->WritableAnswer(i, block.values.size());
      const v1::DType dtype = completion->dtype();
      const size_t width = BytesPerValue(dtype);
      std::atomic<bool> finite = true;  // chunks may come from helpers
      auto sink = [&](size_t offset, std::span<const float> values) {
        if (!AllFinite(values)) finite.store(false, std::memory_order_relaxed);
        if (answer != nullptr) {
          EncodeValuesTo(dtype, values, answer + offset * width);
        }
      };
      const absl::Time start = absl::Now();
      const optimizer::OptimizerSettings& settings = entries[i]->settings;
      if (part.half.empty()) {
        optimizer::ApplyUpdate(settings, block.state, block.values,
                               part.gradient, push.loss, sink, &helpers_);
      } else {
        optimizer::ApplyUpdate(
            settings, block.state, block.values,
            [&](size_t offset, std::span<float> out) {
              WidenHalf(part.half_dtype, part.half.data() + 2 * offset, out);
            },
            push.loss, sink, &helpers_);
      }
      counters_.RecordUpdate(absl::Now() - start);
      new_records += MarkApplied(push, block) ? 1 : 0;
      if (!finite.load()) MarkDiverged(*part.variable, block);
      if (answer != nullptr) {
        completion->FillWritten(i, name, block.range.offset,
                                block.values.size(), block.state.step);
      } else {
        completion->Fill(i, name, block.range.offset, block.values,
                         block.state.step);
      }
    }
    new_records += ApplyRowsAsync(push, rows_duplicate, reserved, completion);
    memory_.AddAppliedRecords(new_records);
  }
  locked.Unlock();
  // The tables' rows, booked under the locks, are updated without them:
  // pushes to one table run at once on different stripes of its rows.
  if (!refused) RunRowsAsync(push, completion);
  for (absl::Status& status : statuses) completion->PartDone(std::move(status));
}

void VariableStore::ApplySync(
    PreparedPush& push, const std::shared_ptr<PushCompletion>& completion) {
  LockedSet locked(LocksOf(push));
  const size_t n = push.gradients.size();
  // A repeated (worker, epoch, seq) is acknowledged again, never refused.
  std::vector<bool> duplicate(n);
  for (size_t i = 0; i < n; ++i) {
    duplicate[i] = AlreadyApplied(push, *push.gradients[i].block);
  }

  // Check every part before changing any.
  ReadyParts ready;
  absl::Status refusal;
  absl::Status ahead;  // the first part ahead of its block's step
  if (push.rollbacks != rollbacks_.load()) {
    refusal = RolledBackError();
  }
  for (size_t i = 0; i < n && refusal.ok(); ++i) {
    PreparedPush::Gradient& part = push.gradients[i];
    Block& block = *part.block;
    if (duplicate[i]) continue;
    refusal = CheckNotFenced(push, *part.variable, block);
    if (!refusal.ok()) break;
    refusal = CheckUpdatable(*part.variable, block);
    if (!refusal.ok()) break;
    if (sync_.Joins(push.step, block)) {
      if (block.sync.workers.contains(push.worker_id)) {
        refusal = absl::AlreadyExistsError(
            absl::StrCat("worker '", push.worker_id, "' already pushed step ",
                         push.step, " of '", part.variable->name(), "'"));
        break;
      }
      continue;
    }
    const uint64_t current = sync_.Current(block);
    if (push.step < current) {
      refusal = absl::AbortedError(absl::StrCat(
          "step ", push.step, " of '", part.variable->name(), "' block ",
          block.index, " was already applied; the current step is ", current));
      break;
    }
    if (sync_.VoteAhead(push.worker_id, push.step, *part.variable, block,
                        ready)) {
      continue;
    }
    if (ahead.ok()) {
      ahead = absl::UnavailableError(absl::StrCat(
          "step ", push.step, " is ahead of step ", current, " of '",
          part.variable->name(), "' block ", block.index, " on shard ",
          options_.shard_index,
          ": it moves on when a quorum of workers is ahead too (the shard "
          "restarted from an older checkpoint, or this worker's step is "
          "wrong); retry"));
    }
  }
  if (refusal.ok()) refusal = std::move(ahead);
  std::vector<bool> rows_duplicate(push.rows.size());
  if (refusal.ok()) refusal = CheckRowsSync(push, rows_duplicate);

  if (!refusal.ok()) {
    for (size_t i = 0; i < n + push.rows.size(); ++i) {
      ready.emplace_back(completion, i == 0 ? refusal : absl::OkStatus());
    }
  } else {
    int64_t new_records = 0;
    for (size_t i = 0; i < n; ++i) {
      PreparedPush::Gradient& part = push.gradients[i];
      Block& block = *part.block;
      SyncSlot& sync = block.sync;
      if (duplicate[i]) {
        // Acknowledge again: wait for the step if it is still collecting.
        if (sync.started && push.step == sync.next_step &&
            sync.workers.contains(push.worker_id)) {
          sync.waiters.emplace_back(completion, i);
        } else {
          completion->Fill(i, part.variable->name(), block.range.offset,
                           block.values, block.state.step);
          ready.emplace_back(completion, absl::OkStatus());
        }
        continue;
      }
      new_records += MarkApplied(push, block) ? 1 : 0;
      if (!sync_.Add(push.worker_id, push.step, part.gradient, push.loss,
                     completion, i, block)) {
        continue;
      }
      // The step is complete: apply the mean once and answer every waiter.
      ApplyStep(*part.variable, block, ready);
    }
    new_records += ApplyRowsSync(push, rows_duplicate, completion, ready);
    memory_.AddAppliedRecords(new_records);
  }
  locked.Unlock();
  for (auto& [waiter, status] : ready) waiter->PartDone(std::move(status));
}

void VariableStore::ApplyStep(DenseVariable& variable, Block& block,
                              ReadyParts& ready) {
  SyncSlot& sync = block.sync;
  // A cut in progress holds this step: it stays complete, its pushes
  // waiting, until CompleteWaitingSteps after the hold ends.
  absl::ReaderMutexLock hold(sync_.hold_mu());
  if (!sync_.MayApply(sync.next_step)) return;
  const std::optional<double> loss = sync_.Average(block);
  auto entry = rules_.For(variable.name());
  absl::Status status =
      optimizer::CheckUpdate(entry->settings, block.state, loss);
  if (status.ok()) {
    std::atomic<bool> finite = true;  // chunks may come from helpers
    auto check = [&](size_t, std::span<const float> values) {
      if (!AllFinite(values)) {
        finite.store(false, std::memory_order_relaxed);
      }
    };
    const absl::Time start = absl::Now();
    optimizer::ApplyUpdate(entry->settings, block.state, block.values, sync.sum,
                           loss, check, &helpers_);
    counters_.RecordUpdate(absl::Now() - start);
    if (!finite.load()) MarkDiverged(variable, block);
  }
  sync_.Finish(variable, block, status, ready);
}

}  // namespace ps
