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
import platform
import sys
from pathlib import Path

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


# XLA:CPU sends convolutions to YNNPACK by default. On this 2-core machine YNNPACK's convolutions
# scaled worse from one thread to two than the Eigen path (PGD-20 on MnistCNN4: 1.36x PyTorch with
# the default, 0.89x with YNNPACK restricted to individual dots; results/benchmark_pgd.md).
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"


def _jaxlib_knows(*needles: bytes) -> bool:
    """Whether jaxlib's XLA binary contains all ``needles`` (XLA aborts on unknown flags)."""
    import importlib.util
    import mmap
    from pathlib import Path

    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        for library in sorted(Path(folder).glob("libjax_common*.so")):
            with open(library, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if all(m.find(needle) >= 0 for needle in needles):
                    return True
    return False


def tune_xla_cpu() -> bool:
    """Adds ``YNN_FLAG`` to ``XLA_FLAGS`` when this jaxlib knows it and the user has not set it.

    Must run before JAX initialises its backends (the first computation). Returns whether the
    flag is now in effect. Set ``ADVJAX_NO_XLA_TUNING=1`` to leave ``XLA_FLAGS`` alone.
    """
    import os

    flags = os.environ.get("XLA_FLAGS", "")
    name, value = YNN_FLAG.split("=")
    if name in flags:
        return YNN_FLAG in flags
    if os.environ.get("ADVJAX_NO_XLA_TUNING") or not _jaxlib_knows(
        name[2:].encode(), value.encode()
    ):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
    return True


def configure() -> None:
    """Process settings for fast XLA:CPU: ``keep_freed_memory()`` and ``tune_xla_cpu()``."""
    keep_freed_memory()
    tune_xla_cpu()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else ``platform``), for benchmark reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
