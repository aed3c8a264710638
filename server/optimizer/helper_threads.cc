#include "server/optimizer/helper_threads.h"

#include <algorithm>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ps::optimizer {

struct HelperThreads::Job {
  Job(size_t count, absl::FunctionRef<void(size_t)> task)
      : count(count), task(task) {}

  // Runs tasks until none is left to claim; the number it ran.
  size_t Work() {
    size_t ran = 0;
    for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < count;
         ++ran) {
      task(i);
    }
    return ran;
  }
  bool Open() const { return next.load(std::memory_order_relaxed) < count; }

  const size_t count;
  const absl::FunctionRef<void(size_t)> task;
  std::atomic<size_t> next{0};
  // Helpers working on the job; guarded by HelperThreads::mu_, which
  // outlives the job (the Run that owns it waits for 0 under mu_).
  int attached = 0;
  // Tasks the helpers ran; guarded by HelperThreads::mu_.
  size_t helper_tasks = 0;
};

HelperThreads::HelperThreads(int helpers) {
  threads_.reserve(static_cast<size_t>(std::max(helpers, 0)));
  for (int i = 0; i < helpers; ++i) threads_.emplace_back([this] { Loop(); });
}

HelperThreads::~HelperThreads() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (std::thread& thread : threads_) thread.join();
}

void HelperThreads::Run(size_t count, absl::FunctionRef<void(size_t)> task) {
  if (threads_.empty() || count < 2) {
    for (size_t i = 0; i < count; ++i) task(i);
    return;
  }
  Job job(count, task);
  {
    absl::MutexLock lock(&mu_);
    jobs_.push_back(&job);  // wakes the helpers waiting in Loop
  }
  job.Work();
  const absl::Time own_tasks_done = absl::Now();
  size_t helper_tasks = 0;
  {
    absl::MutexLock lock(&mu_);
    jobs_.erase(std::find(jobs_.begin(), jobs_.end(), &job));
    // Every task has been claimed; wait for the helpers still running one.
    mu_.Await(absl::Condition(
        +[](Job* j) { return j->attached == 0; }, &job));
    helper_tasks = job.helper_tasks;
  }
  split_runs_.fetch_add(1, std::memory_order_relaxed);
  tasks_.fetch_add(count, std::memory_order_relaxed);
  helper_tasks_.fetch_add(helper_tasks, std::memory_order_relaxed);
  if (helper_tasks > 0) helped_runs_.fetch_add(1, std::memory_order_relaxed);
  wait_ns_.fetch_add(static_cast<uint64_t>(absl::ToInt64Nanoseconds(
                         absl::Now() - own_tasks_done)),
                     std::memory_order_relaxed);
}

HelperThreads::Counters HelperThreads::counters() const {
  Counters c;
  c.split_runs = split_runs_.load(std::memory_order_relaxed);
  c.tasks = tasks_.load(std::memory_order_relaxed);
  c.helper_tasks = helper_tasks_.load(std::memory_order_relaxed);
  c.helped_runs = helped_runs_.load(std::memory_order_relaxed);
  c.wait_ns = wait_ns_.load(std::memory_order_relaxed);
  return c;
}

bool HelperThreads::HasOpenJobOrStop() const {
  return stop_ || std::any_of(jobs_.begin(), jobs_.end(),
                              [](const Job* job) { return job->Open(); });
}

void HelperThreads::Loop() {
  mu_.Lock();
  while (true) {
    mu_.Await(absl::Condition(this, &HelperThreads::HasOpenJobOrStop));
    if (stop_) break;
    // The callers claim tasks without the lock: the job seen open may have
    // been emptied since.
    auto open = std::find_if(jobs_.begin(), jobs_.end(),
                             [](const Job* j) { return j->Open(); });
    if (open == jobs_.end()) continue;
    Job* job = *open;
    ++job->attached;
    mu_.Unlock();
    const size_t ran = job->Work();
    mu_.Lock();
    job->helper_tasks += ran;
    --job->attached;
  }
  mu_.Unlock();
}

}  // namespace ps::optimizer
