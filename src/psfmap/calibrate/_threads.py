"""Run small dense linear algebra single-threaded.

The matrices of the calibration (a few hundred rows) are too small to gain from threads, and
on a busy machine multi-threaded LAPACK calls on them are slower by an order of magnitude.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def single_thread():
    """Temporarily set ``torch.set_num_threads(1)``; restores the previous value."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
