// A sparse table on one shard (DESIGN.md, "Sparse tables"): the rows of it
// this shard owns (row_shard), created on first touch and updated lazily.
//
// Storage suits the kernels: the rows' values and each optimizer slot live
// in slabs (chunks of kRowsPerChunk rows, row-major, never moved once
// allocated), a flat hash map takes an id to its row's place, and a push's
// rows are updated in place (SparseAdam) or gathered into one contiguous
// batch per stripe (per push for Eve and a clipped norm) for one kernel
// call, then scattered back. Rows are linked in the order of their last
// update, so the least recently updated row is found at once for eviction.
//
// The rule's step t is the table's step on this shard: one per push that
// carries rows of it (async) or per sync step. SGD and Adagrad equal
// torch.optim.SGD and Adagrad on sparse gradients; plain Adam (no AMSGrad,
// no decoupled decay) equals torch.optim.SparseAdam; the other rules run
// their dense update on the rows a push carries (docs/optimizers.md).
//
// Thread safety. A push is booked, then run:
// - `mu` guards the bookkeeping: the id index, the update order, the free
//   places, admission counts, the step, counters. Book holds it
//   exclusively: it finds, creates and evicts rows, advances the step and
//   takes the push's turns; it writes no row.
// - The rows' floats are guarded by locks striped by id: kStripes ticket
//   locks, an id's stripe chosen by a hash of the id, and each stripe's
//   places drawn from its own chunks, so a place (and its memory) belongs
//   to one stripe for good. Book takes a ticket in each stripe the push
//   has rows in; Run, which needs no hold of `mu`, waits for each ticket's
//   turn, updates that stripe's rows and passes the turn on. So pushes to
//   one table run at once on different stripes, and each row sees them in
//   the order they were booked.
// - Whatever reads or replaces rows under `mu` (Read, Snapshot, Restore,
//   AdaptState, a new slot array, a chunk list that must grow its buffer)
//   first waits for every booked run to finish (Drain); holding `mu`
//   keeps new ones from being booked.
#ifndef PS_SERVER_TABLE_H_
#define PS_SERVER_TABLE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/dense_variable.h"
#include "server/entry.h"
#include "server/optimizer/helper_threads.h"
#include "server/optimizer/update.h"

namespace ps {

class PushCompletion;

class SparseTable final : public Entry {
 public:
  // Rows per slab chunk: 1024 rows of dim 64 are 256 KiB per array.
  static constexpr size_t kRowsPerChunk = 1024;
  // The stripes of the rows' locks (a power of two).
  static constexpr uint32_t kStripeBits = 4;
  static constexpr uint32_t kStripes = 1u << kStripeBits;
  // What a row costs besides its arrays: its id and last step, its links in
  // the update order, and its slot in the hash map (with the map's spare
  // capacity).
  static constexpr uint64_t kRowBookkeepingBytes = 48;
  // What an id counted toward admission costs.
  static constexpr uint64_t kPendingBytes = 32;
  // What a table costs before its first row: the object (its empty maps
  // and arrays), its name, its entries in the store's maps, and a page per
  // stripe and array (each stripe's rows fill chunks of their own). Charged
  // when it is created, so that creating tables without rows cannot grow
  // a shard past its memory limit.
  static const uint64_t kTableBytes;
  // The widest row accepted.
  static constexpr uint32_t kMaxDim = 1 << 16;

  // REQUIRES: 0 < dim <= kMaxDim; ValidateRowInit(init) is OK.
  SparseTable(std::string name, uint32_t dim, v1::RowInit init,
              v1::TablePolicy policy);

  uint32_t dim() const { return dim_; }
  const v1::RowInit& init() const { return init_; }
  const v1::TablePolicy& policy() const { return policy_; }
  // Fnv1a64 of the name, as row_shard uses it.
  uint64_t name_hash() const { return name_hash_; }
  // The stripe of an id's row lock: the top bits of a hash of the id that
  // row_shard does not use (row_shard reduces another hash modulo the
  // shards, so one shard's ids still spread over every stripe).
  static uint32_t StripeOf(uint64_t id);

  mutable absl::Mutex mu;

  // ---- reads

