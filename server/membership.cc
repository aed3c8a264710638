#include "server/membership.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <limits>

namespace ps {

Membership::Worker& Membership::JoinLocked(absl::string_view worker,
                                           absl::Time now, bool rejoin) {
  Worker& w = workers_[std::string(worker)];
  w.last_seen = now;
  if (w.member) return w;
  if (rejoin && (w.dropped || w.pushes > 0 || w.pushed)) {
    spdlog::info("worker '{}' rejoins the steps of shard {}",
                 std::string(worker), options_.shard_index);
  }
  // A new member starts at the slowest member's clock: it holds nobody
  // back, and runs no further ahead than the others may.
  uint64_t lowest = std::numeric_limits<uint64_t>::max();
  for (const auto& [id, other] : workers_) {
    if (other.member) lowest = std::min(lowest, other.clock);
  }
  if (lowest != std::numeric_limits<uint64_t>::max()) {
    w.clock = std::max(w.clock, lowest);
  }
  w.member = true;
  w.dropped = false;
  w.joined = now;
  ++members_;
  ++generation_;
  if (!first_join_.has_value()) first_join_ = now;
  if (members_ >= options_.expected) formed_ = true;
  return w;
}

void Membership::Join(absl::string_view worker, absl::Time now) {
  absl::MutexLock lock(&mu_);
  JoinLocked(worker, now, /*rejoin=*/true);
}

void Membership::Renew(absl::string_view worker, absl::Time now) {
  absl::MutexLock lock(&mu_);
  JoinLocked(worker, now, /*rejoin=*/true);
}

void Membership::RecordPush(absl::string_view worker, uint64_t step,
                            std::optional<double> loss, absl::Time now) {
  absl::MutexLock lock(&mu_);
  Worker& w = JoinLocked(worker, now, /*rejoin=*/true);
  const uint64_t clock =
      step == std::numeric_limits<uint64_t>::max() ? step : step + 1;
  w.clock = std::max(w.clock, clock);
  w.pushed = true;
  w.last_push = now;
  if (loss.has_value()) w.loss = loss;
  ++w.pushes;
}

bool Membership::Leave(absl::string_view worker) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker);
  if (it == workers_.end() || !it->second.member) return false;
  it->second.member = false;
  it->second.dropped = false;
  --members_;
  ++generation_;
  spdlog::info("worker '{}' left the steps of shard {} ({} members remain)",
               std::string(worker), options_.shard_index, members_);
  TrimFormer();
  return true;
}

std::vector<std::string> Membership::Expire(absl::Time now) {
  std::vector<std::string> dropped;
  absl::MutexLock lock(&mu_);
  for (auto& [id, w] : workers_) {
    // A call that waits (a sync step, a staleness bound) holds the lease.
    if (!w.member || w.waiting > 0 ||
        now - w.last_seen < options_.lease_timeout) {
      continue;
    }
    w.member = false;
    w.dropped = true;
    --members_;
    ++drops_;
    dropped.push_back(id);
    spdlog::warn(
        "worker '{}' dropped from the steps of shard {}: no push or "
        "heartbeat for {} (lease timeout {}); {} members remain",
        id, options_.shard_index, absl::FormatDuration(now - w.last_seen),
        absl::FormatDuration(options_.lease_timeout), members_);
  }
  if (!dropped.empty()) {
    ++generation_;
    TrimFormer();
  }
  return dropped;
}

void Membership::TrimFormer() {
  if (workers_.size() - members_ <= kMaxFormer) return;
  // Forget the former member seen longest ago.
  auto oldest = workers_.end();
  for (auto it = workers_.begin(); it != workers_.end(); ++it) {
    if (it->second.member || it->second.waiting > 0) continue;
    if (oldest == workers_.end() ||
        it->second.last_seen < oldest->second.last_seen) {
      oldest = it;
    }
  }
  if (oldest != workers_.end()) workers_.erase(oldest);
}

bool Membership::Forming(absl::Time now) const {
  return !formed_ && first_join_.has_value() &&
         now - *first_join_ < options_.lease_timeout;
}

