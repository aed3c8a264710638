#include "server/table.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/partition.h"
#include "common/row_init.h"
#include "common/rule_catalog.h"
#include "server/optimizer/sparse_adam.h"
#include "server/rule_table.h"

namespace ps {
namespace {

using storage::v1::BlockRecord;
using storage::v1::TableRows;
using storage::v1::TableState;

// The slot bit of array a (1..4); array 0 holds the values.
optimizer::StateSlots BitOf(int array) {
  return optimizer::kSlotBits[array - 1];
}

// A slot's array in a BlockOptimizerState, by array number (1..4).
std::vector<float>& SlotOf(optimizer::BlockOptimizerState& state, int array) {
  switch (array) {
    case 1:
      return state.momentum;
    case 2:
      return state.square_avg;
    case 3:
      return state.grad_avg;
    default:
      return state.max_square_avg;
  }
}

std::string* RecordSlot(TableRows& rows, int array) {
  switch (array) {
    case 1:
      return rows.mutable_momentum();
    case 2:
      return rows.mutable_square_avg();
    case 3:
      return rows.mutable_grad_avg();
    default:
      return rows.mutable_max_square_avg();
  }
}

const std::string& RecordSlot(const TableRows& rows, int array) {
  switch (array) {
    case 1:
      return rows.momentum();
    case 2:
      return rows.square_avg();
    case 3:
      return rows.grad_avg();
    default:
      return rows.max_square_avg();
  }
}

// How far ahead loops over a push's ids fetch what they will touch: the
// hash slots of later ids, and the rows of later updates. Ids hash and rows
// sit anywhere in memory, so each is a cache miss the hardware cannot
// foresee.
constexpr size_t kPrefetchIds = 8;
constexpr size_t kPrefetchRows = 4;

void PrefetchRow(const float* row, uint32_t dim) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (size_t offset = 0; offset < dim * sizeof(float); offset += 64) {
    __builtin_prefetch(bytes + offset, 1);
  }
}

}  // namespace

SparseTable::SparseTable(std::string name, uint32_t dim, v1::RowInit init,
                         v1::TablePolicy policy)
    : Entry(std::move(name)),
      dim_(dim),
      init_(std::move(init)),
      policy_(std::move(policy)),
      name_hash_(Fnv1a64(this->name())) {}

float* SparseTable::Row(int array, uint32_t row) {
  return chunks_[array][row / kRowsPerChunk].get() +
         static_cast<size_t>(row % kRowsPerChunk) * dim_;
}

const float* SparseTable::Row(int array, uint32_t row) const {
  return chunks_[array][row / kRowsPerChunk].get() +
         static_cast<size_t>(row % kRowsPerChunk) * dim_;
}

void SparseTable::AllocateArray(int array) {
  const size_t chunk_values = kRowsPerChunk * static_cast<size_t>(dim_);
  std::vector<std::unique_ptr<float[]>>& chunks = chunks_[array];
  chunks.resize(chunks_[0].size());
  for (auto& chunk : chunks) {
    if (chunk == nullptr) chunk = std::make_unique<float[]>(chunk_values);
  }
  held_ |= BitOf(array);
}

void SparseTable::Read(std::span<const uint64_t> ids,
                       std::span<float> out) const {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i + kPrefetchIds < ids.size()) index_.prefetch(ids[i + kPrefetchIds]);
    std::span<float> row = out.subspan(i * dim_, dim_);
    auto it = index_.find(ids[i]);
    if (it == index_.end()) {
      InitialRow(init_, name_hash_, ids[i], row);
    } else {
      std::memcpy(row.data(), Row(0, it->second), dim_ * sizeof(float));
    }
  }
}

bool SparseTable::AdmittedByPush(uint64_t id) const {
  if (MinCount() <= 1) return true;
  auto it = pending_.find(id);
  const uint64_t count = it == pending_.end() ? 0 : it->second;
  return count + 1 >= MinCount();
}

