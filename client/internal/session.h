// Private to ps::Client (see client/internal/transport.h).
//
// The worker's session (DESIGN.md, "Worker sessions"): one epoch, the same
// on every shard, that the worker's exactly-once pushes carry.
#ifndef PS_CLIENT_INTERNAL_SESSION_H_
#define PS_CLIENT_INTERNAL_SESSION_H_

#include "absl/status/status.h"
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

}  // namespace ps::client_internal

#endif  // PS_CLIENT_INTERNAL_SESSION_H_
