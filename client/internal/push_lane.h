// Private to ps::Client (see client/internal/transport.h).
//
// The ordering of a worker's pushes to one shard. Each push is cut into
// requests that cover different blocks (request_split.h); the lane numbers
// each request with its seq as it is sent, lets up to `max_in_flight` of
// one push's requests be in flight at once, and starts the next push only
// when every request of the previous one has ended, so that each block sees
// the worker's pushes in order.
//
// Thread safety: thread-safe. No lock is held while a Send runs, so a Send
// may call Release (or Enqueue) of the same lane.
#ifndef PS_CLIENT_INTERNAL_PUSH_LANE_H_
#define PS_CLIENT_INTERNAL_PUSH_LANE_H_

#include <cstdint>
#include <deque>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"

namespace ps::client_internal {

class PushLane {
 public:
  // Starts the request with the given seq; Release() must be called once
  // when it ends.
  using Send = absl::AnyInvocable<void(uint64_t seq)>;

  // Seqs count from `first_seq` up, one per request sent.
  // REQUIRES: max_in_flight >= 1.
  PushLane(uint64_t first_seq, int max_in_flight);

  PushLane(const PushLane&) = delete;
  PushLane& operator=(const PushLane&) = delete;

  // Queues the requests of one push behind the pushes queued before, and
  // starts (on this thread) those that may start now. An empty push is
  // ignored.
  void Enqueue(std::vector<Send> push);

  // A request in flight has ended (answered or given up): starts, on this
  // thread, what may start now.
  void Release();

 private:
  // Moves the requests that may start now, with their seqs, to `ready`.
  void TakeReady(std::vector<std::pair<Send, uint64_t>>& ready)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int max_in_flight_;
  absl::Mutex mu_;
  // The pushes not yet finished; the front one's requests not yet sent.
  std::deque<std::deque<Send>> pushes_ ABSL_GUARDED_BY(mu_);
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ps::client_internal

#endif  // PS_CLIENT_INTERNAL_PUSH_LANE_H_