absl::StatusOr<SparseTable::Plan> SparseTable::PlanPush(
    std::span<const uint64_t> ids) const {
  Plan plan;
  plan.places.resize(ids.size());
  uint64_t carried_rows = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i + kPrefetchIds < ids.size()) index_.prefetch(ids[i + kPrefetchIds]);
    const uint64_t id = ids[i];
    auto it = index_.find(id);
    plan.places[i] = it == index_.end() ? kNone : it->second;
    if (it != index_.end()) {
      ++carried_rows;
      // Apply relinks it in the update order.
      __builtin_prefetch(&meta_[it->second], 1);
    } else if (AdmittedByPush(id)) {
      ++plan.created;
    } else if (!pending_.contains(id)) {
      ++plan.new_pending;
    }
  }
  const uint64_t max_rows = policy_.max_rows();
  if (max_rows != 0 && index_.size() + plan.created > max_rows) {
    plan.evicted = index_.size() + plan.created - max_rows;
    if (plan.evicted > index_.size() - carried_rows) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the push carries ", carried_rows + plan.created, " rows of table '",
          name(), "', more than its max_rows of ", max_rows,
          " on one shard; push fewer ids per call or raise max_rows"));
    }
  }
  return plan;
}

uint64_t SparseTable::Bytes() const {
  const uint64_t row_bytes =
      uint64_t{dim_} * sizeof(float) * (1 + std::popcount(held_)) +
      kRowBookkeepingBytes;
  return index_.size() * row_bytes + pending_.size() * kPendingBytes;
}

int64_t SparseTable::BytesDelta(
    const Plan& plan, const optimizer::OptimizerSettings& settings) const {
  const optimizer::StateSlots after = held_ | optimizer::SlotsOf(settings.rule);
  const uint64_t row_bytes =
      uint64_t{dim_} * sizeof(float) * (1 + std::popcount(after)) +
      kRowBookkeepingBytes;
  const uint64_t rows = index_.size() + plan.created - plan.evicted;
  // Ids admitted from pending leave it; new ones join it.
  const uint64_t pending = pending_.size() + plan.new_pending;
  const int64_t bytes_after =
      static_cast<int64_t>(rows * row_bytes + pending * kPendingBytes);
  return bytes_after - static_cast<int64_t>(Bytes());
}

void SparseTable::Unlink(uint32_t row) {
  RowMeta& meta = meta_[row];
  if (meta.prev != kNone) {
    meta_[meta.prev].next = meta.next;
  } else {
    oldest_ = meta.next;
  }
  if (meta.next != kNone) {
    meta_[meta.next].prev = meta.prev;
  } else {
    newest_ = meta.prev;
  }
  meta.prev = meta.next = kNone;
}

void SparseTable::LinkLast(uint32_t row) {
  RowMeta& meta = meta_[row];
  meta.prev = newest_;
  meta.next = kNone;
  if (newest_ != kNone) {
    meta_[newest_].next = row;
  } else {
    oldest_ = row;
  }
  newest_ = row;
}

uint32_t SparseTable::CreateRow(uint64_t id) {
  uint32_t row;
  if (!free_.empty()) {
    row = free_.back();
    free_.pop_back();
  } else {
    row = static_cast<uint32_t>(meta_.size());
    meta_.emplace_back();
    if (row % kRowsPerChunk == 0) {
      // Not zeroed here: every row is written when it is created, and only
      // rows that exist are read.
      const size_t chunk_values = kRowsPerChunk * static_cast<size_t>(dim_);
      for (int array = 0; array < kArrays; ++array) {
        if (array == 0 || (held_ & BitOf(array)) != 0) {
          chunks_[array].push_back(
              std::make_unique_for_overwrite<float[]>(chunk_values));
        } else {
          chunks_[array].emplace_back();
        }
      }
    }
  }
  InitialRow(init_, name_hash_, id, std::span<float>(Row(0, row), dim_));
  for (int array = 1; array < kArrays; ++array) {
    if ((held_ & BitOf(array)) != 0) {
      std::memset(Row(array, row), 0, dim_ * sizeof(float));
    }
  }
  meta_[row].id = id;
  index_[id] = row;
  LinkLast(row);
  ++rows_created_;
  return row;
}

void SparseTable::EvictRow(uint32_t row) {
  Unlink(row);
  index_.erase(meta_[row].id);
  free_.push_back(row);
  ++rows_evicted_;
}

