// Counters of one shard, read by AdminService.GetStats and /metrics.
//
// Thread safety: every method may be called concurrently; recording is
// lock-free (relaxed atomics), so it costs the hot path a few increments.
#ifndef PS_SERVER_STATS_H_
#define PS_SERVER_STATS_H_

#include <array>
#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "proto/ps/v1/ps.pb.h"

namespace ps {

class ServerStats {
 public:
  ServerStats() : start_(absl::Now()) {}

  void RecordPush(uint64_t bytes_in, uint64_t bytes_out) {
    pushes_.fetch_add(1, std::memory_order_relaxed);
    Bytes(bytes_in, bytes_out);
  }
  void RecordPull(uint64_t bytes_in, uint64_t bytes_out) {
    pulls_.fetch_add(1, std::memory_order_relaxed);
    Bytes(bytes_in, bytes_out);
  }
  // Counts a refused call by its code; OK is not counted.
  void RecordRefusal(absl::StatusCode code);
  // One block update (the optimizer step) took `latency`.
  void RecordUpdate(absl::Duration latency);
  // A checkpoint was written (`ok`) or failed.
  void RecordCheckpoint(bool ok) {
    (ok ? checkpoints_ : checkpoint_failures_)
        .fetch_add(1, std::memory_order_relaxed);
  }

  // The cluster checkpoint loaded at start-up (0: none), and whether the
  // shard went back to it alone while its peers kept newer state.
  void SetRestored(uint64_t number, bool rolled_back) {
    restored_checkpoint_.store(number, std::memory_order_relaxed);
    rolled_back_.store(rolled_back, std::memory_order_relaxed);
  }
  uint64_t restored_checkpoint() const {
    return restored_checkpoint_.load(std::memory_order_relaxed);
  }
  bool rolled_back() const {
    return rolled_back_.load(std::memory_order_relaxed);
  }

  // Fills the counters, percentiles and uptime (not the per-variable part).
  void Fill(v1::Stats* stats) const;

  // The update latency below which `fraction` of updates fell, in
  // microseconds (the upper edge of the histogram bucket; 0 if none).
  double UpdateLatencyPercentileUs(double fraction) const;

 private:
  // Buckets grow by 2^(1/4) (about 19%) from 0.25 us; the last is open.
  static constexpr int kBuckets = 128;
  static double BucketUpperUs(int bucket);

  void Bytes(uint64_t in, uint64_t out) {
    bytes_in_.fetch_add(in, std::memory_order_relaxed);
    bytes_out_.fetch_add(out, std::memory_order_relaxed);
  }

  const absl::Time start_;
  std::atomic<uint64_t> pushes_{0};
  std::atomic<uint64_t> pulls_{0};
  std::atomic<uint64_t> bytes_in_{0};
  std::atomic<uint64_t> bytes_out_{0};
  std::atomic<uint64_t> updates_{0};
  std::atomic<uint64_t> checkpoints_{0};
  std::atomic<uint64_t> checkpoint_failures_{0};
  std::atomic<uint64_t> restored_checkpoint_{0};
  std::atomic<bool> rolled_back_{false};
  std::array<std::atomic<uint64_t>, 17> refusals_{};  // by absl::StatusCode
  std::array<std::atomic<uint64_t>, kBuckets> latency_{};
};

}  // namespace ps

#endif  // PS_SERVER_STATS_H_
