// Holds the locks of a set of mutexes (a push's blocks, the blocks an
// optimizer change adapts), taken in address order so that two holders
// never wait on each other. Opaque to the thread-safety analysis: functions
// that use it say ABSL_NO_THREAD_SAFETY_ANALYSIS.
//
// Thread safety: one thread takes and releases it.
#ifndef PS_SERVER_LOCKED_SET_H_
#define PS_SERVER_LOCKED_SET_H_

#include <vector>

#include "absl/synchronization/mutex.h"

namespace ps {

class LockedSet {
 public:
  // Locks every mutex once (repeats are taken once).
  explicit LockedSet(std::vector<absl::Mutex*> mutexes);
  ~LockedSet() { Unlock(); }
  LockedSet(const LockedSet&) = delete;
  LockedSet& operator=(const LockedSet&) = delete;

  // Releases every lock now (the destructor then does nothing).
  void Unlock();

 private:
  std::vector<absl::Mutex*> mutexes_;  // sorted, without repeats
  bool held_ = false;
};

}  // namespace ps

#endif  // PS_SERVER_LOCKED_SET_H_
