#include "server/stats.h"

#include <cmath>
#include <string>

#include "absl/status/status.h"

namespace ps {

double ServerStats::BucketUpperUs(int bucket) {
  return 0.25 * std::exp2(bucket / 4.0);
}

void ServerStats::RecordRefusal(absl::StatusCode code) {
  const int index = static_cast<int>(code);
  if (index <= 0 || index >= static_cast<int>(refusals_.size())) return;
  refusals_[index].fetch_add(1, std::memory_order_relaxed);
}

void ServerStats::RecordUpdate(absl::Duration latency) {
  updates_.fetch_add(1, std::memory_order_relaxed);
  const double us = absl::ToDoubleMicroseconds(latency);
  int bucket = 0;
  if (us > 0.25) {
    bucket = static_cast<int>(std::ceil(4.0 * std::log2(us / 0.25)));
  }
  if (bucket >= kBuckets) bucket = kBuckets - 1;
  if (bucket < 0) bucket = 0;
  latency_[bucket].fetch_add(1, std::memory_order_relaxed);
}

double ServerStats::UpdateLatencyPercentileUs(double fraction) const {
  std::array<uint64_t, kBuckets> counts;
  uint64_t total = 0;
  for (int i = 0; i < kBuckets; ++i) {
    counts[i] = latency_[i].load(std::memory_order_relaxed);
    total += counts[i];
  }
  if (total == 0) return 0.0;
  const double rank = fraction * static_cast<double>(total);
  uint64_t seen = 0;
  for (int i = 0; i < kBuckets; ++i) {
    seen += counts[i];
    if (static_cast<double>(seen) >= rank) return BucketUpperUs(i);
  }
  return BucketUpperUs(kBuckets - 1);
}

void ServerStats::Fill(v1::Stats* stats) const {
  stats->set_pushes(pushes_.load(std::memory_order_relaxed));
  stats->set_pulls(pulls_.load(std::memory_order_relaxed));
  stats->set_bytes_in(bytes_in_.load(std::memory_order_relaxed));
  stats->set_bytes_out(bytes_out_.load(std::memory_order_relaxed));
  stats->set_updates(updates_.load(std::memory_order_relaxed));
  stats->set_checkpoints(checkpoints_.load(std::memory_order_relaxed));
  stats->set_checkpoint_failures(
      checkpoint_failures_.load(std::memory_order_relaxed));
  stats->set_restored_checkpoint(restored_checkpoint());
  stats->set_rolled_back(rolled_back() ? 1 : 0);
  for (size_t code = 1; code < refusals_.size(); ++code) {
    const uint64_t count = refusals_[code].load(std::memory_order_relaxed);
    if (count == 0) continue;
    (*stats->mutable_refusals())[absl::StatusCodeToString(
        static_cast<absl::StatusCode>(code))] = count;
  }
  stats->set_update_latency_p50_us(UpdateLatencyPercentileUs(0.50));
  stats->set_update_latency_p90_us(UpdateLatencyPercentileUs(0.90));
  stats->set_update_latency_p99_us(UpdateLatencyPercentileUs(0.99));
  stats->set_uptime_s(absl::ToDoubleSeconds(absl::Now() - start_));
}

}  // namespace ps
