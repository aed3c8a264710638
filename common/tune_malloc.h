// The process's allocator, tuned for the large buffers of every call.
#ifndef PS_COMMON_TUNE_MALLOC_H_
#define PS_COMMON_TUNE_MALLOC_H_

#include <cstddef>

namespace ps {

// Keeps the large buffers of every call in the heap for reuse: glibc serves
// allocations up to 32 MiB from the heap instead of mapping fresh pages for
// each (and unmapping them on free), and keeps up to `keep_free_bytes` of
// freed memory instead of returning it. With glibc's defaults every call of
// a few MiB faults in new zeroed pages. It changes the allocator of the
// whole process, so the Client never does it on its own: call it once at
// start-up (ps_server does, for itself). Returns false where the C library
// is not glibc (nothing changed).
bool TuneMalloc(size_t keep_free_bytes = size_t{256} << 20);

// A server's allocator: TuneMalloc keeping at most 64 MiB of freed memory
// per arena, and at most `arenas` malloc arenas instead of glibc's eight
// per core, each of which keeps its own freed buffers resident. One arena
// measured best on 2 and on 16 cores (bench/README.md). ps_server calls
// it, and so does the benchmark's echo server, so that both run on the
// same allocator. Returns false where the C library is not glibc (nothing
// changed).
// REQUIRES: arenas >= 1.
bool TuneServerMalloc(int arenas = 1);

}  // namespace ps

#endif  // PS_COMMON_TUNE_MALLOC_H_
