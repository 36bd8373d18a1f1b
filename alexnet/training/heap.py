"""Large CPU tensors without page faults: glibc keeps freed memory in the heap for reuse.

Why: a training step allocates every activation and gradient afresh. glibc's malloc serves a
block above its mmap threshold (at most 32 MB) with a fresh mmap and unmaps it on free, so the
next step page-faults all of it in again, which costs several times what filling reused memory
does. With mmap off and no trimming, freed blocks go back to the heap and the next step reuses
them. benchmarks/model.py (`--malloc default` against the default) measures the gain; the
docs/results.md holds the figures. The price: the process keeps its peak heap instead of
returning it to the system (`train.keep_freed_memory: false` opts out).
Results do not change: tensors keep PyTorch's 64-byte alignment wherever they live.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


@functools.cache  # once per process: the setting is the process's, and a second call changes nothing
def keep_freed_memory() -> bool:
    """Make glibc's malloc serve every block from the heap and keep freed memory (once per process).

    Returns whether it is in effect; False (nothing changed) where the C library is not glibc.
    Forked children (loader workers) inherit it.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries: no mallopt
        return False
    # Trim only a free top of the heap over 2 GB: training reuses what it freed one step ago.
    applied = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    if applied:
        log.info("malloc: large blocks from the heap, freed memory kept for reuse (train.keep_freed_memory)")
    return applied