void SparseTable::EvictOldest(uint64_t n) {
  if (n == 0) return;
  std::vector<uint32_t>& evicted = scratch_evicted_;
  evicted.clear();
  uint32_t row = oldest_;
  for (uint64_t k = 0; k < n; ++k) {
    const RowMeta& meta = meta_[row];
    index_.prefetch(meta.id);
    evicted.push_back(row);
    row = meta.next;
  }
  // The order now starts at `row`; the evicted rows' own links are not
  // read again until they are relinked as new rows.
  oldest_ = row;
  if (row == kNone) {
    newest_ = kNone;
  } else {
    meta_[row].prev = kNone;
  }
  for (uint32_t place : evicted) {
    index_.erase(meta_[place].id);
    meta_[place].prev = meta_[place].next = kNone;
  }
  // Reused oldest first (free_ is taken from its back).
  free_.insert(free_.end(), evicted.rbegin(), evicted.rend());
  rows_evicted_ += n;
}

const uint64_t SparseTable::kTableBytes = sizeof(SparseTable) + 512;

bool SparseTable::Apply(const optimizer::OptimizerSettings& settings,
                        const Plan& plan, std::span<const uint64_t> ids,
                        std::span<const float> grads,
                        std::optional<double> loss,
                        optimizer::HelperThreads* helpers,
                        std::span<float> after) {
  const optimizer::StateSlots needed = optimizer::SlotsOf(settings.rule);
  for (int array = 1; array < kArrays; ++array) {
    if ((needed & BitOf(array)) != 0 && (held_ & BitOf(array)) == 0) {
      AllocateArray(array);
    }
  }
  // Each id's row (kNone: none yet), as the plan found it. Rows the push
  // carries move to the newest end first, so that eviction takes only rows
  // it does not carry (and so leaves the places found as they are).
  // The relinks touch each row's neighbours in the order, which sit
  // anywhere: a row's links were fetched by the plan's lookups, and its
  // neighbours' are fetched a few rows before it is relinked.
  const std::vector<uint32_t>& found = plan.places;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i + kPrefetchRows < ids.size() && found[i + kPrefetchRows] != kNone) {
      const RowMeta& ahead = meta_[found[i + kPrefetchRows]];
      if (ahead.prev != kNone) __builtin_prefetch(&meta_[ahead.prev], 1);
      if (ahead.next != kNone) __builtin_prefetch(&meta_[ahead.next], 1);
    }
    if (found[i] != kNone) {
      Unlink(found[i]);
      LinkLast(found[i]);
    }
  }
  // The rows it updates, in push order; `sources[r]` is row r's gradient.
  std::vector<uint32_t>& rows = scratch_rows_;
  std::vector<size_t>& sources = scratch_sources_;
  rows.clear();
  sources.clear();
  bool in_order = true;  // sources[r] == r: the gradients need no gather
  // Room for the rows it creates, made at once, from the rows it does not
  // carry (which the plan checked suffice). A table restored into fewer
  // shards may hold more than max_rows: the plan counts those too.
  EvictOldest(plan.evicted);
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint64_t id = ids[i];
    uint32_t row = found[i];
    if (row == kNone) {
      if (!AdmittedByPush(id)) {
        ++pending_[id];
        if (!after.empty()) {
          InitialRow(init_, name_hash_, id, after.subspan(i * dim_, dim_));
        }
        continue;
      }
      pending_.erase(id);
      row = CreateRow(id);
    }
    in_order &= i == rows.size();
    rows.push_back(row);
    sources.push_back(i);
  }

  if (optimizer::SparseAdamStep::Applies(settings) && !rows.empty()) {
    // In place, row by row, fetching the rows ahead meanwhile.
    const optimizer::SparseAdamStep adam(settings, rule_state_.step);
    const uint64_t step = rule_state_.step + 1;
    bool finite = true;
    for (size_t r = 0; r < rows.size(); ++r) {
      if (r + kPrefetchRows < rows.size()) {
        const uint32_t ahead = rows[r + kPrefetchRows];
        PrefetchRow(Row(0, ahead), dim_);
        PrefetchRow(Row(kMomentumArray, ahead), dim_);
        PrefetchRow(Row(kSquareAvgArray, ahead), dim_);
      }
      finite &= adam.Row(Row(0, rows[r]), Row(kMomentumArray, rows[r]),
                         Row(kSquareAvgArray, rows[r]),
                         &grads[sources[r] * dim_], dim_);
      if (!after.empty()) {
        std::memcpy(&after[sources[r] * dim_], Row(0, rows[r]),
                    dim_ * sizeof(float));
      }
      meta_[rows[r]].last_step = step;
    }
    rule_state_.step = step;
    return Finish(finite);
  }

  // One kernel call over the gathered rows, in buffers kept from push to
  // push (no allocation or zero-fill once they have grown).
  const size_t n = rows.size() * static_cast<size_t>(dim_);
  const size_t row_bytes = dim_ * sizeof(float);
  std::vector<float>& values = scratch_values_;
  values.resize(n);
  std::span<const float> gradient = grads.first(in_order ? n : 0);
  if (!in_order) {
    scratch_gradient_.resize(n);
    gradient = scratch_gradient_;
  }
  optimizer::BlockOptimizerState& state = scratch_state_;
  state.step = rule_state_.step;
  state.eve = rule_state_.eve;
  for (int array = 1; array < kArrays; ++array) {
    std::vector<float>& slot = SlotOf(state, array);
    if ((needed & BitOf(array)) != 0) {
      slot.resize(n);
    } else {
      slot.clear();
    }
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    std::memcpy(&values[r * dim_], Row(0, rows[r]), row_bytes);
    if (!in_order) {
      std::memcpy(&scratch_gradient_[r * dim_], &grads[sources[r] * dim_],
                  row_bytes);
    }
    for (int array = 1; array < kArrays; ++array) {
      std::vector<float>& slot = SlotOf(state, array);
      if (!slot.empty()) {
        std::memcpy(&slot[r * dim_], Row(array, rows[r]), row_bytes);
      }
    }
  }
  if (rows.empty()) {
    ++state.step;  // the push counts as a step of the table
  } else {
    optimizer::ApplyUpdate(settings, state, values, gradient, loss,
                           std::nullopt, helpers);
  }
  bool finite = true;
  for (float value : values) finite &= std::isfinite(value);
  for (size_t r = 0; r < rows.size(); ++r) {
    std::memcpy(Row(0, rows[r]), &values[r * dim_], row_bytes);
    if (!after.empty()) {
      std::memcpy(&after[sources[r] * dim_], &values[r * dim_], row_bytes);
    }
    for (int array = 1; array < kArrays; ++array) {
      const std::vector<float>& slot = SlotOf(state, array);
      if (!slot.empty()) {
        std::memcpy(Row(array, rows[r]), &slot[r * dim_], row_bytes);
      }
    }
    meta_[rows[r]].last_step = state.step;
  }
  rule_state_.step = state.step;
  rule_state_.eve = state.eve;
  return Finish(finite);
}

