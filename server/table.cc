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

uint32_t SparseTable::StripeOf(uint64_t id) {
  // Another mix than row_shard's (which mixes id XOR the table's hash), and
  // its top bits.
  return static_cast<uint32_t>(Mix64(Mix64(id) ^ 0x9e3779b97f4a7c15ull) >>
                               (64 - kStripeBits));
}

float* SparseTable::Row(int array, uint32_t row) const {
  return chunks_[array][row / kRowsPerChunk].get() +
         static_cast<size_t>(row % kRowsPerChunk) * dim_;
}

void SparseTable::AwaitTurn(uint32_t stripe, uint64_t ticket) const {
  struct Waiting {
    const Stripe* stripe;
    uint64_t ticket;
    // Called by Await with the stripe's lock held.
    bool Turn() const ABSL_NO_THREAD_SAFETY_ANALYSIS {
      return stripe->served == ticket;
    }
  };
  Stripe& s = stripes_[stripe];
  const Waiting waiting{&s, ticket};
  absl::MutexLock lock(&s.mu);
  s.mu.Await(absl::Condition(&waiting, &Waiting::Turn));
}

void SparseTable::PassTurn(uint32_t stripe) const {
  Stripe& s = stripes_[stripe];
  absl::MutexLock lock(&s.mu);
  ++s.served;
}

void SparseTable::Drain() const {
  for (uint32_t stripe = 0; stripe < kStripes; ++stripe) {
    // Every ticket handed out has been served: the next one's turn.
    AwaitTurn(stripe, books_[stripe].issued);
  }
}

void SparseTable::AllocateArray(int array) {
  Drain();  // the list of chunks may move
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
  Drain();
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
  StripeBook& book = books_[StripeOf(id)];
  uint32_t row;
  if (!book.free.empty()) {
    row = book.free.back();
    book.free.pop_back();
  } else {
    if (book.next == book.end) {
      // A chunk of its own for the stripe. Not zeroed here: every row is
      // written when it is created, and only rows that exist are read.
      bool moves = false;
      for (const auto& chunks : chunks_) {
        moves |= chunks.size() == chunks.capacity();
      }
      if (moves) Drain();  // runs read the lists without `mu`
      const size_t chunk_values = kRowsPerChunk * static_cast<size_t>(dim_);
      book.next = static_cast<uint32_t>(chunks_[0].size() * kRowsPerChunk);
      book.end = book.next + kRowsPerChunk;
      for (int array = 0; array < kArrays; ++array) {
        if (array == 0 || (held_ & BitOf(array)) != 0) {
          chunks_[array].push_back(
              std::make_unique_for_overwrite<float[]>(chunk_values));
        } else {
          chunks_[array].emplace_back();
        }
      }
      meta_.resize(book.end);
    }
    row = book.next++;
  }
  meta_[row].id = id;
  index_[id] = row;
  LinkLast(row);
  ++rows_created_;
  return row;
}

void SparseTable::InitRow(uint32_t row, uint64_t id,
                          optimizer::StateSlots held) const {
  InitialRow(init_, name_hash_, id, std::span<float>(Row(0, row), dim_));
  for (int array = 1; array < kArrays; ++array) {
    if ((held & BitOf(array)) != 0) {
      std::memset(Row(array, row), 0, dim_ * sizeof(float));
    }
  }
}

void SparseTable::EvictRow(uint32_t row) {
  Unlink(row);
  index_.erase(meta_[row].id);
  books_[StripeOf(meta_[row].id)].free.push_back(row);
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
  // Reused oldest first (a free list is taken from its back).
  for (auto place = evicted.rbegin(); place != evicted.rend(); ++place) {
    RowMeta& meta = meta_[*place];
    index_.erase(meta.id);
    meta.prev = meta.next = kNone;
    books_[StripeOf(meta.id)].free.push_back(*place);
  }
  rows_evicted_ += n;
}

