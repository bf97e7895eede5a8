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
from psfmap.operators import fft3d
from psfmap.operators.fft3d import irfft3, rfft3
fft3d.SCIPY_MIN_SIZE = 0 if sys.argv[2] == "scipy" else 1 << 62
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


def test_scipy_and_torch_transforms_agree(monkeypatch):
    """Large CPU volumes go through scipy.fft, the rest through torch: the same numbers."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(2, 5, 12, 9, generator=generator, dtype=torch.float64)
    fft_shape = (8, 16, 12)
    monkeypatch.setattr(fft3d, "SCIPY_MIN_SIZE", 1 << 62)
    reference = fft3d.rfft3(x, fft_shape)
    lateral = fft3d.rfft2(x, (16, 12))
    monkeypatch.setattr(fft3d, "SCIPY_MIN_SIZE", 0)
    spectrum = fft3d.rfft3(x, fft_shape)
    torch.testing.assert_close(spectrum, reference)
    torch.testing.assert_close(fft3d.irfft3(spectrum, fft_shape)[..., :5, :12, :9], x)
    torch.testing.assert_close(fft3d.rfft2(x, (16, 12)), lateral)
    torch.testing.assert_close(fft3d.irfft2(lateral, (16, 12))[..., :12, :9], x)
    assert fft3d.rfft3(x.float(), fft_shape).dtype == torch.complex64  # precision kept
    x.requires_grad_(True)  # autograd stays with torch, whatever the size
    fft3d.irfft3(fft3d.rfft3(x, fft_shape), fft_shape).sum().backward()
    assert x.grad is not None


@pytest.mark.slow
@pytest.mark.parametrize("route", ["torch", "scipy"])
@pytest.mark.parametrize("shape", ["40,1024,1024", "40,1000,1000"])
def test_reported_crashing_shapes_round_trip_in_a_subprocess(shape, route):
    result = subprocess.run([sys.executable, "-c", SCRIPT, shape, route], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-5
