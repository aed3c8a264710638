#include "server/memory_limit.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace ps {
namespace {

namespace fs = std::filesystem;

// A fake tree of /proc/self/cgroup and /sys/fs/cgroup files.
class FakeRoot {
 public:
  FakeRoot() {
    char name[] = "/tmp/memory_limit_test.XXXXXX";
    path_ = mkdtemp(name);
  }
  ~FakeRoot() { fs::remove_all(path_); }

  void Write(const std::string& file, const std::string& contents) const {
    const fs::path full = fs::path(path_) / file;
    fs::create_directories(full.parent_path());
    std::ofstream(full) << contents;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

uint64_t PhysicalMemory() {
  return static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) *
         static_cast<uint64_t>(sysconf(_SC_PAGE_SIZE));
}

TEST(UsableMemoryTest, WithoutCgroupsIsThePhysicalMemory) {
  FakeRoot root;
  EXPECT_EQ(UsableMemoryBytes(root.path()), PhysicalMemory());
}

TEST(UsableMemoryTest, CgroupV2TakesTheLowestLimitUpToTheRoot) {
  FakeRoot root;
  root.Write("proc/self/cgroup", "0::/pods/shard0\n");
  root.Write("sys/fs/cgroup/pods/shard0/memory.max", "max\n");
  root.Write("sys/fs/cgroup/pods/memory.max", "536870912\n");
  EXPECT_EQ(UsableMemoryBytes(root.path()), 536870912u);
  root.Write("sys/fs/cgroup/pods/shard0/memory.max", "268435456\n");
  EXPECT_EQ(UsableMemoryBytes(root.path()), 268435456u);
}

TEST(UsableMemoryTest, NoLimitOrALimitAboveTheMachineIsTheMachine) {
  FakeRoot root;
  root.Write("proc/self/cgroup", "0::/\n");
  root.Write("sys/fs/cgroup/memory.max", "max\n");
  EXPECT_EQ(UsableMemoryBytes(root.path()), PhysicalMemory());
  // cgroup v1 says "no limit" with a huge number.
  root.Write("proc/self/cgroup",
             "12:cpu,cpuacct:/x\n4:memory:/docker/abc\n1:name=systemd:/x\n");
  root.Write("sys/fs/cgroup/memory/memory.limit_in_bytes",
             "9223372036854771712\n");
  EXPECT_EQ(UsableMemoryBytes(root.path()), PhysicalMemory());
}

TEST(UsableMemoryTest, CgroupV1MemoryController) {
  FakeRoot root;
  root.Write("proc/self/cgroup", "4:memory:/docker/abc\n");
  // Inside a container the hierarchy is often mounted at the container's
  // own cgroup, so its path does not exist there: the walk finds the root.
  root.Write("sys/fs/cgroup/memory/memory.limit_in_bytes", "1073741824\n");
  EXPECT_EQ(UsableMemoryBytes(root.path()), 1073741824u);
}

TEST(UsableMemoryTest, UnreadableLimitsAreIgnored) {
  FakeRoot root;
  root.Write("proc/self/cgroup", "garbage\n0::/a\n");
  root.Write("sys/fs/cgroup/a/memory.max", "lots\n");
  EXPECT_EQ(UsableMemoryBytes(root.path()), PhysicalMemory());
}

TEST(UsableMemoryTest, ThisProcessHasSome) {
  const uint64_t usable = UsableMemoryBytes();
  EXPECT_GT(usable, 0u);
  EXPECT_LE(usable, PhysicalMemory());
}

}  // namespace
}  // namespace ps
