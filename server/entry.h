// What a shard holds under one name: the seam between the store and the
// kinds of things it holds. A dense variable (server/dense_variable.h) is
// one kind. The store treats every kind alike through this interface where
// they share behaviour: listing, progress, memory, optimizer changes and
// checkpoints; pushes and pulls go to each kind's own path.
//
// Thread safety: every method may be called concurrently, except where a
// REQUIRES line asks for the entry's locks.
#ifndef PS_SERVER_ENTRY_H_
#define PS_SERVER_ENTRY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/optimizer_settings.h"
#include "proto/ps/storage/v1/checkpoint.pb.h"
#include "proto/ps/v1/ps.pb.h"
#include "server/optimizer/update.h"

namespace ps {

// What an entry holds on this shard, for the memory budget: values (each
// with one float per optimizer slot its rules keep) and blocks (each with
// its bookkeeping, server/memory_budget.h).
struct EntryShape {
  uint64_t values = 0;
  uint64_t blocks = 0;
};

class Entry {
 public:
  explicit Entry(std::string name) : name_(std::move(name)) {}
  virtual ~Entry() = default;
  Entry(const Entry&) = delete;
  Entry& operator=(const Entry&) = delete;

  const std::string& name() const { return name_; }

  // Its shape and this shard's parts of it, with their versions
  // (ListVariables); the optimizer fields are the store's to fill.
  virtual void Describe(v1::VariableInfo* info) const = 0;

  // The highest step among this shard's parts, and how many of them an
  // update left with values that are not finite.
  struct Progress {
    uint64_t step = 0;
    uint64_t diverged = 0;
  };
  virtual Progress GetProgress() const = 0;

  virtual EntryShape Shape() const = 0;

  // The optimizer slots its parts hold now.
  virtual optimizer::StateSlots HeldSlots() const = 0;

  // An optimizer change lands between two updates of every part: the store
  // takes every lock this appends (with those of the other entries it
  // changes, in address order), then calls AdaptState.
  virtual void CollectLocks(std::vector<absl::Mutex*>& locks) const = 0;
  // Adapts every part's optimizer state from rule `from` to rule `to`
  // (server/rule_table.h, AdaptState).
  // REQUIRES: every lock CollectLocks appended is held.
  virtual void AdaptState(const optimizer::RuleParams& from,
                          const optimizer::RuleParams& to,
                          bool reset_state) = 0;

  // Calls `write` with a record of each part, copied under its lock;
  // `write` runs with no lock held. Stops at the first error.
  virtual absl::Status Snapshot(
      absl::FunctionRef<absl::Status(const storage::v1::BlockRecord&)> write)
      const = 0;
  // Restores one part from its record; returns the optimizer slots it
  // holds. DATA_LOSS when the record does not fit the entry (another size,
  // a part this shard does not hold).
  virtual absl::StatusOr<optimizer::StateSlots> Restore(
      const storage::v1::BlockRecord& record) = 0;
  // The records Snapshot writes (one per block).
  virtual uint64_t NumRecords() const = 0;

 private:
  const std::string name_;
};

}  // namespace ps

#endif  // PS_SERVER_ENTRY_H_
