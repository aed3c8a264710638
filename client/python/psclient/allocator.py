"""The process's allocator, tuned for the large buffers of every call.

Each push or pull allocates buffers of about a part's size (2 MiB by default)
several times over: the encoded gradient, gRPC's request and answer, the
decoded values. glibc serves an allocation above its mmap threshold (which
starts at 128 KiB) with fresh pages from the kernel and unmaps them when it
is freed, and trims freed memory at the top of the heap, so every call
faults in new zeroed pages: about a quarter of psclient's CPU time at 4 MiB
a call, and half its throughput. :func:`tune_malloc` keeps those buffers in
the heap for reuse, as ``ps_server`` does for itself. It changes the
allocator of the whole process, so psclient never does it implicitly: call
it once at start-up.
"""

from __future__ import annotations

import ctypes

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's upper limit for the mmap threshold on 64-bit systems.
_MAX_MMAP_THRESHOLD = 32 << 20


def tune_malloc(keep_free_bytes: int = 256 << 20) -> bool:
    """Serves allocations up to 32 MiB from the heap and keeps up to
    ``keep_free_bytes`` of freed memory there, so buffers are reused rather
    than mapped and faulted in anew for every call.

    Returns False, changing nothing, where the C library has no ``mallopt``
    (not glibc).
    """
    if keep_free_bytes < 0:
        raise ValueError(f"keep_free_bytes {keep_free_bytes} is negative")
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    keep = min(keep_free_bytes, 2**31 - 1)
    # mallopt returns 1 on success.
    return (mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD) == 1
            and mallopt(_M_TRIM_THRESHOLD, keep) == 1)