  // Writes each id's row, or its initial row when it has none (creating
  // nothing), into `out` (ids.size() x dim), after every booked update.
  void Read(std::span<const uint64_t> ids, std::span<float> out) const
      ABSL_SHARED_LOCKS_REQUIRED(mu);

  // Waits until every booked update has run. Holding `mu` keeps new ones
  // from being booked, so the rows then stay as they are until it is
  // released.
  void Drain() const ABSL_SHARED_LOCKS_REQUIRED(mu);

  // ---- updates

  // What applying a push with `ids` would change: rows created (admitted)
  // and evicted to make room for them, ids newly counted toward admission;
  // and each id's row as found, for Book (which then looks nothing up).
  struct Plan {
    uint64_t created = 0;
    uint64_t evicted = 0;
    uint64_t new_pending = 0;
    std::vector<uint32_t> places;  // by id; kNoRow: none yet
  };
  static constexpr uint32_t kNoRow = UINT32_MAX;
  // RESOURCE_EXHAUSTED when the push would create more rows than max_rows
  // allows even after evicting every row it does not carry.
  absl::StatusOr<Plan> PlanPush(std::span<const uint64_t> ids) const
      ABSL_SHARED_LOCKS_REQUIRED(mu);
  // The bytes the table holds now, and what `plan` would add (or free).
  uint64_t Bytes() const ABSL_SHARED_LOCKS_REQUIRED(mu);
  int64_t BytesDelta(const Plan& plan,
                     const optimizer::OptimizerSettings& settings) const
      ABSL_SHARED_LOCKS_REQUIRED(mu);

  // Bytes() less what the store was last told of (the memory budget), and
  // records that it has now been told.
  int64_t TakeBytesChange() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // A push booked by Book for Run. Every later push to the table waits for
  // its turns, so each booked Update must be run, once.
  class Update {
   public:
    Update() = default;
    Update(Update&&) = default;
    Update& operator=(Update&&) = default;

   private:
    friend class SparseTable;
    // The push's rows of one stripe, rows[begin, end), and its ticket there.
    struct Turn {
      uint32_t stripe = 0;
      uint64_t ticket = 0;
      size_t begin = 0;
      size_t end = 0;
    };
    const optimizer::OptimizerSettings* settings = nullptr;
    std::span<const uint64_t> ids;
    std::span<const float> grads;
    std::span<float> after;
    std::optional<double> loss;
    uint64_t step = 0;  // the table's step before it
    // Eve's feedback before it; after it, once an Eve update has run.
    optimizer::EveFeedbackState eve;
    optimizer::StateSlots held = 0;  // zeroed in the rows it creates
    bool in_place = false;           // SparseAdam, row by row
    // One kernel call over all its rows, holding every turn (Eve, a
    // clipped norm); else one per stripe, in its turn.
    bool whole = false;
    bool done = true;
    std::vector<uint32_t> rows;     // the places it updates, turn by turn
    std::vector<uint32_t> sources;  // rows[r]'s index in ids (and grads)
    std::vector<uint8_t> fresh;     // rows[r] is new: initial values first
    std::vector<uint32_t> pending;  // ids counted, not admitted
    std::vector<Turn> turns;        // by stripe, ascending
  };

