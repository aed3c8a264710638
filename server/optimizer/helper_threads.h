// Threads that help run the chunks of one large block's update at once.
//
// An update of a block walks its values in chunks that are independent of
// one another. For a large block, the thread that runs the update (a gRPC
// thread) hands ranges of chunks out as tasks: it runs them itself and any
// helper that is free meanwhile takes some too. A helper busy elsewhere
// costs the update nothing but the time to claim a task, so a shard under
// load from many workers runs as before, while one large push with cores to
// spare finishes sooner.
//
// Thread safety: Run may be called from any number of threads at once.
#ifndef PS_SERVER_OPTIMIZER_HELPER_THREADS_H_
#define PS_SERVER_OPTIMIZER_HELPER_THREADS_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

namespace ps::optimizer {

class HelperThreads {
 public:
  // Starts `helpers` threads; with 0, Run runs every task on its caller.
  explicit HelperThreads(int helpers);
  // Stops the helpers. REQUIRES: no Run in progress.
  ~HelperThreads();

  HelperThreads(const HelperThreads&) = delete;
  HelperThreads& operator=(const HelperThreads&) = delete;

  int helpers() const { return static_cast<int>(threads_.size()); }

  // What the helpers did since start. Counters only grow; a snapshot may
  // straddle a Run in progress.
  struct Counters {
    uint64_t split_runs = 0;    // Runs whose tasks were offered to helpers
    uint64_t tasks = 0;         // the tasks of those Runs
    uint64_t helper_tasks = 0;  // of them, the ones a helper ran
    uint64_t helped_runs = 0;   // Runs a helper took at least one task of
    // Time those Runs waited, after their caller ran out of tasks to
    // claim, for the helpers still running one.
    uint64_t wait_ns = 0;
  };
  Counters counters() const;

  // Runs task(0), ..., task(count - 1), each once, on the calling thread and
  // on the helpers that are free; returns when every task has returned.
  // The tasks must not depend on one another's order.
  void Run(size_t count, absl::FunctionRef<void(size_t)> task);

 private:
  struct Job;

  void Loop();
  bool HasOpenJobOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  // The jobs of the Runs in progress, oldest first; a Run removes its own.
  std::vector<Job*> jobs_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;

  std::atomic<uint64_t> split_runs_{0};
  std::atomic<uint64_t> tasks_{0};
  std::atomic<uint64_t> helper_tasks_{0};
  std::atomic<uint64_t> helped_runs_{0};
  std::atomic<uint64_t> wait_ns_{0};
};

}  // namespace ps::optimizer

#endif  // PS_SERVER_OPTIMIZER_HELPER_THREADS_H_
