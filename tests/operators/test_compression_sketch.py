"""Compression of large PSF grids through a randomized sketch: same rank, same operator and the
exact error, as the full eigendecomposition gives."""

import numpy as np
import pytest
import torch

import psfmap.operators.compression as compression
from psfmap.operators import from_psf_grid


def _gaussian_grid(gy: int, gx: int, size: int) -> np.ndarray:
    y, x = np.mgrid[: size, : size] - size // 2
    sigmas = np.linspace(0.8, 2.5, gy * gx).reshape(gy, gx)
    psfs = np.exp(-(x**2 + y**2)[None, None] / (2 * sigmas[..., None, None] ** 2))
    return (psfs / psfs.sum(axis=(-2, -1), keepdims=True)).astype(np.float32)


def _field_error(operator, compressed) -> float:
    """‖M − M_r‖_F / ‖M‖_F from the local PSFs at every pixel of a coarse probe set."""
    points = [(y, x) for y in range(0, 64, 7) for x in range(0, 64, 7)]
    exact = np.stack([np.asarray(operator.psf_at(y, x)) for y, x in points])
    approx = np.stack([np.asarray(compressed.psf_at(y, x)) for y, x in points])
    return float(np.linalg.norm(exact - approx) / np.linalg.norm(exact))


@pytest.mark.parametrize("energy", [0.99, 0.999, 0.99999])
def test_sketch_matches_exact(monkeypatch, energy):
    operator = from_psf_grid(_gaussian_grid(10, 10, 11), (64, 64))  # 100 kernels of 121 px
    assert min(operator.n_kernels, 121) > 2 * compression._SKETCH  # the sketch path runs
    sketched = operator.compress(energy=energy)
    monkeypatch.setattr(compression, "_SKETCH", 10**9)  # the exact path only
    exact = operator.compress(energy=energy)
    assert sketched.n_kernels == exact.n_kernels
    assert sketched.compression_error == pytest.approx(exact.compression_error, rel=1e-6,
                                                       abs=1e-12)
    image = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(1))
    a, b = sketched.forward(image), exact.forward(image)
    assert float((a - b).norm() / b.norm()) < 1e-5
    assert sketched.compression_error <= np.sqrt(1 - energy) + 1e-9


def test_sketch_falls_back_when_the_energy_needs_many_terms(monkeypatch):
    # random PSFs spread their energy over many terms, more than half the sketch holds: the
    # exact path decides
    psfs = np.random.default_rng(0).random((10, 10, 11, 11)).astype(np.float32)
    operator = from_psf_grid(psfs / psfs.sum(axis=(-2, -1), keepdims=True), (64, 64))
    calls = []
    exact_factors = compression._kernel_factors
    monkeypatch.setattr(compression, "_kernel_factors",
                        lambda k: calls.append(1) or exact_factors(k))
    compressed = operator.compress(energy=0.999)
    assert calls and compressed.n_kernels > compression._SKETCH // 2
    assert compressed.compression_error <= np.sqrt(1 - 0.999) + 1e-9
    assert _field_error(operator, compressed) < 2 * compressed.compression_error