  // Books one update of the table with `grads` (ids.size() x dim) for
  // `ids`, as `plan` (PlanPush(ids)) found them: counts ids toward
  // admission, evicts the least recently updated rows the push does not
  // carry when it would pass max_rows, creates the admitted rows (their
  // places; Run writes their initial rows), advances the table's step,
  // evicts rows idle for evict_after_steps, and takes the push's turns.
  // Eve's update, which feeds the next one, runs here at once.
  // REQUIRES: `plan` is what PlanPush(ids) gave under this hold of `mu`;
  // CheckUpdate(settings, rule_state(), loss) is OK; `settings`, `ids`,
  // `grads` and `after` outlive Run; `after` is empty or ids.size() x dim.
  void Book(const optimizer::OptimizerSettings& settings, const Plan& plan,
            std::span<const uint64_t> ids, std::span<const float> grads,
            std::optional<double> loss, std::span<float> after,
            optimizer::HelperThreads* helpers, Update& update)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Runs a booked update, with or without a hold of `mu`: in each stripe,
  // in its turn, writes the initial rows of the rows created and runs the
  // rule over the push's rows; a non-empty `after` receives what Read(ids)
  // would give after the update, written as each row is updated (while it
  // is in cache). `after` may be the gradients themselves: each row's
  // gradient is read before that row of `after` is written. Returns false
  // when the update left values that are not finite (the table then takes
  // no more pushes).
  bool Run(Update& update, optimizer::HelperThreads* helpers);
  // Book, then Run.
  bool Apply(const optimizer::OptimizerSettings& settings, const Plan& plan,
             std::span<const uint64_t> ids, std::span<const float> grads,
             std::optional<double> loss, optimizer::HelperThreads* helpers,
             std::span<float> after = {}) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // The rule's state as CheckUpdate sees it (step and Eve's feedback).
  const optimizer::BlockOptimizerState& rule_state() const
      ABSL_SHARED_LOCKS_REQUIRED(mu) {
    return rule_state_;
  }
  uint64_t step() const ABSL_SHARED_LOCKS_REQUIRED(mu) {
    return rule_state_.step;
  }
  bool diverged() const { return diverged_.load(std::memory_order_acquire); }
  uint64_t rows() const ABSL_SHARED_LOCKS_REQUIRED(mu) { return index_.size(); }

  // Exactly-once records of the table, as a block keeps them.
  absl::flat_hash_map<std::string, Block::AppliedSeqs> applied
      ABSL_GUARDED_BY(mu);
  // The table was deleted (Store::DeleteVariable): pushes that found it
  // before are refused.
  bool deleted ABSL_GUARDED_BY(mu) = false;

  // Sync: the step being collected, as a block's SyncSlot, with the sum of
  // the rows pushed (rows a worker did not push count as zero).
  struct Sync {
    bool started = false;
    uint64_t next_step = 0;
    absl::flat_hash_map<uint64_t, size_t> index;  // id -> row in `sum`
    std::vector<uint64_t> ids;
    std::vector<float> sum;
    absl::flat_hash_set<std::string> workers;
    double loss_sum = 0;
    uint32_t losses = 0;
    // Pushes answered when the step is applied: completion, its row part,
    // and (PushPull) the ids to answer.
    struct Waiter {
      std::shared_ptr<PushCompletion> completion;
      size_t part = 0;
      std::vector<uint64_t> ids;
    };
    std::vector<Waiter> waiters;
  };
  Sync sync ABSL_GUARDED_BY(mu);
  // Adds a worker's rows to the step's sum.
  void AddToSync(std::span<const uint64_t> ids, std::span<const float> grads)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // ---- Entry
  void Describe(v1::VariableInfo* info) const override;
  Progress GetProgress() const override;
  EntryShape Shape() const override;
  optimizer::StateSlots HeldSlots() const override;
  void CollectLocks(std::vector<absl::Mutex*>& locks) const override;
  void AdaptState(const optimizer::RuleParams& from,
                  const optimizer::RuleParams& to,
                  bool reset_state) override ABSL_NO_THREAD_SAFETY_ANALYSIS;
  // Writes the table's state and rows in records of up to kRowsPerChunk
  // rows, holding `mu` shared throughout so that they are one cut of the
  // table: pulls go on, pushes to the table wait.
  absl::Status Snapshot(
      absl::FunctionRef<absl::Status(const storage::v1::BlockRecord&)> write)
      const override;
  absl::StatusOr<optimizer::StateSlots> Restore(
      const storage::v1::BlockRecord& record) override;
  uint64_t NumRecords() const override;

  // The table's part of TableInfo (rows, counters, bytes).
  void FillInfo(v1::TableInfo* info) const;

 private:
  static constexpr uint32_t kNone = kNoRow;

  struct RowMeta {
    uint64_t id = 0;
    uint64_t last_step = 0;
    uint32_t prev = kNone;  // in the update order, oldest first
    uint32_t next = kNone;
  };

