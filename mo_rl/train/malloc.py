"""Keep freed memory inside the process on CPU (glibc): no page faults for memory the next step allocates again.

A training step allocates and frees the same few hundred tensors every step. With glibc's defaults, blocks above
the (dynamic, at most 32 MiB) mmap threshold are mapped and unmapped each time, and free memory at the top of the
heap beyond the trim threshold goes back to the OS; either way the next step faults the pages in again and the
kernel zeroes them. Measured on the tiny default (2-core VM): ~1140 minor page faults and 2.5 ms of system time per
step, 45.3 ms -> 40.8 ms per step once freed memory is kept (12 faults per step); at ~10M parameters 5.55 s ->
5.2 s per step with peak RSS unchanged (1032 -> 1008 MiB). ``trainer.keep_freed_memory=false`` leaves glibc's
defaults alone.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # blocks below this come from the heap and are reused after free (glibc's maximum)
TRIM_THRESHOLD = 1024 * 2**20  # free memory kept at the heap's top before any is returned to the OS


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process. -> whether they were set (False off glibc Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    mmap_ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trim_ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return mmap_ok and trim_ok
