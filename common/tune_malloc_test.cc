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
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace ps {
namespace {

// AddressSanitizer and ThreadSanitizer replace glibc's malloc with their
// own, which mallopt and malloc_info do not reach: these tests measure
// glibc's (GCC says __SANITIZE_*__, clang __has_feature).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PS_SANITIZER_MALLOC
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define PS_SANITIZER_MALLOC
#endif
#endif
#ifdef PS_SANITIZER_MALLOC
constexpr bool kGlibcMalloc = false;
#else
constexpr bool kGlibcMalloc = true;
#endif

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

// Runs `measure` in a forked child, whose allocator starts from glibc's
// defaults (this process never tunes its own), and returns what it returns;
// -1 when the child failed (a negative result counts as a failure too).
long InFreshProcess(const std::function<long()>& measure) {
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    const long result = measure();
    const bool written =
        result >= 0 && write(pipe_fds[1], &result, sizeof result) ==
                           static_cast<ssize_t>(sizeof result);
    _exit(written ? 0 : 1);
  }
  close(pipe_fds[1]);
  long result = -1;
  if (read(pipe_fds[0], &result, sizeof result) != sizeof result) result = -1;
  close(pipe_fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? result : -1;
}

// Minor page faults of a second Churn in a fresh process, with or without
// TuneMalloc.
long ChurnFaults(bool tuned) {
  return InFreshProcess([tuned]() -> long {
    if (tuned && !TuneMalloc()) return -1;
    Churn();
    rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    Churn();
    getrusage(RUSAGE_SELF, &after);
    return after.ru_minflt - before.ru_minflt;
  });
}

TEST(TuneMallocTest, ReusedBuffersFaultInNoPages) {
  if (!kGlibcMalloc) GTEST_SKIP() << "a sanitizer's malloc is in use";
  const long plain = ChurnFaults(false);
  const long tuned = ChurnFaults(true);
  ASSERT_GE(plain, 0);
  ASSERT_GE(tuned, 0);
  EXPECT_LT(tuned, 64);
  EXPECT_GT(plain, 4 * std::max(tuned, 16L)) << "glibc's defaults";
}

// The malloc arenas in use after `threads` threads each allocated a few
// buffers at once, in a fresh process, with TuneServerMalloc(arenas),
// TuneServerMalloc() (`by_default`) or neither: the number of <heap>
// entries malloc_info lists.
long ArenasAfterThreads(int threads, std::optional<int> arenas,
                        bool by_default = false) {
  return InFreshProcess([threads, arenas, by_default]() -> long {
    if (arenas && !TuneServerMalloc(*arenas)) return -1;
    if (by_default && !TuneServerMalloc()) return -1;
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
    long heaps = 0;
    for (const char* at = text; (at = std::strstr(at, "<heap nr=")); ++at) {
      ++heaps;
    }
    free(text);
    return heaps;
  });
}

TEST(TuneServerMallocTest, BoundsTheArenas) {
  if (!kGlibcMalloc) GTEST_SKIP() << "a sanitizer's malloc is in use";
  EXPECT_GE(ArenasAfterThreads(6, std::nullopt), 3) << "glibc's defaults";
  EXPECT_EQ(ArenasAfterThreads(6, 1), 1);
  EXPECT_EQ(ArenasAfterThreads(6, 2), 2);
  EXPECT_EQ(ArenasAfterThreads(6, std::nullopt, /*by_default=*/true), 1);
}

}  // namespace
}  // namespace ps
