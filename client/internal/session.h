// Private to ps::Client (see client/internal/transport.h).
//
// The worker's session (DESIGN.md, "Worker sessions"): one epoch, the same
// on every shard, that the worker's exactly-once pushes carry.
#ifndef PS_CLIENT_INTERNAL_SESSION_H_
#define PS_CLIENT_INTERNAL_SESSION_H_

#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/internal/core.h"

namespace ps::client_internal {

// Opens core->worker_id's session on every shard and sets core->epoch and
// core->sync_step (the highest step any shard was collecting). Each shard
// picks an epoch above all it knows for this worker; then the shards that
// picked less are asked for the highest, so all hold the same one. When a
// shard answers ABORTED (another process with this worker id opened a newer
// session meanwhile) it starts over, up to three times. Blocks until done.
// Otherwise the error of the shards that failed (fanout.h).
// REQUIRES: core->shards are in shard order; no call of core is in flight.
absl::Status OpenSession(ClientCore* core);

// Membership (DESIGN.md, "Consistency"): sends `Request` (HeartbeatRequest
// or LeaveRequest) with the worker's id and epoch to every shard at once,
// one attempt each with `timeout`, and waits for the answers. The error of
// the shards that failed, each named.
absl::Status HeartbeatAll(ClientCore* core, absl::Duration timeout);
absl::Status LeaveAll(ClientCore* core, absl::Duration timeout);

// Keeps the worker's lease on every shard: a heartbeat every `interval`
// on a thread of its own, from construction until Stop (or destruction).
// A failed heartbeat is logged and tried again at the next interval.
//
// Thread safety: Stop may be called from any thread, more than once.
class LeaseKeeper {
 public:
  // REQUIRES: `core` is connected and outlives this.
  LeaseKeeper(ClientCore* core, absl::Duration interval);
  ~LeaseKeeper() { Stop(); }

  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Run() ABSL_LOCKS_EXCLUDED(mu_);

  ClientCore* const core_;
  const absl::Duration interval_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace ps::client_internal

#endif  // PS_CLIENT_INTERNAL_SESSION_H_
