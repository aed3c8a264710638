#include "server/memory_limit.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
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

}  // namespace ps
