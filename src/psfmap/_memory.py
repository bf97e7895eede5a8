"""How much memory a read may ask for: refuse a forged or corrupted size before allocating.

A file's header can claim any size (a TIFF 100000² pixels, a ``.psfmap`` archive of
terabytes). Asking NumPy for it gives an allocator error, or swaps the machine, so readers
check the size against :func:`available_memory` first and fail with one sentence.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get now, or ``None`` where it cannot be known.

    ``MemAvailable`` of ``/proc/meminfo`` (free memory plus the page cache the kernel can
    reclaim) on Linux, else the free physical pages (``os.sysconf``).
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not on this platform
        return None


def memory_problem(needed: int) -> str | None:
    """``None`` when ``needed`` bytes fit in the memory available, else the end of a
    sentence: ``"needs 40.0 GB of memory to read; 23.9 GB are available"``."""
    available = available_memory()
    if available is None or needed <= available:
        return None
    return (f"needs {needed / 1e9:.1f} GB of memory to read; {available / 1e9:.1f} GB are "
            "available")


def array_bytes(shape: tuple[int, ...], dtype: Any) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` (Python integers: no overflow)."""
    return math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize
