// A dense variable on one shard: its shape, and this shard's blocks of it
// (DESIGN.md, "Partitioning"). Each block holds its values, optimizer
// state, step being collected (sync) and exactly-once records, under its
// own lock.
//
// Thread safety: a block's fields are guarded by its lock; the block map is
// fixed at creation, so a DenseVariable's methods may be called
// concurrently.
#ifndef PS_SERVER_DENSE_VARIABLE_H_
#define PS_SERVER_DENSE_VARIABLE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/partition.h"
#include "common/seq_window.h"
#include "server/entry.h"
#include "server/optimizer/update.h"

namespace ps {

class PushCompletion;

// Aggregation of one block's pushes for the step being collected (sync,
// server/sync_steps.h).
struct SyncSlot {
  bool started = false;    // false until the block takes its first step
  uint64_t next_step = 0;  // the step being collected
  std::vector<float> sum;  // of the gradients pushed for next_step
  absl::flat_hash_set<std::string> workers;  // who pushed next_step
  double loss_sum = 0;
  uint32_t losses = 0;
  // Pushes waiting for next_step to be applied: (completion, part index).
  std::vector<std::pair<std::shared_ptr<PushCompletion>, size_t>> waiters;
  // Workers that pushed a step ahead of next_step, with that step: when a
  // quorum of them are ahead and nobody pushed next_step, the block moves
  // on to the lowest of their steps (a shard restarted from an older
  // checkpoint catches up with its workers).
  absl::flat_hash_map<std::string, uint64_t> ahead;
};

// One block of one variable on this shard.
struct Block {
  Block(uint64_t index, FlatRange range) : index(index), range(range) {}

  const uint64_t index;   // k: the block's position in the variable
  const FlatRange range;  // its flat values in the variable

  mutable absl::Mutex mu;
  std::vector<float> values ABSL_GUARDED_BY(mu);
  optimizer::BlockOptimizerState state ABSL_GUARDED_BY(mu);
  SyncSlot sync ABSL_GUARDED_BY(mu);
  // The exactly-once table: per worker, its session epoch and the push
  // seqs of it applied to this block. Kept per block so that it always
  // matches the block's values, also in a checkpoint.
  struct AppliedSeqs {
    uint64_t epoch = 0;
    SeqWindow seqs;
  };
  absl::flat_hash_map<std::string, AppliedSeqs> applied ABSL_GUARDED_BY(mu);
  // An update left values that are not finite (at step diverged_at): the
  // block takes no more pushes (see docs/optimizers.md).
  bool diverged ABSL_GUARDED_BY(mu) = false;
  uint64_t diverged_at ABSL_GUARDED_BY(mu) = 0;
  // The variable was deleted (Store::DeleteVariable): pushes that found the
  // block before are refused.
  bool deleted ABSL_GUARDED_BY(mu) = false;
};

class DenseVariable final : public Entry {
 public:
  // What one block costs besides its arrays: the Block, its slot in the
  // block map, and malloc's headers of it and its arrays.
  static const uint64_t kBookkeepingBytesPerBlock;

  // With this shard's blocks of it (`blocks`, their indexes), each of zeros.
  // Throws std::bad_alloc when memory runs out.
  DenseVariable(std::string name, std::vector<uint64_t> shape, uint64_t size,
                const PartitionPlan& plan, const std::vector<uint64_t>& blocks);

  const std::vector<uint64_t>& shape() const { return shape_; }
  uint64_t size() const { return size_; }

  // The block holding flat values [offset, offset + length), after checking
  // the range against the variable and this shard's ownership:
  // INVALID_ARGUMENT for an empty range, one outside the variable, one that
  // crosses a block's end or (with `whole_block`) is not a whole block;
  // FAILED_PRECONDITION for a block of another shard, naming its owner.
  // Checks run in that order: a range outside the variable is
  // INVALID_ARGUMENT on every shard.
  absl::StatusOr<Block*> CheckRange(const PartitionPlan& plan,
                                    uint32_t shard_index, uint64_t offset,
                                    uint64_t length, bool whole_block) const;

  // Block k, or null when this shard does not hold it.
  Block* block(uint64_t k) const;
  // This shard's blocks, by index.
  std::vector<Block*> SortedBlocks() const;

  // Entry.
  void Describe(v1::VariableInfo* info) const override;
  Progress GetProgress() const override;
  EntryShape Shape() const override;
  optimizer::StateSlots HeldSlots() const override;
  void CollectLocks(std::vector<absl::Mutex*>& locks) const override;
  void AdaptState(const optimizer::RuleParams& from,
                  const optimizer::RuleParams& to,
                  bool reset_state) override ABSL_NO_THREAD_SAFETY_ANALYSIS;
  absl::Status Snapshot(
      absl::FunctionRef<absl::Status(const storage::v1::BlockRecord&)> write)
      const override;
  absl::StatusOr<optimizer::StateSlots> Restore(
      const storage::v1::BlockRecord& record) override;
  uint64_t NumRecords() const override { return blocks_.size(); }

 private:
  const std::vector<uint64_t> shape_;
  const uint64_t size_;
  // Fixed at creation: blocks are never added or removed.
  absl::flat_hash_map<uint64_t, std::unique_ptr<Block>> blocks_;
};

// Records that an update left values that are not finite in the block, and
// says so once in the log.
void MarkDiverged(const DenseVariable& variable, Block& block)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(block.mu);

// NOT_FOUND when the variable was deleted; FAILED_PRECONDITION when the
// block's values are no longer finite.
absl::Status CheckUpdatable(const DenseVariable& variable, const Block& block)
    ABSL_SHARED_LOCKS_REQUIRED(block.mu);

}  // namespace ps

#endif  // PS_SERVER_DENSE_VARIABLE_H_
