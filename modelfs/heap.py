"""How the process's allocator treats the read path's MB-sized buffers.

Every chunk decodes into a new 2 MiB bytes object. glibc serves blocks that large with a
fresh mmap, or trims them off the heap when freed, so each decode paid for page faults and
the kernel zeroing the pages again: measured, a quarter of the mount daemon's CPU on a
cold read. Keeping such blocks on the heap and freed memory in the process (its peak stays
what the decoded-chunk cache is sized to) lets a decode reuse memory that is already mapped.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks below this come from the heap
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top kept up to this


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for the read path; False where there is no glibc (nothing changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
