"""Host memory of CPU ranks: glibc's malloc raises its mmap threshold as large blocks are freed (up to 32 MiB),
after which freed gathered parameters and gradient buckets stay in its heaps instead of going back to the system.
Measured on 2 gloo ranks (benchmarks/deepspeed_memory.py), that retention was the stepping peak's excess over one
process; a fixed threshold maps every large block and unmaps it when freed."""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3      # mallopt's parameter number in glibc's malloc.h


def fix_mmap_threshold(mib: int) -> bool:
    """Blocks of at least `mib` MiB are mapped and returned on free (glibc's `mallopt(M_MMAP_THRESHOLD)`, which
    also stops the threshold from rising); False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mib * 2**20))
