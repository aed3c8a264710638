// The workers that take part in the steps of one shard (DESIGN.md,
// "Consistency"): who is a member now, since when, and how far each got.
//
// A worker becomes a member when it opens its session on the shard, and
// again (a rejoin) whenever a push or heartbeat of a non-member arrives. It
// stays one while it renews its lease (any push or heartbeat does), and stops
// being one when it leaves (Leave: "finished") or when its lease runs out
// (Expire); a call of it that waits (BeginWait to EndWait: a sync push, an
// ssp pull) holds the lease, and a client that dies cancels its calls. Each
// shard keeps its own view from the calls it receives; clients open sessions,
// heartbeat and leave on every shard, so the views agree up to the lease
// timeout.
//
// How many pushes complete a sync step (Completes):
//   - while the job is forming (fewer than `expected` members have joined
//     and less than one lease timeout has passed since the first did), the
//     quorum of `expected` (quorum, or expected when quorum is 0): the
//     first steps wait for the workers that are on their way;
//   - afterwards, every current member, or min(quorum, members) of them
//     when a quorum is set. Pushes of workers that left after pushing still
//     count towards the step's mean.
//
// For bounded staleness, a member's clock is its highest pushed step + 1
// (a new member starts at the lowest clock of the others, so that it holds
// nobody back): MinClock is the slowest member's.
//
// Records of workers that left or were dropped are kept, for stats, up to
// kMaxFormer of them.
//
// Thread safety: every method may be called concurrently.
#ifndef PS_SERVER_MEMBERSHIP_H_
#define PS_SERVER_MEMBERSHIP_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/ps/v1/ps.pb.h"

namespace ps {

struct MembershipOptions {
  // Names the shard in log lines.
  uint32_t shard_index = 0;
  // The job's size at the start (--num_workers); 0 = no forming phase.
  uint32_t expected = 0;
  // Pushes that complete a sync step (0 = every member).
  uint32_t quorum = 0;
  // A member that neither pushes nor heartbeats for this long is dropped.
  // Shorter frees the others sooner from a dead worker; too short drops
  // live workers whose steps are slow (they rejoin with their next call,
  // having missed the steps in between).
  absl::Duration lease_timeout = absl::Seconds(10);
};

class Membership {
 public:
  // Former members kept for stats.
  static constexpr size_t kMaxFormer = 1024;

  explicit Membership(const MembershipOptions& options) : options_(options) {}

  const MembershipOptions& options() const { return options_; }

  // `worker` is a member from `now` (a session opened, or a rejoin).
  void Join(absl::string_view worker, absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // Renews the lease of `worker` (a heartbeat), joining it if it is not a
  // member.
  void Renew(absl::string_view worker, absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // A push of `step` by `worker` (with the loss it reported): renews its
  // lease (joining it if needed) and moves its clock to step + 1 if that is
  // higher.
  void RecordPush(absl::string_view worker, uint64_t step,
                  std::optional<double> loss, absl::Time now)
      ABSL_LOCKS_EXCLUDED(mu_);
  // `worker` leaves ("finished"). Returns whether it was a member.
  bool Leave(absl::string_view worker) ABSL_LOCKS_EXCLUDED(mu_);
  // Drops every member whose lease ran out by `now` (logged), and returns
  // their ids.
  std::vector<std::string> Expire(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);

  // Whether the pushes of `pushed` complete a sync step now (see above).
  bool Completes(const absl::flat_hash_set<std::string>& pushed,
                 absl::Time now) const ABSL_LOCKS_EXCLUDED(mu_);

  // How many workers complete a step now (see above), at least 1: also the
  // votes that move a block that fell behind its workers (sync_steps.h).
  uint64_t Needed(absl::Time now) const ABSL_LOCKS_EXCLUDED(mu_);

  // The slowest member's clock (highest pushed step + 1); nullopt when there
  // are no members.
  std::optional<uint64_t> MinClock() const ABSL_LOCKS_EXCLUDED(mu_);

  // Pushes of `worker` that wait (a sync step, a staleness bound).
  void BeginWait(absl::string_view worker, absl::Time now)
      ABSL_LOCKS_EXCLUDED(mu_);
  void EndWait(absl::string_view worker) ABSL_LOCKS_EXCLUDED(mu_);

  // Bumped on every change of who is a member, and when the forming phase
  // ends: a sync step that waited may be complete now.
  uint64_t generation(absl::Time now) const ABSL_LOCKS_EXCLUDED(mu_);

  size_t size() const ABSL_LOCKS_EXCLUDED(mu_);
  bool IsMember(absl::string_view worker) const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t drops() const ABSL_LOCKS_EXCLUDED(mu_);
  // Every worker known (members first, then former ones), for GetStats.
  void Fill(v1::Stats* stats, absl::Time now) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Worker {
    bool member = false;
    bool dropped = false;  // not a member because its lease ran out
    absl::Time joined;
    absl::Time last_seen;  // the lease runs from here
    absl::Time last_push = absl::InfinitePast();
    uint64_t clock = 0;  // highest pushed step + 1
    bool pushed = false;
    std::optional<double> loss;
    uint64_t pushes = 0;
    uint32_t waiting = 0;
    absl::Time waiting_since;
  };

  Worker& JoinLocked(absl::string_view worker, absl::Time now, bool rejoin)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Forming(absl::Time now) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void TrimFormer() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const MembershipOptions options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Worker> workers_ ABSL_GUARDED_BY(mu_);
  size_t members_ ABSL_GUARDED_BY(mu_) = 0;
  // The forming phase: when the first member joined, and whether
  // `expected` members have been seen.
  std::optional<absl::Time> first_join_ ABSL_GUARDED_BY(mu_);
  bool formed_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t drops_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ps

#endif  // PS_SERVER_MEMBERSHIP_H_