// The object, its name and the store's entries; and, for each stripe and
// array, the page that the newest rows of the stripe's own chunk may leave
// partly used (rows are charged by their bytes, not by pages).
const uint64_t SparseTable::kTableBytes =
    sizeof(SparseTable) + 512 + uint64_t{kStripes} * kArrays * 4096;

void SparseTable::Book(const optimizer::OptimizerSettings& settings,
                       const Plan& plan, std::span<const uint64_t> ids,
                       std::span<const float> grads, std::optional<double> loss,
                       std::span<float> after,
                       optimizer::HelperThreads* helpers, Update& update) {
  const optimizer::StateSlots needed = optimizer::SlotsOf(settings.rule);
  for (int array = 1; array < kArrays; ++array) {
    if ((needed & BitOf(array)) != 0 && (held_ & BitOf(array)) == 0) {
      AllocateArray(array);
    }
  }
  update.settings = &settings;
  update.ids = ids;
  update.grads = grads;
  update.after = after;
  update.loss = loss;
  update.step = rule_state_.step;
  update.eve = rule_state_.eve;
  update.held = held_;
  update.in_place = optimizer::SparseAdamStep::Applies(settings);
  // Eve's feedback and a clipped norm need every row of the push in one
  // kernel call; every other rule is elementwise given the step.
  const bool eve = std::holds_alternative<optimizer::EveParams>(settings.rule);
  update.whole = !update.in_place && (eve || settings.clip_norm.has_value());
  update.rows.clear();
  update.sources.clear();
  update.fresh.clear();
  update.pending.clear();
  update.turns.clear();
  const uint64_t step = rule_state_.step + 1;

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
      meta_[found[i]].last_step = step;
    }
  }
  // Room for the rows it creates, made at once, from the rows it does not
  // carry (which the plan checked suffice). A table restored into fewer
  // shards may hold more than max_rows: the plan counts those too.
  EvictOldest(plan.evicted);
  // The rows it updates by stripe (a counting sort), each with its
  // gradient's index.
  std::array<uint32_t, kStripes> counts{};
  std::vector<uint32_t>& rows = update.rows;
  std::vector<uint32_t>& sources = update.sources;
  std::vector<uint8_t>& fresh = update.fresh;
  static_assert(kStripes <= 256);
  std::vector<uint8_t> stripes;  // by row
  stripes.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint64_t id = ids[i];
    uint32_t row = found[i];
    if (row == kNone) {
      if (!AdmittedByPush(id)) {
        ++pending_[id];
        update.pending.push_back(static_cast<uint32_t>(i));
        continue;
      }
      pending_.erase(id);
      row = CreateRow(id);
      meta_[row].last_step = step;
    }
    rows.push_back(row);
    sources.push_back(static_cast<uint32_t>(i));
    fresh.push_back(found[i] == kNone);
    stripes.push_back(static_cast<uint8_t>(StripeOf(id)));
    ++counts[stripes.back()];
  }
  if (!update.whole) {
    // Grouped by stripe, so that each turn covers a range of them.
    std::array<uint32_t, kStripes> next{};
    for (uint32_t stripe = 1; stripe < kStripes; ++stripe) {
      next[stripe] = next[stripe - 1] + counts[stripe - 1];
    }
    std::vector<uint32_t> by_stripe(rows.size());
    std::vector<uint32_t> sources_by_stripe(rows.size());
    std::vector<uint8_t> fresh_by_stripe(rows.size());
    for (size_t r = 0; r < rows.size(); ++r) {
      const uint32_t at = next[stripes[r]]++;
      by_stripe[at] = rows[r];
      sources_by_stripe[at] = sources[r];
      fresh_by_stripe[at] = fresh[r];
    }
    rows = std::move(by_stripe);
    sources = std::move(sources_by_stripe);
    fresh = std::move(fresh_by_stripe);
  }  // else in push order: one kernel call holds every turn at once
  // A ticket in each stripe it has rows in, covering the stripe's range of
  // rows (unless the update is whole).
  size_t begin = 0;
  for (uint32_t stripe = 0; stripe < kStripes; ++stripe) {
    if (counts[stripe] == 0) continue;
    update.turns.push_back(
        {stripe, books_[stripe].issued++, begin, begin + counts[stripe]});
    begin += counts[stripe];
  }
  rule_state_.step = step;

  // Rows idle for evict_after_steps go, oldest first (the push's own rows
  // were just updated).
  if (const uint64_t idle = policy_.evict_after_steps(); idle != 0) {
    while (oldest_ != kNone && meta_[oldest_].last_step + idle < step) {
      EvictRow(oldest_);
    }
  }
  update.done = false;
  if (eve && !rows.empty()) {
    // Eve's feedback from this update is the next one's input.
    Run(update, helpers);
    rule_state_.eve = update.eve;
  }
}