bool SparseTable::Finish(bool finite) {
  // Rows idle for evict_after_steps go, oldest first.
  const uint64_t idle = policy_.evict_after_steps();
  if (idle != 0) {
    while (oldest_ != kNone &&
           meta_[oldest_].last_step + idle < rule_state_.step) {
      EvictRow(oldest_);
    }
  }
  if (!finite && !diverged_) {
    diverged_ = true;
    spdlog::error(
        "table '{}' has values that are not finite after step {}; it takes "
        "no more pushes (lower its learning rate with psctl and restore a "
        "checkpoint, see docs/optimizers.md)",
        name(), rule_state_.step);
  }
  return finite;
}

void SparseTable::AddToSync(std::span<const uint64_t> ids,
                            std::span<const float> grads) {
  for (size_t i = 0; i < ids.size(); ++i) {
    auto [it, inserted] = sync.index.try_emplace(ids[i], sync.ids.size());
    if (inserted) {
      sync.ids.push_back(ids[i]);
      sync.sum.resize(sync.sum.size() + dim_, 0.0f);
    }
    float* sum = &sync.sum[it->second * dim_];
    const float* grad = &grads[i * dim_];
    for (uint32_t j = 0; j < dim_; ++j) sum[j] += grad[j];
  }
}

void SparseTable::Describe(v1::VariableInfo* info) const {
  info->set_name(name());
  info->add_shape(dim_);
  FillInfo(info->mutable_table());
}

void SparseTable::FillInfo(v1::TableInfo* info) const {
  info->set_dim(dim_);
  *info->mutable_init() = init_;
  *info->mutable_policy() = policy_;
  absl::ReaderMutexLock lock(&mu);
  info->set_rows(index_.size());
  info->set_rows_created(rows_created_);
  info->set_rows_evicted(rows_evicted_);
  info->set_pending_ids(pending_.size());
  info->set_step(rule_state_.step);
  info->set_bytes(Bytes());
}

