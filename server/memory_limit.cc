#include "server/memory_limit.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace ps {
namespace {

// The number in a cgroup limit file; nullopt for "max", a missing file or
// anything else.
std::optional<uint64_t> ReadLimit(const std::string& path) {
  std::ifstream in(path);
  std::string text;
  if (!in || !std::getline(in, text)) return std::nullopt;
  uint64_t bytes = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &bytes)) {
    return std::nullopt;
  }
  return bytes;
}

// The lowest limit named `file` in the cgroup folder `mount` + `path` and
// its parents up to `mount`.
std::optional<uint64_t> LowestLimit(const std::string& mount, std::string path,
                                    const std::string& file) {
  std::optional<uint64_t> lowest;
  while (true) {
    if (auto limit = ReadLimit(mount + path + "/" + file)) {
      lowest = std::min(lowest.value_or(*limit), *limit);
    }
    if (path.empty() || path == "/") break;
    path = path.substr(0, path.rfind('/'));
  }
  return lowest;
}

}  // namespace

uint64_t UsableMemoryBytes(const std::string& root) {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGE_SIZE);
  uint64_t usable =
      pages > 0 && page_size > 0
          ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size)
          : UINT64_MAX;

  // Each line of /proc/self/cgroup is "id:controllers:path": "0::path" for
  // cgroup v2, "N:...memory...:path" for v1's memory controller.
  std::ifstream cgroups(root + "/proc/self/cgroup");
  std::string line;
  while (std::getline(cgroups, line)) {
    std::vector<std::string> fields =
        absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (fields.size() != 3) continue;
    std::optional<uint64_t> limit;
    if (fields[0] == "0" && fields[1].empty()) {
      limit = LowestLimit(root + "/sys/fs/cgroup", fields[2], "memory.max");
    } else if (absl::StrContains(fields[1], "memory")) {
      limit = LowestLimit(root + "/sys/fs/cgroup/memory", fields[2],
                          "memory.limit_in_bytes");
    }
    if (limit) usable = std::min(usable, *limit);
  }
  return usable;
}

uint64_t AddressSpaceLeftBytes() {
  rlimit limit;
  if (getrlimit(RLIMIT_AS, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) {
    return UINT64_MAX;
  }
  // /proc/self/statm: the pages mapped now, first.
  uint64_t pages = 0;
  std::ifstream statm("/proc/self/statm");
  statm >> pages;
  const uint64_t mapped = pages * static_cast<uint64_t>(sysconf(_SC_PAGE_SIZE));
  // gRPC's and the helpers' threads each reserve a stack (8 MiB).
  const uint64_t stacks = uint64_t{64} << 23;
  const uint64_t cap = static_cast<uint64_t>(limit.rlim_cur);
  return cap > mapped + stacks ? cap - mapped - stacks : 0;
}

absl::StatusOr<MemoryPlan> PlanMemory(uint64_t usable, int max_message_mb,
                                      int64_t memory_limit_mb,
                                      int64_t max_inflight_mb,
                                      int64_t max_connection_mb) {
  constexpr uint64_t kMiB = 1 << 20;
  const uint64_t message = static_cast<uint64_t>(max_message_mb) * kMiB;
  MemoryPlan plan;
  if (max_inflight_mb > 0) {
    plan.inflight_bytes = static_cast<uint64_t>(max_inflight_mb) * kMiB;
  } else if (max_inflight_mb == 0) {
    plan.inflight_bytes = std::min(4 * message, usable / 4);
  }
  if (max_connection_mb > 0) {
    plan.connection_bytes = static_cast<uint64_t>(max_connection_mb) * kMiB;
  } else if (max_connection_mb == 0) {
    plan.connection_bytes = std::max(2 * message, 64 * kMiB);
    if (plan.inflight_bytes > 0) {
      plan.connection_bytes =
          std::min(plan.connection_bytes, plan.inflight_bytes);
    }
  }
  if (memory_limit_mb > 0) {
    plan.state_bytes = static_cast<uint64_t>(memory_limit_mb) * kMiB;
    plan.how = "--memory_limit_mb";
  } else if (memory_limit_mb == 0) {
    const uint64_t share = usable / 10 * 8;
    const uint64_t messages = plan.inflight_bytes;
    if (share < messages + 16 * kMiB) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the shard may use ", usable / kMiB, " MiB, too little for ",
          messages / kMiB,
          " MiB of messages in flight beside its state; lower "
          "--max_message_mb or --max_inflight_mb, set --memory_limit_mb, or "
          "give it more memory"));
    }
    plan.state_bytes = share - messages;
    plan.how =
        absl::StrCat("80% of the ", usable / kMiB, " MiB it may use, less ",
                     messages / kMiB, " MiB for messages in flight");
  } else {
    plan.how = "no limit (--memory_limit_mb=-1)";
  }
  return plan;
}

}  // namespace ps
