// What a shard's entries may hold, against its memory limit: each entry's
// values and one array as long per optimizer slot its rules may have left
// allocated (and, in sync mode, the sum of a step's gradients), plus the
// bookkeeping around them: each part's record, each worker's exactly-once
// record in a part, and each worker's session.
//
// Charges change only while the store holds its structure lock (creations,
// optimizer changes, restores); they are read without it, so stats never
// wait for the creation of a large variable.
//
// Thread safety: every method may be called concurrently.
#ifndef PS_SERVER_MEMORY_BUDGET_H_
#define PS_SERVER_MEMORY_BUDGET_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/entry.h"
#include "server/optimizer/update.h"

namespace ps {

class MemoryBudget {
 public:
  // One worker's exactly-once record in one part, and one session.
  static constexpr uint64_t kAppliedRecordBytes = 96;
  static constexpr uint64_t kSessionBytes = 128;

  // `limit_bytes` 0 = none; `sync`: each value also has a sum of a step's
  // gradients; `bookkeeping_per_block`: what each part's record costs.
  MemoryBudget(uint64_t limit_bytes, bool sync, uint64_t bookkeeping_per_block)
      : limit_bytes_(limit_bytes),
        sync_(sync),
        bookkeeping_per_block_(bookkeeping_per_block) {}

  // What an entry of `shape` holds with `slots` allocated: its arrays, and
  // its parts' records.
  uint64_t ArrayBytes(EntryShape shape, optimizer::StateSlots slots) const;
  uint64_t BlockBytes(EntryShape shape) const {
    return shape.blocks * bookkeeping_per_block_;
  }

  // OK when `more` bytes fit under the limit besides what is charged; else
  // RESOURCE_EXHAUSTED saying that `what` needs them and how to make room.
  absl::Status Check(uint64_t more, absl::string_view what,
                     uint32_t shard_index) const;

  // Charges entry `name` of `shape` with `slots` (replacing any charge it
  // had), or drops its charge.
  void Charge(const std::string& name, EntryShape shape,
              optimizer::StateSlots slots) ABSL_LOCKS_EXCLUDED(mu_);
  // Drops entry `name`'s charge (it was deleted).
  void Drop(const std::string& name) ABSL_LOCKS_EXCLUDED(mu_);
  // The slots `name` is charged for.
  optimizer::StateSlots SlotsOf(const std::string& name) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // The shape `name` is charged for.
  EntryShape ShapeOf(const std::string& name) const ABSL_LOCKS_EXCLUDED(mu_);

  // Exactly-once records come and go with pushes (not under the structure
  // lock): counted, never refused.
  void AddAppliedRecords(int64_t records) {
    applied_records_.fetch_add(records, std::memory_order_relaxed);
  }

  // Sparse tables' rows come and go with pushes (not under the structure
  // lock). A push that would add `bytes` reserves them here, checked and
  // counted at once so that two pushes cannot both take the last room;
  // RESOURCE_EXHAUSTED as Check.
  absl::Status ReserveTableBytes(uint64_t bytes, absl::string_view what,
                                 uint32_t shard_index)
      ABSL_LOCKS_EXCLUDED(table_mu_);
  // Counts a change of tables' bytes that needs no check (rows evicted, a
  // reservation settled).
  void AddTableBytes(int64_t bytes) {
    state_bytes_.fetch_add(static_cast<uint64_t>(bytes),
                           std::memory_order_relaxed);
  }

  // The workers with a session, as WorkerSessions holds them.
  void SetSessions(uint64_t sessions) {
    sessions_.store(sessions, std::memory_order_relaxed);
  }

  // Arrays, and bookkeeping: what is counted against the limit.
  uint64_t StateBytes() const {
    return state_bytes_.load(std::memory_order_relaxed);
  }
  uint64_t BookkeepingBytes() const;
  uint64_t limit_bytes() const { return limit_bytes_; }

 private:
  struct Charged {
    EntryShape shape;
    optimizer::StateSlots slots = 0;
  };

  const uint64_t limit_bytes_;
  const bool sync_;
  const uint64_t bookkeeping_per_block_;
  mutable absl::Mutex mu_;
  absl::Mutex table_mu_;
  absl::flat_hash_map<std::string, Charged> charges_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> state_bytes_ = 0;
  std::atomic<uint64_t> block_bytes_ = 0;
  std::atomic<int64_t> applied_records_ = 0;
  std::atomic<uint64_t> sessions_ = 0;
};

}  // namespace ps

#endif  // PS_SERVER_MEMORY_BUDGET_H_