int64_t SparseTable::TakeBytesChange() {
  const uint64_t now = Bytes();
  const int64_t change =
      static_cast<int64_t>(now) - static_cast<int64_t>(charged_);
  charged_ = now;
  return change;
}

Entry::Progress SparseTable::GetProgress() const {
  absl::ReaderMutexLock lock(&mu);
  return Progress{rule_state_.step, diverged_ ? uint64_t{1} : 0};
}

EntryShape SparseTable::Shape() const {
  // Rows are charged as they come and go (the store's table bytes), not as
  // a fixed shape.
  return EntryShape();
}

optimizer::StateSlots SparseTable::HeldSlots() const {
  absl::ReaderMutexLock lock(&mu);
  return held_;
}

void SparseTable::CollectLocks(std::vector<absl::Mutex*>& locks) const {
  locks.push_back(&mu);
}

void SparseTable::AdaptState(const optimizer::RuleParams& from,
                             const optimizer::RuleParams& to,
                             bool reset_state) {
  const optimizer::StateSlots kept = KeptSlots(from, to, reset_state, held_);
  for (int array = 1; array < kArrays; ++array) {
    if ((held_ & BitOf(array)) != 0 && (kept & BitOf(array)) == 0) {
      chunks_[array].clear();
      chunks_[array].resize(chunks_[0].size());
      held_ &= static_cast<optimizer::StateSlots>(~BitOf(array));
    }
  }
  if (reset_state) {
    rule_state_ = optimizer::BlockOptimizerState();
  } else if (from.index() != to.index()) {
    rule_state_.eve = optimizer::EveFeedbackState();
  }
}

uint64_t SparseTable::NumRecords() const {
  absl::ReaderMutexLock lock(&mu);
  return std::max<uint64_t>(
      1, (index_.size() + kRowsPerChunk - 1) / kRowsPerChunk);
}

absl::Status SparseTable::Snapshot(
    absl::FunctionRef<absl::Status(const BlockRecord&)> write) const {
  absl::ReaderMutexLock lock(&mu);
  BlockRecord record;
  record.set_variable(name());
  TableState& state = *record.mutable_rows()->mutable_state();
  state.set_step(rule_state_.step);
  state.set_eve_d(rule_state_.eve.d);
  state.set_eve_f_hat(rule_state_.eve.f_hat);
  state.set_eve_started(rule_state_.eve.started);
  for (const auto& [worker, seqs] : applied) {
    storage::v1::AppliedSeqs* out = state.add_applied();
    out->set_worker_id(worker);
    out->set_epoch(seqs.epoch);
    out->set_highest(seqs.seqs.highest());
    out->set_window(seqs.seqs.window());
  }
  for (const auto& [id, count] : pending_) {
    state.add_pending_ids(id);
    state.add_pending_counts(count);
  }
  state.set_rows_created(rows_created_);
  state.set_rows_evicted(rows_evicted_);
  state.set_diverged(diverged_);
  state.set_sync_started(sync.started);
  state.set_sync_next_step(sync.next_step);
  for (const std::string& worker : sync.workers) state.add_sync_workers(worker);
  for (uint64_t id : sync.ids) state.add_sync_ids(id);
  state.mutable_sync_sum()->assign(
      reinterpret_cast<const char*>(sync.sum.data()),
      sync.sum.size() * sizeof(float));
  state.set_sync_loss_sum(sync.loss_sum);
  state.set_sync_losses(sync.losses);
  state.set_held_slots(held_);

  // Rows in the update order, oldest first, kRowsPerChunk per record.
  const size_t row_bytes = dim_ * sizeof(float);
  uint32_t row = oldest_;
  uint64_t index = 0;
  do {
    record.set_index(index++);
    TableRows& rows = *record.mutable_rows();
    for (size_t r = 0; r < kRowsPerChunk && row != kNone; ++r) {
      rows.add_ids(meta_[row].id);
      rows.add_last_steps(meta_[row].last_step);
      rows.mutable_values()->append(reinterpret_cast<const char*>(Row(0, row)),
                                    row_bytes);
      for (int array = 1; array < kArrays; ++array) {
        if ((held_ & BitOf(array)) != 0) {
          RecordSlot(rows, array)
              ->append(reinterpret_cast<const char*>(Row(array, row)),
                       row_bytes);
        }
      }
      row = meta_[row].next;
    }
    if (absl::Status written = write(record); !written.ok()) return written;
    record.mutable_rows()->Clear();
  } while (row != kNone);
  return absl::OkStatus();
}

