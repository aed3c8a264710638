// Sync mode's steps on one shard (DESIGN.md, "Consistency"): each block
// collects the pushes of one step, averages them once every current member
// (or a quorum of them) has pushed (server/membership.h), and moves on. The
// step comes from the cluster, not from one push: a block that has not started
// takes pushes up to the shard's step, and a block moves past its step only
// when a quorum of workers pushed the next one, or is ahead of it (a shard
// restored from an older checkpoint catches up with its workers; one push far
// ahead wedges nothing).
//
// Thread safety: the block methods require the block's lock; step() and
// Raise may be called from any thread.
#ifndef PS_SERVER_SYNC_STEPS_H_
#define PS_SERVER_SYNC_STEPS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/dense_variable.h"
#include "server/membership.h"
#include "server/push.h"

namespace ps {

// Parts whose answers are ready, to report once the block locks are
// released.
using ReadyParts =
    std::vector<std::pair<std::shared_ptr<PushCompletion>, absl::Status>>;

class SyncSteps {
 public:
  // `quorum` 0: every member. REQUIRES: `members` outlives this.
  SyncSteps(uint32_t shard_index, uint32_t quorum, uint32_t num_workers,
            const Membership* members)
      : shard_index_(shard_index),
        quorum_(quorum),
        num_workers_(num_workers),
        members_(members) {}

  // The highest step any block of the shard collects.
  uint64_t step() const { return step_.load(); }
  // step = max(step, `step`).
  void Raise(uint64_t step);
  // step = `step`, down too (a roll-back to a checkpoint).
  void Reset(uint64_t step) { step_.store(step); }

  // ---- Holding steps for a consistent cut (sync checkpoints).
  //
  // While held from step H, no block applies a step >= H: a block whose
  // step completes stays complete, its pushes waiting, until the hold is
  // released or raised (then Store::CompleteWaitingSteps applies it). An
  // application takes hold_mu() shared around its check and its update, so
  // HoldNow sees every step applied before it and none after.

  // Holds from the step the shard collects now, until `until` at the
  // latest; returns that step. No step at or above it has been applied.
  uint64_t HoldNow(absl::Time until) ABSL_LOCKS_EXCLUDED(hold_mu_);
  // Holds from `step` (the steps below it may complete), until `until`.
  void HoldFrom(uint64_t step, absl::Time until) ABSL_LOCKS_EXCLUDED(hold_mu_);
  // Ends the hold.
  void Release() ABSL_LOCKS_EXCLUDED(hold_mu_);
  // Ends a hold whose time ran out by `now`; returns whether it did.
  bool ReleaseExpired(absl::Time now) ABSL_LOCKS_EXCLUDED(hold_mu_);
  // Taken shared by an application (see above).
  absl::Mutex* hold_mu() const ABSL_LOCK_RETURNED(hold_mu_) {
    return &hold_mu_;
  }
  // Whether `step` may be applied now.
  bool MayApply(uint64_t step) const ABSL_SHARED_LOCKS_REQUIRED(hold_mu_) {
    return step < hold_from_;
  }

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
  // Returns true when that completed the step (Membership::Completes):
  // then Average, apply, and Finish.
  // REQUIRES: Joins(step, block); the worker has not pushed this step.
  bool Add(const std::string& worker, uint64_t step,
           std::span<const float> gradient, std::optional<double> loss,
           std::shared_ptr<PushCompletion> waiter, size_t part, Block& block)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(block.mu);

  // Whether the step `block` collects is complete now: pushes are in, and
  // the members who have not pushed left or were dropped since.
  bool Complete(const Block& block) const ABSL_SHARED_LOCKS_REQUIRED(block.mu);

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
  const Membership* const members_;
  std::atomic<uint64_t> step_ = 0;
  mutable absl::Mutex hold_mu_;
  uint64_t hold_from_ ABSL_GUARDED_BY(hold_mu_) = UINT64_MAX;
  absl::Time hold_until_ ABSL_GUARDED_BY(hold_mu_) = absl::InfiniteFuture();
};

// Bounded staleness (ssp): calls of a worker about to compute step s wait
// until the slowest member's clock (Membership::MinClock) is at least
// s - staleness, or until their deadline.
//
// Thread safety: every method may be called concurrently; callbacks run
// with no lock held.
class StalenessGate {
 public:
  using Done = std::function<void(absl::Status)>;

  explicit StalenessGate(uint32_t staleness) : staleness_(staleness) {}

  uint32_t staleness() const { return staleness_; }

  // The clock the slowest member must reach before a worker may compute
  // `step`.
  uint64_t Needed(uint64_t step) const {
    return step > staleness_ ? step - staleness_ : 0;
  }

  // Runs `done` (OK) now when `min_clock` allows `step`; otherwise once a
  // Release allows it, or with DEADLINE_EXCEEDED once Expire passes
  // `deadline`, or with UNAVAILABLE at Close.
  void Await(std::string worker, uint64_t step,
             std::optional<uint64_t> min_clock, absl::Time deadline, Done done)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Answers the waiters that `min_clock` (nullopt: no members) allows.
  void Release(std::optional<uint64_t> min_clock) ABSL_LOCKS_EXCLUDED(mu_);
  // Answers the waiters whose deadline passed by `now`.
  void Expire(absl::Time now, std::optional<uint64_t> min_clock)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Answers every waiter (UNAVAILABLE): the shard shuts down.
  void Close() ABSL_LOCKS_EXCLUDED(mu_);

  size_t waiting() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Waiter {
    std::string worker;
    uint64_t step = 0;
    absl::Time deadline;
    Done done;
  };

  const uint32_t staleness_;
  mutable absl::Mutex mu_;
  std::vector<Waiter> waiters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ps

#endif  // PS_SERVER_SYNC_STEPS_H_
