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
from pathlib import Path

import torch

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


_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16 in ``cpuinfo``).

    Without them (e.g. an AVX2-only CPU) PyTorch emulates bf16 and a training step is many
    times slower than fp32. False where ``cpuinfo`` cannot be read (non-Linux).
    """
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_NATIVE_BF16_FLAGS & set(line.partition(":")[2].split()))
    return False


def resolve_amp(amp: str, device: torch.device, cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The precision a run uses: ``amp`` itself, or for ``"auto"`` bf16 where the device
    computes it natively (CUDA with bf16 support, a CPU with AVX512-BF16/AMX) and fp32
    otherwise. The resolved value is logged and recorded with the run."""
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and cpu_has_native_bf16(cpuinfo):
        return "bf16"
    return "fp32"