bool Membership::Completes(const absl::flat_hash_set<std::string>& pushed,
                           absl::Time now) const {
  if (pushed.empty()) return false;
  absl::ReaderMutexLock lock(&mu_);
  if (Forming(now)) {
    const uint32_t need =
        options_.quorum > 0 ? options_.quorum : options_.expected;
    return pushed.size() >= need;
  }
  // Everyone who takes part now has pushed, or a quorum of them.
  size_t present = 0;
  for (const std::string& worker : pushed) {
    auto it = workers_.find(worker);
    if (it != workers_.end() && it->second.member) ++present;
  }
  if (present >= members_) return true;
  return options_.quorum > 0 && present >= options_.quorum;
}

uint64_t Membership::Needed(absl::Time now) const {
  absl::ReaderMutexLock lock(&mu_);
  uint64_t needed = members_;
  if (Forming(now)) {
    needed = options_.quorum > 0 ? options_.quorum : options_.expected;
  } else if (options_.quorum > 0) {
    needed = std::min<uint64_t>(options_.quorum, members_);
  }
  return std::max<uint64_t>(needed, 1);
}

std::optional<uint64_t> Membership::MinClock() const {
  absl::ReaderMutexLock lock(&mu_);
  std::optional<uint64_t> lowest;
  for (const auto& [id, w] : workers_) {
    if (!w.member) continue;
    if (!lowest.has_value() || w.clock < *lowest) lowest = w.clock;
  }
  return lowest;
}

void Membership::BeginWait(absl::string_view worker, absl::Time now) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker);
  if (it == workers_.end()) return;
  if (it->second.waiting++ == 0) it->second.waiting_since = now;
}

void Membership::EndWait(absl::string_view worker) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker);
  if (it == workers_.end() || it->second.waiting == 0) return;
  --it->second.waiting;
  // The lease runs again from the end of the wait.
  it->second.last_seen = std::max(it->second.last_seen, absl::Now());
}

uint64_t Membership::generation(absl::Time now) const {
  absl::ReaderMutexLock lock(&mu_);
  // The end of the forming phase counts as a change.
  const bool formed = formed_ || (first_join_.has_value() &&
                                  now - *first_join_ >= options_.lease_timeout);
  return 2 * generation_ + (formed ? 1 : 0);
}

size_t Membership::size() const {
  absl::ReaderMutexLock lock(&mu_);
  return members_;
}

bool Membership::IsMember(absl::string_view worker) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = workers_.find(worker);
  return it != workers_.end() && it->second.member;
}

uint64_t Membership::drops() const {
  absl::ReaderMutexLock lock(&mu_);
  return drops_;
}

void Membership::Fill(v1::Stats* stats, absl::Time now) const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<std::pair<const std::string*, const Worker*>> sorted;
  sorted.reserve(workers_.size());
  uint64_t fastest = 0;
  uint64_t waiting = 0;
  for (const auto& [id, w] : workers_) {
    sorted.emplace_back(&id, &w);
    if (w.member) fastest = std::max(fastest, w.clock);
    waiting += w.waiting;
  }
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
    if (a.second->member != b.second->member) return a.second->member;
    return *a.first < *b.first;
  });
  for (const auto& [id, w] : sorted) {
    v1::WorkerStats* out = stats->add_workers();
    out->set_worker_id(*id);
    out->set_state(w->member ? "member" : w->dropped ? "dropped" : "left");
    out->set_step(w->clock > 0 ? w->clock - 1 : 0);
    out->set_pushed(w->pushed);
    out->set_steps_behind(w->member ? static_cast<int64_t>(fastest - w->clock)
                                    : 0);
    out->set_last_push_age_s(w->last_push == absl::InfinitePast()
                                 ? -1
                                 : absl::ToDoubleSeconds(now - w->last_push));
    out->set_last_seen_age_s(absl::ToDoubleSeconds(now - w->last_seen));
    out->set_waiting(w->waiting);
    if (w->waiting > 0) {
      out->set_waiting_s(absl::ToDoubleSeconds(now - w->waiting_since));
    }
    if (w->loss.has_value()) out->set_loss(*w->loss);
    out->set_pushes(w->pushes);
  }
  stats->set_members(static_cast<uint32_t>(members_));
  stats->set_lease_drops(drops_);
  stats->set_waiting_pushes(waiting);
}

}  // namespace ps
