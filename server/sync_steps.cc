#include "server/sync_steps.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <climits>

#include "absl/strings/str_cat.h"

namespace ps {

void SyncSteps::Raise(uint64_t step) {
  uint64_t seen = step_.load();
  while (seen < step && !step_.compare_exchange_weak(seen, step)) {
  }
}

uint64_t SyncSteps::HoldNow(absl::Time until) {
  absl::MutexLock lock(&hold_mu_);
  hold_from_ = step_.load();
  hold_until_ = until;
  return hold_from_;
}

void SyncSteps::HoldFrom(uint64_t step, absl::Time until) {
  absl::MutexLock lock(&hold_mu_);
  hold_from_ = step;
  hold_until_ = until;
}

void SyncSteps::Release() {
  absl::MutexLock lock(&hold_mu_);
  hold_from_ = UINT64_MAX;
  hold_until_ = absl::InfiniteFuture();
}

bool SyncSteps::ReleaseExpired(absl::Time now) {
  absl::MutexLock lock(&hold_mu_);
  if (hold_from_ == UINT64_MAX || hold_until_ > now) return false;
  hold_from_ = UINT64_MAX;
  hold_until_ = absl::InfiniteFuture();
  return true;
}

uint64_t SyncSteps::Current(const Block& block) const {
  return block.sync.started ? block.sync.next_step : step_.load();
}

bool SyncSteps::Joins(uint64_t step, const Block& block) const {
  if (!block.sync.started) return step <= step_.load();
  return step == block.sync.next_step;
}

bool SyncSteps::VoteAhead(const std::string& worker, uint64_t step,
                          const DenseVariable& variable, Block& block,
                          ReadyParts& ready) {
  SyncSlot& sync = block.sync;
  // Bounded: a worker has one vote, and the votes of workers that went away
  // are dropped when the table fills.
  if (sync.ahead.size() >= 4 * std::max<uint64_t>(num_workers_, 1) &&
      !sync.ahead.contains(worker)) {
    sync.ahead.clear();
  }
  sync.ahead[worker] = step;
  const uint64_t current = Current(block);
  // The step being collected is abandoned only when everyone who pushed it
  // has moved on, and a quorum of workers is ahead.
  for (const std::string& pushed : sync.workers) {
    auto it = sync.ahead.find(pushed);
    if (it == sync.ahead.end() || it->second <= current) return false;
  }
  uint32_t voters = 0;
  uint64_t target = UINT64_MAX;
  for (const auto& [voter, voted] : sync.ahead) {
    if (voted <= current) continue;
    ++voters;
    target = std::min(target, voted);
  }
  if (voters < members_->Needed(absl::Now())) return false;
  spdlog::warn(
      "'{}' block {} on shard {} moves from step {} to step {}, where {} "
      "workers are: the steps between are not applied to it (it was "
      "restored from an older checkpoint, or its workers skipped them)",
      variable.name(), block.index, shard_index_, current, target, voters);
  for (auto& [waiter, index] : sync.waiters) {
    ready.emplace_back(
        std::move(waiter),
        absl::AbortedError(absl::StrCat(
            "step ", current, " of '", variable.name(), "' block ", block.index,
            " was abandoned: its workers moved on to step ", target)));
  }
  sync.waiters.clear();
  sync.started = true;
  sync.next_step = target;
  sync.sum.clear();
  sync.workers.clear();
  sync.loss_sum = 0;
  sync.losses = 0;
  sync.ahead.clear();
  Raise(target);
  return step == target;
}

bool SyncSteps::Add(const std::string& worker, uint64_t step,
                    std::span<const float> gradient, std::optional<double> loss,
                    std::shared_ptr<PushCompletion> waiter, size_t part,
                    Block& block) {
  SyncSlot& sync = block.sync;
  if (!sync.started) {
    sync.started = true;
    sync.next_step = step;
  }
  if (sync.sum.empty()) {
    sync.sum.assign(gradient.begin(), gradient.end());
  } else {
    for (size_t j = 0; j < sync.sum.size(); ++j) sync.sum[j] += gradient[j];
  }
  sync.workers.insert(worker);
  if (loss.has_value()) {
    sync.loss_sum += *loss;
    ++sync.losses;
  }
  sync.waiters.emplace_back(std::move(waiter), part);
  return members_->Completes(sync.workers, absl::Now());
}

bool SyncSteps::Complete(const Block& block) const {
  return block.sync.started && !block.sync.workers.empty() &&
         members_->Completes(block.sync.workers, absl::Now());
}

std::optional<double> SyncSteps::Average(Block& block) {
  SyncSlot& sync = block.sync;
  const float count = static_cast<float>(sync.workers.size());
  for (float& g : sync.sum) g /= count;
  if (sync.losses == 0) return std::nullopt;
  return sync.loss_sum / sync.losses;
}

void SyncSteps::Finish(const DenseVariable& variable, Block& block,
                       const absl::Status& status, ReadyParts& ready) {
  SyncSlot& sync = block.sync;
  for (auto& [waiter, index] : sync.waiters) {
    waiter->Fill(index, variable.name(), block.range.offset, block.values,
                 block.state.step);
    ready.emplace_back(std::move(waiter), status);
  }
  sync.waiters.clear();
  sync.sum.clear();
  sync.workers.clear();
  sync.loss_sum = 0;
  sync.losses = 0;
  ++sync.next_step;
  Raise(sync.next_step);
}

void StalenessGate::Await(std::string worker, uint64_t step,
                          std::optional<uint64_t> min_clock,
                          absl::Time deadline, Done done) {
  if (!min_clock.has_value() || *min_clock >= Needed(step)) {
    done(absl::OkStatus());
    return;
  }
  absl::MutexLock lock(&mu_);
  waiters_.push_back({std::move(worker), step, deadline, std::move(done)});
}

void StalenessGate::Release(std::optional<uint64_t> min_clock) {
  Expire(absl::InfinitePast(), min_clock);
}

void StalenessGate::Expire(absl::Time now, std::optional<uint64_t> min_clock) {
  std::vector<std::pair<Done, absl::Status>> ready;
  {
    absl::MutexLock lock(&mu_);
    auto keep = waiters_.begin();
    for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
      if (!min_clock.has_value() || *min_clock >= Needed(it->step)) {
        ready.emplace_back(std::move(it->done), absl::OkStatus());
      } else if (it->deadline <= now) {
        ready.emplace_back(
            std::move(it->done),
            absl::DeadlineExceededError(absl::StrCat(
                "worker '", it->worker, "' may not start step ", it->step,
                " before the slowest member finished step ",
                static_cast<int64_t>(Needed(it->step)) - 1, " (staleness ",
                staleness_, "); the slowest member is at step ",
                static_cast<int64_t>(*min_clock) - 1,
                " (psctl stats shows who)")));
      } else {
        if (keep != it) *keep = std::move(*it);
        ++keep;
      }
    }
    waiters_.erase(keep, waiters_.end());
  }
  for (auto& [done, status] : ready) done(std::move(status));
}

void StalenessGate::Close() {
  std::vector<Waiter> waiters;
  {
    absl::MutexLock lock(&mu_);
    waiters.swap(waiters_);
  }
  for (Waiter& waiter : waiters) {
    waiter.done(absl::UnavailableError("the shard is shutting down"));
  }
}

size_t StalenessGate::waiting() const {
  absl::MutexLock lock(&mu_);
  return waiters_.size();
}

}  // namespace ps
