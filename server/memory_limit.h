// How much memory a shard may use, for its default limit on values and
// optimizer state (ps_server --memory_limit_mb).
#ifndef PS_SERVER_MEMORY_LIMIT_H_
#define PS_SERVER_MEMORY_LIMIT_H_

#include <cstdint>
#include <string>

namespace ps {

// The memory this process may use: the smallest limit of the memory cgroups
// it is in (cgroup v2 memory.max, or v1 memory.limit_in_bytes, of its own
// cgroup and every parent), or the machine's physical memory when none is
// lower. `root` prefixes /proc and /sys (tests give a fake tree).
uint64_t UsableMemoryBytes(const std::string& root = "");

}  // namespace ps

#endif  // PS_SERVER_MEMORY_LIMIT_H_
