"""How much memory a read may ask for: refuse a forged or corrupted size before allocating.

A file's header can claim any size (a TIFF 100000² pixels, a ``.psfmap`` archive of
terabytes). Asking NumPy for it gives an allocator error, or swaps the machine, so readers
check the size against :func:`available_memory` first and fail with one sentence.

Solvers on large volumes keep their freed buffers for reuse while they run
(:func:`reuse_freed_memory`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import sys
import threading
from collections.abc import Iterator
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


# glibc's mallopt parameters (malloc.h), and the values restored after the block: the default
# number of mappings, and the ceiling of glibc's dynamic thresholds (32 MB mmap, 64 MB trim),
# which setting any of them switches off
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_MMAP_CEILING = 32 * 2**20  # glibc's largest mmap threshold: bigger buffers are always mapped
_AFTER = ((_M_MMAP_MAX, 65536), (_M_MMAP_THRESHOLD, _MMAP_CEILING),
          (_M_TRIM_THRESHOLD, 2 * _MMAP_CEILING))
# free memory kept at the top of the heap inside the block (glibc 2.36 trims anyway with
# 2**31 - 1: measured)
_KEEP = 2**30
_reuse_lock = threading.Lock()
_reuse_depth = 0


def _glibc() -> Any:
    """glibc's C library, or ``None`` (another C library or platform)."""
    return _loaded_glibc() if sys.platform.startswith("linux") else None


@functools.cache
def _loaded_glibc() -> Any:
    """The process's C library when it has glibc's ``mallopt`` (loaded once)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def worth_reusing(buffer_bytes: int | None, working_set_bytes: int) -> bool:
    """Whether a solver should run inside :func:`reuse_freed_memory`.

    ``PSFMAP_REUSE_MEMORY`` = ``1`` / ``0`` forces it on / off; otherwise (``auto``) when its
    buffers are above glibc's 32 MB mmap ceiling (an FFT solver's smaller ones are reused
    anyway; ``buffer_bytes=None`` skips this test, for a network whose many activations of a
    few MB each make glibc trim and fault in its heap again and again) and the
    working set is at most a sixth of the available memory: the heap's fragmentation took up
    to 1.7× a run's peak (``benchmarks/bench_volume_large.py``), so a run that needs more keeps
    the lower peak.
    """
    choice = os.environ.get("PSFMAP_REUSE_MEMORY", "auto").strip().lower()
    if choice in ("0", "1"):
        return choice == "1"
    if choice != "auto":
        raise ValueError(f"PSFMAP_REUSE_MEMORY must be 0, 1 or auto, got {choice!r}")
    available = available_memory()
    return ((buffer_bytes is None or buffer_bytes > _MMAP_CEILING) and available is not None
            and available >= 6 * working_set_bytes)


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """While the block runs, large freed buffers stay in the process and are reused.

    glibc returns every buffer over 32 MB to the kernel when it is freed, and the next one
    of that size costs a page fault per 4 KB and the zeroing of its pages: an iterative
    solver on a large volume allocates gigabytes of FFT buffers per iteration, and on a
    2-core virtual machine that churn took over half of Richardson–Lucy's time
    (``benchmarks/RESULTS.md``). Inside this block large buffers come from the heap and stay
    there when freed (``mallopt(M_MMAP_MAX, 0)``, ``M_TRIM_THRESHOLD`` 1 GB); at the end
    the thresholds are set to the ceiling of glibc's own dynamic ones (mappings above 32 MB,
    trim above 64 MB) and ``malloc_trim`` gives the memory back. The price is a higher
    peak resident memory (freed buffers of different sizes fragment the heap). Yields whether
    it took effect: ``False`` where the C library is not glibc. Nested blocks are allowed.
    """
    global _reuse_depth
    libc = _glibc()
    if libc is None:
        yield False
        return
    with _reuse_lock:
        if _reuse_depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, _KEEP)
        _reuse_depth += 1
    try:
        yield True
    finally:
        with _reuse_lock:
            _reuse_depth -= 1
            if _reuse_depth == 0:
                for parameter, value in _AFTER:
                    libc.mallopt(parameter, value)
                libc.malloc_trim(0)