absl::StatusOr<optimizer::StateSlots> SparseTable::Restore(
    const BlockRecord& record) {
  absl::MutexLock lock(&mu);
  const TableRows& rows = record.rows();
  if (rows.has_state()) {
    const TableState& state = rows.state();
    rule_state_.step = state.step();
    rule_state_.eve.d = state.eve_d();
    rule_state_.eve.f_hat = state.eve_f_hat();
    rule_state_.eve.started = state.eve_started();
    for (const storage::v1::AppliedSeqs& seqs : state.applied()) {
      Block::AppliedSeqs& out = applied[seqs.worker_id()];
      out.epoch = seqs.epoch();
      out.seqs = SeqWindow(seqs.highest(), seqs.window());
    }
    if (state.pending_ids_size() != state.pending_counts_size()) {
      return absl::DataLossError(absl::StrCat(
          "table '", name(), "' lists ", state.pending_ids_size(),
          " pending ids with ", state.pending_counts_size(), " counts"));
    }
    for (int i = 0; i < state.pending_ids_size(); ++i) {
      pending_[state.pending_ids(i)] = state.pending_counts(i);
    }
    rows_created_ = state.rows_created();
    rows_evicted_ = state.rows_evicted();
    diverged_ = state.diverged();
    sync.started = state.sync_started();
    sync.next_step = state.sync_next_step();
    for (const std::string& worker : state.sync_workers()) {
      sync.workers.insert(worker);
    }
    if (state.sync_sum().size() !=
        static_cast<size_t>(state.sync_ids_size()) * dim_ * sizeof(float)) {
      return absl::DataLossError(absl::StrCat(
          "table '", name(), "': the sync sum does not hold its rows"));
    }
    sync.ids.assign(state.sync_ids().begin(), state.sync_ids().end());
    sync.sum.resize(sync.ids.size() * dim_);
    if (!sync.sum.empty()) {  // memcpy wants non-null pointers even for 0
      std::memcpy(sync.sum.data(), state.sync_sum().data(),
                  state.sync_sum().size());
    }
    for (size_t i = 0; i < sync.ids.size(); ++i) sync.index[sync.ids[i]] = i;
    sync.loss_sum = state.sync_loss_sum();
    sync.losses = state.sync_losses();
    if (state.held_slots() > 0xF) {
      return absl::DataLossError(
          absl::StrCat("table '", name(), "' holds unknown slots"));
    }
    for (int array = 1; array < kArrays; ++array) {
      if ((state.held_slots() & BitOf(array)) != 0) AllocateArray(array);
    }
  }
  const size_t n = rows.ids_size();
  const size_t row_bytes = dim_ * sizeof(float);
  if (static_cast<size_t>(rows.last_steps_size()) != n ||
      rows.values().size() != n * row_bytes) {
    return absl::DataLossError(absl::StrCat(
        "a record of table '", name(), "' with ", n,
        " rows does not hold their steps and values of dim ", dim_));
  }
  for (int array = 1; array < kArrays; ++array) {
    const size_t size = RecordSlot(rows, array).size();
    const bool held = (held_ & BitOf(array)) != 0;
    if (size != (held ? n * row_bytes : 0)) {
      return absl::DataLossError(absl::StrCat(
          "a record of table '", name(), "' holds slot ", array, " with ", size,
          " bytes; expected ", held ? n * row_bytes : 0));
    }
  }
  for (size_t i = 0; i < n; ++i) {
    if (index_.contains(rows.ids(i))) {
      return absl::DataLossError(absl::StrCat("table '", name(), "' holds row ",
                                              rows.ids(i), " twice"));
    }
    const uint32_t row = CreateRow(rows.ids(i));
    --rows_created_;  // counted in the restored rows_created
    std::memcpy(Row(0, row), rows.values().data() + i * row_bytes, row_bytes);
    for (int array = 1; array < kArrays; ++array) {
      if ((held_ & BitOf(array)) != 0) {
        std::memcpy(Row(array, row),
                    RecordSlot(rows, array).data() + i * row_bytes, row_bytes);
      }
    }
    meta_[row].last_step = rows.last_steps(i);
  }
  return held_;
}

}  // namespace ps
