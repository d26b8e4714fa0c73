"""Process-wide settings that make PyTorch on the CPU waste less time outside the kernels."""
from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_TUNED = False


def tune_allocator() -> bool:
    """Let glibc's malloc keep freed activation memory for reuse; returns True when applied.

    By default glibc serves every block above a sliding threshold with a fresh mmap and gives
    it back on free, so each forward pass of R(2+1)D at 16x64x64 (batch 8) page-faults in
    about 1.9 GB of zeroed memory (fp32; 0.15 GB in bf16/channels_last) and spends a second
    in the kernel. Raising the mmap threshold to its ceiling (32 MB), padding the heap top
    and not trimming it (the same remedy as PyTorch's CPU tuning guide's jemalloc/tcmalloc,
    without a new dependency) removes most of it: +7 % training, +12 % inference here.
    The cost: the process keeps up to 1 GB of freed memory instead of returning it.
    A no-op outside Linux/glibc."""
    global _TUNED
    if _TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):       # musl or another libc: nothing to tune
        return False
    _TUNED = bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) and mallopt(_M_TRIM_THRESHOLD, 1 << 30)
                  and mallopt(_M_TOP_PAD, 256 << 20))
    return _TUNED
