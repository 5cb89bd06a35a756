"""Process-level performance settings for CPU training and evaluation.

glibc serves allocations above ``M_MMAP_THRESHOLD`` (at most 32 MiB) with fresh ``mmap``s
and unmaps them on free, so every training step page-faults its large activations back
in: on the 2-core test machine a Stage-II step at batch 64 took 45.6 s instead of 33.9 s.
:func:`tune_allocator` disables mmap allocations and heap trimming, so freed memory is
reused. The price is heap fragmentation: peak RSS of that step grows from 6.3 GiB to
8.8 GiB (docs/benchmarks.md). Set ``STACKGAN_KEEP_MALLOC=1`` to keep glibc's defaults
(lower memory, slower steps).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_allocator() -> bool:
    """Keep freed heap memory for reuse (glibc ``mallopt``); returns whether it applied."""
    if os.environ.get("STACKGAN_KEEP_MALLOC") or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    if ok:
        log.debug("glibc mallopt: mmap allocations and heap trimming disabled")
    return ok
