"""Host-process settings that make XLA:CPU fast, applied by the launch scripts and benchmarks.

XLA:CPU allocates large scratch buffers (tens of MiB to 1 GiB for an unrolled attack) on every
call. glibc serves allocations above 32 MiB with ``mmap`` and returns them with ``munmap``, so each
call page-faults its scratch memory in again: in the PGD benchmark that was 700k faults and 40% of
the time of a call (results/benchmark_pgd.md). ``keep_freed_memory`` tells glibc to keep freed
memory in the process instead; the process then keeps its peak memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
    """``mallopt``: one arena, no mmap-ed chunks, no trimming. No-op (False) off glibc/Linux.

    Call it early, before JAX starts its threads.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(
        mallopt(param, value)
        for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    )