bool SparseTable::Run(Update& update, optimizer::HelperThreads* helpers) {
  if (update.done) return true;
  update.done = true;
  if (!update.after.empty()) {
    for (uint32_t i : update.pending) {
      InitialRow(init_, name_hash_, update.ids[i],
                 update.after.subspan(i * size_t{dim_}, dim_));
    }
  }
  if (update.rows.empty()) return true;
  const bool finite =
      update.in_place ? RunInPlace(update) : RunGathered(update, helpers);
  if (!finite && !diverged_.exchange(true)) {
    spdlog::error(
        "table '{}' has values that are not finite after step {}; it takes "
        "no more pushes (lower its learning rate with psctl and restore a "
        "checkpoint, see docs/optimizers.md)",
        name(), update.step + 1);
  }
  return finite;
}

bool SparseTable::RunInPlace(Update& update) const {
  // In place, row by row, stripe by stripe in each one's turn, fetching the
  // rows ahead meanwhile.
  const optimizer::SparseAdamStep adam(*update.settings, update.step);
  const std::vector<uint32_t>& rows = update.rows;
  bool finite = true;
  for (const Update::Turn& turn : update.turns) {
    AwaitTurn(turn.stripe, turn.ticket);
    for (size_t r = turn.begin; r < turn.end; ++r) {
      if (r + kPrefetchRows < turn.end) {
        const uint32_t ahead = rows[r + kPrefetchRows];
        PrefetchRow(Row(0, ahead), dim_);
        PrefetchRow(Row(kMomentumArray, ahead), dim_);
        PrefetchRow(Row(kSquareAvgArray, ahead), dim_);
      }
      const size_t source = update.sources[r];
      if (update.fresh[r]) InitRow(rows[r], update.ids[source], update.held);
      finite &= adam.Row(Row(0, rows[r]), Row(kMomentumArray, rows[r]),
                         Row(kSquareAvgArray, rows[r]),
                         &update.grads[source * dim_], dim_);
      if (!update.after.empty()) {
        std::memcpy(&update.after[source * dim_], Row(0, rows[r]),
                    dim_ * sizeof(float));
      }
    }
    PassTurn(turn.stripe);
  }
  return finite;
}

bool SparseTable::RunGathered(Update& update,
                              optimizer::HelperThreads* helpers) const {
  if (!update.whole) {
    // Stripe by stripe, each in its turn, as SparseAdam.
    bool finite = true;
    for (const Update::Turn& turn : update.turns) {
      AwaitTurn(turn.stripe, turn.ticket);
      finite &= UpdateGathered(update, turn.begin, turn.end, helpers);
      PassTurn(turn.stripe);
    }
    return finite;
  }
  // One kernel call over every row of the push, holding all its turns.
  // Any order of waits is safe (a push only waits for earlier ones): the
  // last stripe first, since an earlier push passes its turns in stripe
  // order, so that once it is there the rest mostly are too and this thread
  // sleeps once rather than once per stripe.
  for (auto turn = update.turns.rbegin(); turn != update.turns.rend(); ++turn) {
    AwaitTurn(turn->stripe, turn->ticket);
  }
  const bool finite = UpdateGathered(update, 0, update.rows.size(), helpers);
  for (const Update::Turn& turn : update.turns) PassTurn(turn.stripe);
  return finite;
}

