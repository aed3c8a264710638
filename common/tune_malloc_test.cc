// ps::TuneMalloc keeps freed call-sized buffers in the heap: allocating them
// again faults in no new pages, where glibc's defaults do.
#include "common/tune_malloc.h"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
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

}  // namespace
}  // namespace ps
