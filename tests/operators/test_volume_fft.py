"""The 3D inverse FFT never goes through ``torch.fft.irfftn`` over three axes.

torch 2.13 on CPU corrupts the heap in ``irfftn`` for volume shapes such as (40, 1024, 1024)
(issue 20). The volume operators invert with ``ifft2`` + ``irfft`` instead; the slow test runs
that inverse on the reported shapes in a subprocess, so that a crash fails the test instead of
killing the test run.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from psfmap.operators import Convolution, fft3d

SCRIPT = """
import sys, torch
from psfmap.operators.fft3d import irfft3, rfft3
shape = tuple(int(v) for v in sys.argv[1].split(","))
x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
back = irfft3(rfft3(x, shape), shape)
print(float((back - x).abs().max()))
"""


def test_the_operators_invert_without_irfftn(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.fft.irfftn must not be called by the volume operators")

    monkeypatch.setattr(torch.fft, "irfftn", refuse)
    op = Convolution(torch.ones(3, 3, 3) / 27)
    x = torch.zeros(5, 6, 7)
    x[2, 3, 3] = 27.0
    y = op.forward(x)
    assert float(y[1:4, 2:5, 2:5].min()) == pytest.approx(1.0, abs=1e-5)
    assert float(op.adjoint(y).sum()) == pytest.approx(27.0, rel=1e-5)  # away from edges
    assert fft3d.irfft3.__doc__ and "irfftn" in fft3d.irfft3.__doc__


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["40,1024,1024", "40,1000,1000"])
def test_reported_crashing_shapes_round_trip_in_a_subprocess(shape):
    result = subprocess.run([sys.executable, "-c", SCRIPT, shape], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-5
