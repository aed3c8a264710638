#include "common/tune_malloc.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <climits>

namespace ps {

bool TuneMalloc(size_t keep_free_bytes) {
#if defined(__GLIBC__)
  constexpr int kMaxMmapThreshold = 32 << 20;  // glibc's upper limit
  const int keep = static_cast<int>(
      std::min<size_t>(keep_free_bytes, static_cast<size_t>(INT_MAX)));
  return mallopt(M_MMAP_THRESHOLD, kMaxMmapThreshold) == 1 &&
         mallopt(M_TRIM_THRESHOLD, keep) == 1;
#else
  (void)keep_free_bytes;
  return false;
#endif
}

bool TuneServerMalloc(int arenas) {
#if defined(__GLIBC__)
  constexpr size_t kKeepFreeBytes = 64 << 20;
  return TuneMalloc(kKeepFreeBytes) && mallopt(M_ARENA_MAX, arenas) == 1;
#else
  (void)arenas;
  return false;
#endif
}

}  // namespace ps
