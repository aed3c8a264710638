#include "client/internal/retry.h"

#include <algorithm>

namespace ps::client_internal {

bool Retryable(const grpc::Status& status) {
  return status.error_code() == grpc::StatusCode::UNAVAILABLE ||
         status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

absl::Duration Backoff::Wait(int attempts) {
  absl::Duration wait = policy_.initial_backoff;
  for (int i = 1; i < attempts && wait < policy_.max_backoff; ++i) {
    wait *= policy_.backoff_multiplier;
  }
  wait = std::min(wait, policy_.max_backoff);
  if (policy_.jitter > 0) {
    absl::MutexLock lock(&mu_);
    wait *= absl::Uniform(rng_, 1.0 - policy_.jitter, 1.0 + policy_.jitter);
  }
  return wait;
}

}  // namespace ps::client_internal
