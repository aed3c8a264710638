#include "client/internal/push_lane.h"

#include <iterator>

namespace ps::client_internal {

PushLane::PushLane(uint64_t first_seq, int max_in_flight)
    : max_in_flight_(max_in_flight), next_seq_(first_seq) {}

void PushLane::Enqueue(std::vector<Send> push) {
  std::vector<std::pair<Send, uint64_t>> ready;
  {
    absl::MutexLock lock(&mu_);
    if (!push.empty()) {
      pushes_.emplace_back(std::make_move_iterator(push.begin()),
                           std::make_move_iterator(push.end()));
    }
    TakeReady(ready);
  }
  for (auto& [send, seq] : ready) send(seq);
}

void PushLane::Release() {
  std::vector<std::pair<Send, uint64_t>> ready;
  {
    absl::MutexLock lock(&mu_);
    --in_flight_;
    TakeReady(ready);
  }
  for (auto& [send, seq] : ready) send(seq);
}

void PushLane::TakeReady(std::vector<std::pair<Send, uint64_t>>& ready) {
  while (!pushes_.empty()) {
    std::deque<Send>& front = pushes_.front();
    if (front.empty()) {
      if (in_flight_ > 0) return;  // the front push is still in flight
      pushes_.pop_front();
      continue;
    }
    if (in_flight_ >= max_in_flight_) return;
    ready.emplace_back(std::move(front.front()), next_seq_++);
    front.pop_front();
    ++in_flight_;
  }
}

}  // namespace ps::client_internal
