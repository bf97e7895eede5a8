"""Sparse + smooth restoration (Debarnot, Mangeat & Weiss 2021, eq. 13) and spike centroids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psfmap.operators import Convolution, from_psf_grid
from psfmap.psf import gaussian
from psfmap.restore import SparseSmoothResult, laplacian, sparse_smooth, spike_centroids


def bead_scene(rng: np.random.Generator, shape=(64, 64), n_beads=9, spacing=9.0, margin=6.0):
    """Sub-pixel beads (pixel-integrated Gaussians, σ = 0.4 px) on a smooth background."""
    positions = []
    while len(positions) < n_beads:
        candidate = rng.uniform(margin, np.array(shape) - 1 - margin)
        if all(np.hypot(*(candidate - p)) >= spacing for p in positions):
            positions.append(candidate)
    positions = np.array(positions)
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    background = 0.6 + 0.3 * np.sin(rows / 17.0 + 0.4) * np.cos(cols / 23.0)
    beads = np.zeros(shape)
    fine = 5  # super-sampling per pixel side
    offsets = (np.arange(fine) + 0.5) / fine - 0.5
    for row, col in positions:
        for dy in offsets:
            for dx in offsets:
                beads += np.exp(-((rows + dy - row) ** 2 + (cols + dx - col) ** 2) / (2 * 0.4**2))
    beads *= 25.0 / beads.sum() * n_beads  # 25 units of light per bead
    return background, beads, positions


def varying_blur(shape) -> object:
    widths = torch.linspace(0.9, 1.8, 9, dtype=torch.float64)
    psfs = torch.stack([gaussian(13, float(w), dtype=torch.float64) for w in widths])
    return from_psf_grid(psfs.reshape(3, 3, 13, 13), shape)


@pytest.mark.slow
def test_beads_on_smooth_background_under_space_variant_blur(rng):
    background, beads, positions = bead_scene(rng)
    operator = varying_blur(background.shape)
    blurred = operator(torch.from_numpy(background + beads)).numpy()
    noisy = rng.poisson(blurred * 100) / 100

    result = sparse_smooth(noisy, operator, smooth=100.0, sparse=0.05, iterations=300)
    assert isinstance(result, SparseSmoothResult)
    assert result.smooth.shape == result.sparse.shape == noisy.shape
    assert result.smooth.dtype == noisy.dtype and result.smooth.min() >= 0
    assert result.sparse.min() >= 0
    np.testing.assert_allclose(result.restored, result.smooth + result.sparse)

    centroids = spike_centroids(result.sparse, threshold=0.1)
    assert len(centroids) == len(positions)
    distances = np.hypot(*(centroids[:, None, :] - positions[None]).transpose(2, 0, 1))
    nearest = distances.min(axis=0)
    assert np.all(nearest < 0.5), f"centroid errors {np.round(nearest, 2)}"
    assert len(set(distances.argmin(axis=0))) == len(positions)  # one spike per bead

    # the smooth part is the autofluorescence, not the beads
    inner = (slice(8, -8), slice(8, -8))
    error = np.abs(result.smooth - background)[inner].mean()
    assert error < 0.1 * background.mean()
    # most of the bead light is in the spikes (the L1 penalty shrinks them somewhat)
    assert 0.6 * beads.sum() < result.sparse.sum() < 1.05 * beads.sum()


def test_objective_decreases_with_iterations(rng):
    background, beads, _ = bead_scene(rng, shape=(40, 40), n_beads=3, spacing=10.0)
    operator = Convolution(gaussian(9, 1.2, dtype=torch.float64))
    image = operator(torch.from_numpy(background + beads)).numpy()
    objectives = [
        float(sparse_smooth(image, operator, iterations=n).objective) for n in (5, 50, 200)
    ]
    assert objectives[0] > objectives[1] > objectives[2]


def test_batch_dtype_and_torch(rng):
    background, beads, _ = bead_scene(rng, shape=(32, 32), n_beads=2, spacing=10.0)
    operator = Convolution(gaussian(7, 1.0))
    frames = np.stack([background + beads, 2 * background]).astype(np.float32)
    result = sparse_smooth(frames, operator, iterations=20)
    assert result.sparse.shape == frames.shape and result.sparse.dtype == np.float32
    assert result.objective.shape == (2,)
    single = sparse_smooth(frames[1], operator, iterations=20)
    np.testing.assert_allclose(result.sparse[1], single.sparse, rtol=1e-4, atol=1e-6)
    as_torch = sparse_smooth(torch.from_numpy(frames[0]), operator, iterations=5)
    assert isinstance(as_torch.smooth, torch.Tensor)


def test_operator_stays_usable_by_autograd_afterwards():
    operator = varying_blur((24, 24))
    sparse_smooth(np.ones((24, 24)), operator, iterations=3)
    x = torch.rand(24, 24, dtype=torch.float64, requires_grad=True)
    operator(x).sum().backward()
    assert x.grad is not None


def test_laplacian_is_self_adjoint_and_bounded():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(20, 24, generator=generator, dtype=torch.float64)
    y = torch.rand(20, 24, generator=generator, dtype=torch.float64)
    assert torch.allclose((laplacian(x) * y).sum(), (x * laplacian(y)).sum())
    checker = (torch.arange(20)[:, None] + torch.arange(24)[None]) % 2 * 2.0 - 1.0
    ratio = torch.linalg.vector_norm(laplacian(checker)) / torch.linalg.vector_norm(checker)
    assert float(ratio) <= 8.0


def test_spike_centroids_sub_pixel():
    sparse = np.zeros((20, 20))
    sparse[5, 5], sparse[5, 6] = 3.0, 1.0  # centroid (5, 5.25)
    sparse[14, 10] = 2.0
    centroids = spike_centroids(sparse)
    np.testing.assert_allclose(centroids, [[5.0, 5.25], [14.0, 10.0]])
    assert spike_centroids(np.zeros((8, 8))).shape == (0, 2)


def test_bad_input():
    operator = Convolution(gaussian(5, 1.0))
    image = np.ones((16, 16))
    with pytest.raises(ValueError, match="smooth"):
        sparse_smooth(image, operator, smooth=float("nan"))
    with pytest.raises(ValueError, match="sparse"):
        sparse_smooth(image, operator, sparse=-1.0)
    with pytest.raises(ValueError, match="iterations"):
        sparse_smooth(image, operator, iterations=0)
    with pytest.raises(ValueError, match="negative"):
        sparse_smooth(-image, operator)
    with pytest.raises(ValueError, match="larger than the image"):
        sparse_smooth(np.ones((8, 8)), Convolution(gaussian(11, 2.0)))
    with pytest.raises(ValueError, match="threshold"):
        spike_centroids(image, threshold=1.5)
    with pytest.raises(ValueError, match="shape"):
        spike_centroids(np.ones((2, 4, 4)))
