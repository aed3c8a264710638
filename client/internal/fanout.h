// Private to ps::Client (see client/internal/transport.h).
//
// The fan-out of one call: its requests go to many shards at once, and the
// call ends once, when the last of them has ended, with OK or with every
// shard that failed named.
#ifndef PS_CLIENT_INTERNAL_FANOUT_H_
#define PS_CLIENT_INTERNAL_FANOUT_H_

#include <cstddef>
#include <future>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "client/internal/core.h"
#include "client/internal/request_split.h"

namespace ps::client_internal {

// Collects the outcomes of a call's requests; when the last has ended,
// calls `done` with OK or with every failed shard named ("shard 1
// (host:port): UNAVAILABLE: ...; shard 3 (...): ...", by shard index, with
// the code of the lowest failed shard), then deletes itself. Counts as a
// call in flight of its core until then.
//
// Thread safety: Finish may be called from any thread.
class Fanout {
 public:
  // REQUIRES: requests >= 1; Finish is then called exactly `requests`
  // times. `core` outlives the fan-out.
  Fanout(ClientCore* core, size_t requests, Client::DoneCallback done);

  Fanout(const Fanout&) = delete;
  Fanout& operator=(const Fanout&) = delete;

  // One request to shard `shard` has ended with `status`. Only the first
  // error of each shard is reported. The last call runs `done` and deletes
  // this object.
  void Finish(size_t shard, absl::Status status);

 private:
  ~Fanout() = default;

  ClientCore* const core_;
  absl::Mutex mu_;
  size_t pending_ ABSL_GUARDED_BY(mu_);
  // The first error of each shard.
  absl::flat_hash_map<size_t, absl::Status> errors_ ABSL_GUARDED_BY(mu_);
  Client::DoneCallback done_;
};

// The fan-out of one split call, or null when there is nothing to send: then
// `done` has run with the split's error, or with OK for an empty call.
template <typename Request>
Fanout* StartFanout(ClientCore* core,
                    const absl::StatusOr<ShardParts<Request>>& parts,
                    Client::DoneCallback& done) {
  if (!parts.ok()) {
    done(parts.status());
    return nullptr;
  }
  size_t count = 0;
  for (const auto& list : *parts) count += list.size();
  if (count == 0) {
    done(absl::OkStatus());
    return nullptr;
  }
  return new Fanout(core, count, std::move(done));
}

// A callback that fulfils a promise, and the future it fulfils: how the
// blocking forms wait for a call.
std::pair<Client::DoneCallback, std::future<absl::Status>> MakePromise();

}  // namespace ps::client_internal

#endif  // PS_CLIENT_INTERNAL_FANOUT_H_
