"""Hand the driver's freed heap memory back to the operating system.

Ray's native threads in the driver (task submission, object references, gRPC) allocate and
free through glibc's per-thread arenas, which keep freed pages mapped: over a long job the
driver's resident memory crept up by about 0.3 MiB a second with no more live data (measured
on a 1,000,000-row manifest: 451 -> 562 MiB in 420 s, while ``tracemalloc`` saw the Python
heap grow by 4 MiB). ``malloc_trim(0)`` returns those pages; called once per committed shard,
the same job stays at 457-470 MiB. A few milliseconds a call.

Elsewhere than glibc (musl, macOS) there is no ``malloc_trim`` and this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the process's free heap pages to the OS; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