bool SparseTable::UpdateGathered(Update& update, size_t begin, size_t end,
                                 optimizer::HelperThreads* helpers) const {
  // Buffers kept from push to push on the thread (no allocation or
  // zero-fill once they have grown).
  thread_local std::vector<float> values;
  thread_local std::vector<float> gathered_gradient;
  thread_local optimizer::BlockOptimizerState state;
  const std::span<const uint32_t> rows =
      std::span<const uint32_t>(update.rows).subspan(begin, end - begin);
  const std::span<const uint32_t> sources =
      std::span<const uint32_t>(update.sources).subspan(begin, end - begin);
  const size_t n = rows.size() * static_cast<size_t>(dim_);
  const size_t row_bytes = dim_ * sizeof(float);
  values.resize(n);
  // sources[r] == begin + r: the gradients need no gather.
  bool in_order = true;
  for (size_t r = 0; r < rows.size() && in_order; ++r) {
    in_order = sources[r] == begin + r;
  }
  std::span<const float> gradient =
      in_order ? update.grads.subspan(begin * dim_, n) : std::span<float>();
  if (!in_order) {
    gathered_gradient.resize(n);
    gradient = gathered_gradient;
  }
  state.step = update.step;
  state.eve = update.eve;
  const optimizer::StateSlots needed =
      optimizer::SlotsOf(update.settings->rule);
  for (int array = 1; array < kArrays; ++array) {
    std::vector<float>& slot = SlotOf(state, array);
    if ((needed & BitOf(array)) != 0) {
      slot.resize(n);
    } else {
      slot.clear();
    }
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    if (update.fresh[begin + r]) {
      InitRow(rows[r], update.ids[sources[r]], update.held);
    }
    std::memcpy(&values[r * dim_], Row(0, rows[r]), row_bytes);
    if (!in_order) {
      std::memcpy(&gathered_gradient[r * dim_],
                  &update.grads[sources[r] * dim_], row_bytes);
    }
    for (int array = 1; array < kArrays; ++array) {
      std::vector<float>& slot = SlotOf(state, array);
      if (!slot.empty()) {
        std::memcpy(&slot[r * dim_], Row(array, rows[r]), row_bytes);
      }
    }
  }
  optimizer::ApplyUpdate(*update.settings, state, values, gradient, update.loss,
                         std::nullopt, helpers);
  if (update.whole) update.eve = state.eve;  // Eve's, for Book to keep
  bool finite = true;
  for (float value : values) finite &= std::isfinite(value);
  for (size_t r = 0; r < rows.size(); ++r) {
    std::memcpy(Row(0, rows[r]), &values[r * dim_], row_bytes);
    if (!update.after.empty()) {
      std::memcpy(&update.after[sources[r] * dim_], &values[r * dim_],
                  row_bytes);
    }
    for (int array = 1; array < kArrays; ++array) {
      const std::vector<float>& slot = SlotOf(state, array);
      if (!slot.empty()) {
        std::memcpy(Row(array, rows[r]), &slot[r * dim_], row_bytes);
      }
    }
  }
  return finite;
}

bool SparseTable::Apply(const optimizer::OptimizerSettings& settings,
                        const Plan& plan, std::span<const uint64_t> ids,
                        std::span<const float> grads,
                        std::optional<double> loss,
                        optimizer::HelperThreads* helpers,
                        std::span<float> after) {
  Update update;
  Book(settings, plan, ids, grads, loss, after, helpers, update);
  return Run(update, helpers);
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
  return Progress{rule_state_.step, diverged() ? uint64_t{1} : 0};
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
  Drain();  // slot lists may be replaced
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
  Drain();
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
  state.set_diverged(diverged());
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
  Drain();
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
    diverged_.store(state.diverged(), std::memory_order_release);
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