  // A stripe's ticket lock: the turns served so far.
  struct Stripe {
    absl::Mutex mu;
    uint64_t served ABSL_GUARDED_BY(mu) = 0;
  };
  // A stripe's bookkeeping (under `mu`): the turns handed out, its places
  // of evicted rows, and the unused places of its newest chunk.
  struct StripeBook {
    uint64_t issued = 0;
    std::vector<uint32_t> free;
    uint32_t next = 0;
    uint32_t end = 0;
  };

  // The arrays: values, then the four slots in kSlotBits' order.
  static constexpr int kArrays = 5;
  static constexpr int kMomentumArray = 1;
  static constexpr int kSquareAvgArray = 2;

  // A row of an array. Unguarded: the caller holds the row's turn, or
  // holds `mu` after Drain.
  float* Row(int array, uint32_t row) const;
  // Allocates slot array `array` (zeros) for every chunk that has rows.
  void AllocateArray(int array) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // A place for a new row of `id` (reused or new), linked last; its floats
  // are written by InitRow.
  uint32_t CreateRow(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Writes row `row`'s initial values (of `id`) and zeros in the slots of
  // `held`.
  void InitRow(uint32_t row, uint64_t id, optimizer::StateSlots held) const;
  void EvictRow(uint32_t row) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Evicts the `n` least recently updated rows at once: they are the front
  // of the update order, so it is cut off in one piece (no relinks), and
  // their ids' hash slots are fetched while the order is walked.
  // REQUIRES: n <= rows().
  void EvictOldest(uint64_t n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  void Unlink(uint32_t row) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  void LinkLast(uint32_t row) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Whether `id` would have a row after one more push of it.
  bool AdmittedByPush(uint64_t id) const ABSL_SHARED_LOCKS_REQUIRED(mu);
  uint64_t MinCount() const {
    return policy_.min_count() <= 1 ? 1 : policy_.min_count();
  }
  // Waits for a turn; hands it to the next ticket.
  void AwaitTurn(uint32_t stripe, uint64_t ticket) const;
  void PassTurn(uint32_t stripe) const;
  // Run's two paths.
  bool RunInPlace(Update& update) const;
  bool RunGathered(Update& update, optimizer::HelperThreads* helpers) const;
  // Gathers rows [begin, end) of `update`, runs the rule's kernel once over
  // them, and scatters them back.
  bool UpdateGathered(Update& update, size_t begin, size_t end,
                      optimizer::HelperThreads* helpers) const;

  const uint32_t dim_;
  const v1::RowInit init_;
  const v1::TablePolicy policy_;
  const uint64_t name_hash_;

  mutable std::array<Stripe, kStripes> stripes_;
  std::array<StripeBook, kStripes> books_ ABSL_GUARDED_BY(mu);
  // chunks_[array][c]: rows [c * kRowsPerChunk, (c + 1) * kRowsPerChunk) of
  // that array; null for a slot the rows do not hold. The lists change
  // under `mu`, and their buffers move (or a list is replaced) only after
  // Drain: Run reads them without `mu`.
  std::vector<std::unique_ptr<float[]>> chunks_[kArrays];
  optimizer::StateSlots held_ ABSL_GUARDED_BY(mu) = 0;
  std::vector<RowMeta> meta_ ABSL_GUARDED_BY(mu);  // by row place
  absl::flat_hash_map<uint64_t, uint32_t> index_ ABSL_GUARDED_BY(mu);
  uint32_t oldest_ ABSL_GUARDED_BY(mu) = kNone;
  uint32_t newest_ ABSL_GUARDED_BY(mu) = kNone;
  absl::flat_hash_map<uint64_t, uint32_t> pending_ ABSL_GUARDED_BY(mu);
  optimizer::BlockOptimizerState rule_state_ ABSL_GUARDED_BY(mu);
  uint64_t rows_created_ ABSL_GUARDED_BY(mu) = 0;
  uint64_t rows_evicted_ ABSL_GUARDED_BY(mu) = 0;
  // Set by the run that left values that are not finite.
  std::atomic<bool> diverged_ = false;
  uint64_t charged_ ABSL_GUARDED_BY(mu) = 0;
  std::vector<uint32_t> scratch_evicted_ ABSL_GUARDED_BY(mu);
};

}  // namespace ps

#endif  // PS_SERVER_TABLE_H_
