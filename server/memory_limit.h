// How much memory a shard may use, for its default limit on values and
// optimizer state (ps_server --memory_limit_mb).
#ifndef PS_SERVER_MEMORY_LIMIT_H_
#define PS_SERVER_MEMORY_LIMIT_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace ps {

// The memory this process may use: the smallest limit of the memory cgroups
// it is in (cgroup v2 memory.max, or v1 memory.limit_in_bytes, of its own
// cgroup and every parent), or the machine's physical memory when none is
// lower. `root` prefixes /proc and /sys (tests give a fake tree).
uint64_t UsableMemoryBytes(const std::string& root = "");

// The address space this process may still map under its RLIMIT_AS (ulimit
// -v), less what thread stacks will reserve; UINT64_MAX without a limit.
uint64_t AddressSpaceLeftBytes();

// How a shard divides the memory it may use.
struct MemoryPlan {
  uint64_t state_bytes = 0;       // values, optimizer state, bookkeeping
  uint64_t inflight_bytes = 0;    // messages of calls in flight; 0 = no bound
  uint64_t connection_bytes = 0;  // of one connection; 0 = no bound
  std::string how;                // what the numbers came from, for the log
};

// The plan for `usable` bytes and the ps_server flags (MiB; 0 = derive, -1 =
// no bound): messages in flight get min(4 x max_message_mb, usable / 4),
// one connection min(that, max(2 x max_message_mb, 64 MiB)), and state 80%
// of usable less the messages' share, so that the default message sizes
// have room beside a full state. INVALID_ARGUMENT when that leaves the
// state less than 16 MiB, saying which flag to lower.
absl::StatusOr<MemoryPlan> PlanMemory(uint64_t usable, int max_message_mb,
                                      int64_t memory_limit_mb,
                                      int64_t max_inflight_mb,
                                      int64_t max_connection_mb);

}  // namespace ps

#endif  // PS_SERVER_MEMORY_LIMIT_H_
