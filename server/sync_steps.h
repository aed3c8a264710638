// Sync mode's steps on one shard (DESIGN.md, "Consistency"): each block
// collects the pushes of one step, averages them once a quorum of workers
// has pushed, and moves on. The step comes from the cluster, not from one
// push: a block that has not started takes pushes up to the shard's step,
// and a block moves past its step only when a quorum of workers pushed the
// next one, or is ahead of it (a shard restored from an older checkpoint
// catches up with its workers; one push far ahead wedges nothing).
//
// Thread safety: the block methods require the block's lock; step() and
// Raise may be called from any thread.
#ifndef PS_SERVER_SYNC_STEPS_H_
#define PS_SERVER_SYNC_STEPS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "server/dense_variable.h"
#include "server/push.h"

namespace ps {

// Parts whose answers are ready, to report once the block locks are
// released.
using ReadyParts =
    std::vector<std::pair<std::shared_ptr<PushCompletion>, absl::Status>>;

class SyncSteps {
 public:
  SyncSteps(uint32_t shard_index, uint32_t quorum, uint32_t num_workers)
      : shard_index_(shard_index), quorum_(quorum), num_workers_(num_workers) {}

  // The highest step any block of the shard collects.
  uint64_t step() const { return step_.load(); }
  // step = max(step, `step`).
  void Raise(uint64_t step);

  // The step `block` collects: its own, or, before it has started, the
  // shard's (it then takes any step up to that).
  uint64_t Current(const Block& block) const
      ABSL_SHARED_LOCKS_REQUIRED(block.mu);

  // Whether a push for `step` may join `block`'s step: the block's current
  // step, or any step up to the shard's for a block that has not started.
  bool Joins(uint64_t step, const Block& block) const
      ABSL_SHARED_LOCKS_REQUIRED(block.mu);

  // Records that `worker` pushed `step`, ahead of `block`'s step, and moves
  // the block on to the lowest step of the workers ahead when a quorum of
  // them are and everyone who pushed its step has moved on too; the pushes
  // waiting for the abandoned step are answered ABORTED through `ready`.
  // Returns whether the block now collects `step`.
  bool VoteAhead(const std::string& worker, uint64_t step,
                 const DenseVariable& variable, Block& block, ReadyParts& ready)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(block.mu);

  // Adds one worker's gradient and loss to the step `block` collects
  // (`step`, which starts the block if it has not started), and `waiter`
  // (a completion and its part) to those answered when the step is applied.
  // Returns true when that completed the quorum: then Average, apply, and
  // Finish.
  // REQUIRES: Joins(step, block); the worker has not pushed this step.
  bool Add(const std::string& worker, uint64_t step,
           std::span<const float> gradient, std::optional<double> loss,
           std::shared_ptr<PushCompletion> waiter, size_t part, Block& block)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(block.mu);

  // Turns the collected sum into the mean of the workers' gradients (in
  // block.sync.sum), and returns the mean of their losses, if any.
  std::optional<double> Average(Block& block)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(block.mu);

  // Ends the step: answers its waiters with `status` (filling each with the
  // block's values) through `ready`, and moves the block to the next step.
  void Finish(const DenseVariable& variable, Block& block,
              const absl::Status& status, ReadyParts& ready)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(block.mu);

 private:
  const uint32_t shard_index_;
  const uint32_t quorum_;
  const uint32_t num_workers_;
  std::atomic<uint64_t> step_ = 0;
};

}  // namespace ps

#endif  // PS_SERVER_SYNC_STEPS_H_
