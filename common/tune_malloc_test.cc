// ps::TuneMalloc keeps freed call-sized buffers in the heap: allocating them
// again faults in no new pages, where glibc's defaults do. ps::TuneServerMalloc
// also bounds the malloc arenas.
#include "common/tune_malloc.h"

#include <malloc.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace ps {
namespace {

// Allocates, touches and frees buffers of a few MiB, as calls do.
void Churn() {
  for (int round = 0; round < 30; ++round) {
    std::vector<std::unique_ptr<char[]>> held;
    for (size_t mib : {1, 2, 4, 1, 2}) {
      const size_t size = mib << 20;
      held.emplace_back(new char[size]);
      std::memset(held.back().get(), round, size);
    }
  }
}

// Minor page faults of a second Churn in a fresh child process (so that
// the allocator starts from glibc's defaults), with or without TuneMalloc.
long ChurnFaults(bool tuned) {
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    if (tuned && !TuneMalloc()) _exit(2);
    Churn();
    rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    Churn();
    getrusage(RUSAGE_SELF, &after);
    const long faults = after.ru_minflt - before.ru_minflt;
    const bool written =
        write(pipe_fds[1], &faults, sizeof faults) == sizeof faults;
    _exit(written ? 0 : 1);
  }
  close(pipe_fds[1]);
  long faults = -1;
  if (read(pipe_fds[0], &faults, sizeof faults) != sizeof faults) faults = -1;
  close(pipe_fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? faults : -1;
}

TEST(TuneMallocTest, ReusedBuffersFaultInNoPages) {
  const long plain = ChurnFaults(false);
  const long tuned = ChurnFaults(true);
  ASSERT_GE(plain, 0);
  ASSERT_GE(tuned, 0);
  EXPECT_LT(tuned, 64);
  EXPECT_GT(plain, 4 * std::max(tuned, 16L)) << "glibc's defaults";
}

// The malloc arenas in use after `threads` threads each allocated a few
// buffers at once, in a fresh child process, with or without
// TuneServerMalloc(arenas): the number of <heap> entries malloc_info lists.
int ArenasAfterThreads(int threads, std::optional<int> arenas) {
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    if (arenas && !TuneServerMalloc(*arenas)) _exit(2);
    std::vector<std::thread> workers;
    std::atomic<int> holding = 0;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&] {
        std::vector<std::unique_ptr<char[]>> held;
        for (int i = 0; i < 4; ++i) held.emplace_back(new char[64 << 10]);
        // All threads hold their buffers at once, so that glibc cannot
        // hand one arena from thread to thread.
        ++holding;
        while (holding < threads) std::this_thread::yield();
      });
    }
    for (std::thread& worker : workers) worker.join();
    char* text = nullptr;
    size_t size = 0;
    FILE* out = open_memstream(&text, &size);
    malloc_info(0, out);
    fclose(out);
    int heaps = 0;
    for (const char* at = text; (at = std::strstr(at, "<heap nr=")); ++at) {
      ++heaps;
    }
    free(text);
    const bool written =
        write(pipe_fds[1], &heaps, sizeof heaps) == sizeof heaps;
    _exit(written ? 0 : 1);
  }
  close(pipe_fds[1]);
  int heaps = -1;
  if (read(pipe_fds[0], &heaps, sizeof heaps) != sizeof heaps) heaps = -1;
  close(pipe_fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? heaps : -1;
}

TEST(TuneServerMallocTest, BoundsTheArenas) {
  EXPECT_GE(ArenasAfterThreads(6, std::nullopt), 3) << "glibc's defaults";
  EXPECT_EQ(ArenasAfterThreads(6, 1), 1);
  EXPECT_EQ(ArenasAfterThreads(6, 2), 2);
  const int by_default = ArenasAfterThreads(6, 0);
  EXPECT_GE(by_default, 1);
  EXPECT_LE(
      by_default,
      std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / 4));
}

}  // namespace
}  // namespace ps
