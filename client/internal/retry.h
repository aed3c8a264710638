// Private to ps::Client (see client/internal/transport.h).
//
// The retry policy's arithmetic: which failures are retried, and how long
// to wait before each retry. The loop that retries one request is
// ShardCall (shard_call.h).
#ifndef PS_CLIENT_INTERNAL_RETRY_H_
#define PS_CLIENT_INTERNAL_RETRY_H_

#include <grpcpp/support/status.h>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/client.h"

namespace ps::client_internal {

// UNAVAILABLE and DEADLINE_EXCEEDED: the shard may answer a later attempt.
// Every retry of a push carries the same (worker_id, epoch, seq), so the
// shard applies it at most once.
bool Retryable(const grpc::Status& status);

// The waits between attempts: initial_backoff, then each wait
// backoff_multiplier times the one before, up to max_backoff, each scaled
// by a uniform factor in [1 - jitter, 1 + jitter].
//
// Thread safety: thread-safe.
class Backoff {
 public:
  // REQUIRES: `policy` passed Client::Connect's checks.
  explicit Backoff(const RetryPolicy& policy) : policy_(policy) {}

  Backoff(const Backoff&) = delete;
  Backoff& operator=(const Backoff&) = delete;

  // The wait after `attempts` failed attempts (>= 1).
  absl::Duration Wait(int attempts);

 private:
  const RetryPolicy policy_;
  absl::Mutex mu_;
  absl::BitGen rng_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ps::client_internal

#endif  // PS_CLIENT_INTERNAL_RETRY_H_
