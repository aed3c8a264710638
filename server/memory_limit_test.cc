#include "server/memory_limit.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
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

constexpr uint64_t kMiB = 1 << 20;

TEST(PlanMemoryTest, DefaultsLeaveRoomForMessagesBesideAFullState) {
  auto plan = PlanMemory(8192 * kMiB, 256, 0, 0, 0);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->inflight_bytes, 1024 * kMiB);   // 4 x 256
  EXPECT_EQ(plan->connection_bytes, 512 * kMiB);  // 2 x 256
  EXPECT_EQ(plan->state_bytes, 8192 * kMiB / 10 * 8 - 1024 * kMiB);
  EXPECT_LE(plan->state_bytes + plan->inflight_bytes, 8192 * kMiB);

  // A small container: messages take a quarter at most.
  auto small = PlanMemory(1024 * kMiB, 256, 0, 0, 0);
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->inflight_bytes, 256 * kMiB);
  EXPECT_EQ(small->connection_bytes, 256 * kMiB);
  EXPECT_EQ(small->state_bytes, 1024 * kMiB / 10 * 8 - 256 * kMiB);
}

TEST(PlanMemoryTest, FlagsOverrideAndMinusOneMeansNoBound) {
  auto plan = PlanMemory(8192 * kMiB, 256, 100, 300, 40);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->state_bytes, 100 * kMiB);
  EXPECT_EQ(plan->inflight_bytes, 300 * kMiB);
  EXPECT_EQ(plan->connection_bytes, 40 * kMiB);
  auto none = PlanMemory(8192 * kMiB, 256, -1, -1, -1);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->state_bytes, 0u);
  EXPECT_EQ(none->inflight_bytes, 0u);
  EXPECT_EQ(none->connection_bytes, 0u);
}

TEST(PlanMemoryTest, TooLittleMemoryForTheMessagesIsRefusedSayingWhy) {
  auto plan = PlanMemory(64 * kMiB, 256, 0, 2000, 0);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(plan.status().message()),
              ::testing::HasSubstr("--max_inflight_mb"));
}

TEST(AddressSpaceTest, WithoutAUlimitThereIsNoBound) {
  // The tests run without ulimit -v; limits_test runs ps_server with one.
  rlimit limit;
  ASSERT_EQ(getrlimit(RLIMIT_AS, &limit), 0);
  if (limit.rlim_cur != RLIM_INFINITY) GTEST_SKIP() << "ulimit -v is set";
  EXPECT_EQ(AddressSpaceLeftBytes(), UINT64_MAX);
}

}  // namespace
}  // namespace ps
