#include "server/locked_set.h"

#include <algorithm>
#include <utility>

namespace ps {

LockedSet::LockedSet(std::vector<absl::Mutex*> mutexes)
    ABSL_NO_THREAD_SAFETY_ANALYSIS : mutexes_(std::move(mutexes)) {
  std::sort(mutexes_.begin(), mutexes_.end());
  mutexes_.erase(std::unique(mutexes_.begin(), mutexes_.end()), mutexes_.end());
  for (absl::Mutex* mu : mutexes_) mu->Lock();
  held_ = true;
}

void LockedSet::Unlock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  if (!held_) return;
  held_ = false;
  for (absl::Mutex* mu : mutexes_) mu->Unlock();
}

}  // namespace ps
