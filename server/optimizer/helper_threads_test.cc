#include "server/optimizer/helper_threads.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ps::optimizer {
namespace {

TEST(HelperThreadsTest, WithoutHelpersTheCallerRunsEveryTaskInOrder) {
  HelperThreads none(0);
  EXPECT_EQ(none.helpers(), 0);
  std::vector<size_t> order;
  std::set<std::thread::id> threads;
  none.Run(5, [&](size_t i) {
    order.push_back(i);
    threads.insert(std::this_thread::get_id());
  });
  EXPECT_EQ(order, (std::vector<size_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(threads, std::set{std::this_thread::get_id()});
  none.Run(0, [&](size_t) { ADD_FAILURE() << "no task to run"; });
  EXPECT_EQ(none.counters().split_runs, 0u);
  EXPECT_EQ(none.counters().tasks, 0u);
}

TEST(HelperThreadsTest, AFreeHelperTakesTasksWhileTheCallerRunsOne) {
  HelperThreads pool(1);
  absl::Mutex mu;
  int started = 0;
  std::set<std::thread::id> threads;
  // Each task waits for the other to start: they can only both finish in
  // time if they run at once, on the caller and the helper.
  pool.Run(2, [&](size_t) {
    absl::MutexLock lock(&mu);
    ++started;
    threads.insert(std::this_thread::get_id());
    EXPECT_TRUE(
        mu.AwaitWithTimeout(absl::Condition(
                                +[](int* n) { return *n == 2; }, &started),
                            absl::Seconds(10)));
  });
  EXPECT_EQ(threads.size(), 2u);
  EXPECT_TRUE(threads.count(std::this_thread::get_id()));
}

TEST(HelperThreadsTest, ManyCallersAtOnceEachGetEveryTaskRunOnce) {
  HelperThreads pool(2);
  constexpr int kCallers = 4;
  constexpr size_t kTasks = 200;
  std::vector<std::vector<std::atomic<int>>> runs(kCallers);
  for (auto& r : runs) r = std::vector<std::atomic<int>>(kTasks);
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      for (int round = 0; round < 20; ++round) {
        std::atomic<size_t> done = 0;
        pool.Run(kTasks, [&](size_t i) {
          runs[c][i].fetch_add(1);
          done.fetch_add(1);
        });
        // Run returns only once every task has returned.
        EXPECT_EQ(done.load(), kTasks);
      }
    });
  }
  for (std::thread& t : callers) t.join();
  const HelperThreads::Counters counters = pool.counters();
  EXPECT_EQ(counters.split_runs, kCallers * 20u);
  EXPECT_EQ(counters.tasks, kCallers * 20u * kTasks);
  EXPECT_LE(counters.helper_tasks, counters.tasks);
  EXPECT_LE(counters.helped_runs, counters.split_runs);
  for (int c = 0; c < kCallers; ++c) {
    for (size_t i = 0; i < kTasks; ++i) {
      ASSERT_EQ(runs[c][i].load(), 20) << "caller " << c << " task " << i;
    }
  }
}

// The caller's task ends at once, the helper's 50 ms later: the counters
// say the helper ran one of the two tasks and the caller waited for it.
TEST(HelperThreadsTest, CountersSayWhoRanWhatAndHowLongTheCallerWaited) {
  HelperThreads pool(1);
  absl::Mutex mu;
  int started = 0;
  const std::thread::id caller = std::this_thread::get_id();
  pool.Run(2, [&](size_t) {
    {
      absl::MutexLock lock(&mu);
      ++started;
      ASSERT_TRUE(
          mu.AwaitWithTimeout(absl::Condition(
                                  +[](int* n) { return *n == 2; }, &started),
                              absl::Seconds(10)));
    }
    if (std::this_thread::get_id() != caller)
      absl::SleepFor(absl::Milliseconds(50));
  });
  const HelperThreads::Counters counters = pool.counters();
  EXPECT_EQ(counters.split_runs, 1u);
  EXPECT_EQ(counters.tasks, 2u);
  EXPECT_EQ(counters.helper_tasks, 1u);
  EXPECT_EQ(counters.helped_runs, 1u);
  EXPECT_GE(counters.wait_ns, 40'000'000u);
  // One task: the caller runs it alone, and it is not counted as split.
  pool.Run(1, [](size_t) {});
  EXPECT_EQ(pool.counters().split_runs, 1u);
}

// Short jobs, one after another: a helper woken for a job often finds its
// tasks already claimed, and the job gone, and must go back to waiting.
TEST(HelperThreadsTest, HelpersWokenForJobsAlreadyDoneWaitAgain) {
  HelperThreads pool(2);
  std::vector<std::thread> callers;
  std::atomic<int> runs = 0;
  for (int c = 0; c < 2; ++c) {
    callers.emplace_back([&] {
      for (int round = 0; round < 20000; ++round) {
        pool.Run(2, [&](size_t) { runs.fetch_add(1); });
      }
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(runs.load(), 2 * 20000 * 2);
}

}  // namespace
}  // namespace ps::optimizer
