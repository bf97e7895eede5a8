"""Richardson–Lucy on volumes with 3D operators: non-circulant, TV, tol, acceleration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import psfmap
from psfmap.operators import Convolution, from_psf_grid
from psfmap.psf import gaussian
from psfmap.restore import deconvolve, richardson_lucy
from psfmap.restore.volume import richardson_lucy_volume

SHAPE = (12, 24, 22)


def _psf3d(depth: int = 7, size: int = 9, sigma_z: float = 1.5, sigma: float = 1.2):
    z = torch.arange(depth, dtype=torch.float64) - depth // 2
    axial = torch.exp(-0.5 * (z / sigma_z) ** 2)
    psf = axial[:, None, None] * gaussian(size, sigma, dtype=torch.float64)[None]
    return psf / psf.sum()


def _object(seed: int = 0) -> torch.Tensor:
    """Small blobs (σ ≈ 1 voxel) on a dim background: smooth enough for RL's L2 error."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    x = np.full(SHAPE, 0.5)
    for _ in range(30):
        centre = [rng.uniform(1, n - 1) for n in SHAPE]
        x += 20.0 * np.exp(-0.5 * sum((g - c) ** 2 for g, c in zip(grids, centre)))
    return torch.from_numpy(x)


def _error(estimate, truth) -> float:
    return float(torch.linalg.vector_norm(estimate - truth) / torch.linalg.vector_norm(truth))


def test_volume_rl_sharpens_and_is_what_richardson_lucy_and_deconvolve_call():
    truth = _object()
    op = Convolution(_psf3d())
    blurred = op.forward(truth)
    restored = richardson_lucy(blurred, op, iterations=30)
    assert _error(restored, truth) < 0.8 * _error(blurred, truth)
    torch.testing.assert_close(restored, richardson_lucy_volume(blurred, op, iterations=30))
    # a (d, h, w) PSF array given to deconvolve restores as a volume too (NumPy in, NumPy out)
    out = deconvolve(blurred.numpy(), _psf3d().numpy(), method="rl", iterations=30)
    assert isinstance(out, np.ndarray) and out.shape == SHAPE
    np.testing.assert_allclose(out, restored.numpy(), rtol=1e-6, atol=1e-8)
    assert psfmap.deconvolve is not None


def test_extended_domain_removes_the_edge_ringing_in_z():
    # bright object through the whole depth: light from outside the stack enters the planes at
    # its ends; on the extended domain the end planes are restored as well as the middle ones
    truth = torch.full(SHAPE, 1.0, dtype=torch.float64)
    truth[:, 10:14, 9:13] = 20.0
    op = Convolution(_psf3d())
    big = torch.nn.functional.pad(truth[None], (0, 0, 0, 0, 6, 6), mode="replicate")[0]
    blurred = op.forward(big)[6:-6]
    extended = richardson_lucy(blurred, op, iterations=40)
    plain = richardson_lucy(blurred, op, iterations=40, extend=False)
    end = (slice(0, 2),)
    assert _error(extended[end], truth[end]) < 0.5 * _error(plain[end], truth[end])


def test_depth_variant_operator_beats_one_psf_on_depth_variant_blur():
    psfs = torch.stack([_psf3d(sigma=0.6, sigma_z=1.0), _psf3d(sigma=2.5, sigma_z=2.0)])
    psfs = psfs[:, None, None]
    op = from_psf_grid(psfs, SHAPE)
    truth = _object(1)
    blurred = op.forward(truth)
    variant = richardson_lucy(blurred, op, iterations=40)
    invariant = richardson_lucy(blurred, Convolution(op.psf_at(6, 12, 11)), iterations=40)
    assert _error(variant, truth) < 0.9 * _error(invariant, truth)


def test_acceleration_reaches_plain_rl_error_in_fewer_iterations():
    truth = _object(2)
    op = Convolution(_psf3d())
    blurred = op.forward(truth)
    plain = _error(richardson_lucy_volume(blurred, op, iterations=40), truth)
    fast = _error(richardson_lucy_volume(blurred, op, iterations=20, accelerate=True), truth)
    assert fast < plain


def test_tol_stops_early_and_tv_smooths_noise():
    truth = _object(3)
    op = Convolution(_psf3d())
    blurred = op.forward(truth)
    steps = []
    richardson_lucy(blurred, op, iterations=500, tol=1e-2,
                    callback=lambda i, change: steps.append(change))
    assert len(steps) < 500 and steps[-1] < 1e-2
    noisy = torch.poisson(blurred * 5, generator=torch.Generator().manual_seed(0)) / 5
    plain = richardson_lucy(noisy, op, iterations=30)
    smooth = richardson_lucy(noisy, op, iterations=30, tv=0.02)
    flat = (slice(None), slice(0, 4), slice(0, 4))  # a region of background only

    def roughness(v):
        return float(torch.diff(v, dim=-1).abs().mean())

    assert roughness(smooth) < roughness(plain) or float(smooth[flat].std()) < float(
        plain[flat].std())


def test_stacks_of_volumes_are_restored_independently():
    op = Convolution(_psf3d())
    a, b = op.forward(_object(4)), op.forward(_object(5))
    both = richardson_lucy(torch.stack([a, b]), op, iterations=10)
    torch.testing.assert_close(both[1], richardson_lucy(b, op, iterations=10))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: deconvolve(np.ones(SHAPE), np.ones((20, 5, 5)), method="rl"), "deeper than"),
        (lambda: richardson_lucy_volume(np.ones(SHAPE), gaussian(5, 1.0)), "2D PSF"),
        (lambda: richardson_lucy_volume(np.ones(SHAPE), Convolution(gaussian(5, 1.0))),
         "2D operator"),
        (lambda: richardson_lucy(np.ones((24, 22)), Convolution(_psf3d())), "volume"),
        (lambda: deconvolve(np.ones(SHAPE), _psf3d(), method="sparse-smooth"), "sparse-smooth"),
        (lambda: deconvolve(np.ones(SHAPE), _psf3d(), tile=64), "one piece"),
        (lambda: richardson_lucy_volume(-np.ones(SHAPE), _psf3d()), "negative"),
        (lambda: richardson_lucy(np.ones((5, 24, 22)), from_psf_grid(
            _psf3d()[None, None, None], SHAPE)), "acts on volumes"),
    ],
)
def test_bad_input_raises_one_clear_sentence(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
