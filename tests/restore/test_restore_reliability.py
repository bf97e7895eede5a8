"""Issue 18: extreme intensities, operators that RL cannot use, one API for every verb, tiles."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import psfmap
from psfmap.blind.verbs import deblur
from psfmap.operators import Convolution, ProductConvolution, from_psf_grid
from psfmap.operators.psf_map import PSFMap
from psfmap.psf import gaussian
from psfmap.restore import MAX_ITERATIONS, deconvolve, richardson_lucy, sparse_smooth
from psfmap.restore.tiled import restore_tiled, tile_bounds


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(3)
    sharp = np.zeros((48, 40))
    sharp[rng.integers(4, 44, 12), rng.integers(4, 36, 12)] = rng.uniform(1, 5, 12)
    blur = Convolution(gaussian(9, 1.5, dtype=torch.float64))
    blurred = blur(torch.from_numpy(sharp)).numpy().clip(0) + 0.01
    return blurred, blur


def _grid(image_shape=(150, 170), dtype=torch.float64):
    psfs = torch.stack([torch.stack([gaussian(11, 1 + 0.3 * i + 0.2 * j, dtype=dtype)
                                     for j in range(4)]) for i in range(3)])
    return psfs, from_psf_grid(psfs, image_shape)


# ---------------------------------------------------------------- intensity scale (defect 4)
@pytest.mark.parametrize("tv", [0.0, 0.01])
def test_rl_is_exactly_equivariant_to_power_of_two_scales(scene, tv):
    # the solver works on each frame scaled to a maximum in [0.5, 1): a power-of-two scale
    # of the input changes no digit of the result (ordinary images run the same iterates)
    blurred, blur = scene
    base = richardson_lucy(blurred, blur, iterations=8, tv=tv)
    for exponent in (-60, -7, 5, 90):
        scaled = richardson_lucy(np.ldexp(blurred, exponent), blur, iterations=8, tv=tv)
        np.testing.assert_array_equal(np.ldexp(scaled, -exponent), base)


@pytest.mark.parametrize("peak", [3e38, 1e-40, 1e-30])
def test_float32_extremes_restore_like_float64(scene, peak):
    blurred, blur = scene
    reference = richardson_lucy(blurred, blur, iterations=8, tv=0.01)
    image = (blurred * (peak / blurred.max())).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # peaks may saturate at 3.4e38
        for restored in (richardson_lucy(image, blur, iterations=8, tv=0.01),
                         deconvolve(image, blur, iterations=8)):
            assert restored.dtype == np.float32
            assert np.isfinite(restored).all()
            expected = np.minimum(reference * (peak / blurred.max()), np.finfo(np.float32).max)
            # subnormal inputs carry ~16 bits: their result is as good as their digits
            tolerance = 1e-3 if peak < 1e-38 else 1e-5
            np.testing.assert_allclose(restored, expected, rtol=0,
                                       atol=tolerance * expected.max())


def test_peaks_beyond_the_dtype_are_clipped_with_a_warning():
    blur = Convolution(gaussian(9, 2.0))
    spike = torch.zeros(32, 32)
    spike[16, 16] = 1.0
    blurred = blur(spike).double()
    image = (blurred * (3e38 / blurred.max())).to(torch.float32)  # RL sharpens the peak
    with pytest.warns(RuntimeWarning, match="exceeds the largest torch.float32 value"):
        restored = richardson_lucy(image, blur, iterations=30)
    assert torch.isfinite(restored).all()
    assert float(restored.max()) == float(torch.finfo(torch.float32).max)


@pytest.mark.parametrize("peak", [3e38, 1e-40])
def test_sparse_smooth_extremes_are_finite(scene, peak):
    blurred, blur = scene
    reference = sparse_smooth(blurred, blur, iterations=15)
    image = (blurred * (peak / blurred.max())).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = sparse_smooth(image, blur, iterations=15)
    assert np.isfinite(result.restored).all() and np.isfinite(result.objective).all()
    expected = np.minimum(reference.restored * (peak / blurred.max()), np.finfo(np.float32).max)
    np.testing.assert_allclose(result.restored, expected, rtol=0, atol=2e-3 * expected.max())


# ---------------------------------------------------------------- negative operators (defect 5)
def test_operators_with_negative_psfs_are_refused(scene):
    blurred, _ = scene
    shape = blurred.shape
    flipped = ProductConvolution(-gaussian(7, 1.0)[None], torch.ones(1, *shape))
    lobes = ProductConvolution(torch.stack([gaussian(7, 1.0), -0.5 * gaussian(7, 2.0)]),
                               torch.ones(2, *shape))
    for operator in (flipped, lobes):
        for verb in (richardson_lucy, deconvolve):
            with pytest.raises(ValueError, match="operator has a local PSF at pixel .* "
                                                 "Richardson–Lucy needs non-negative PSFs"):
                verb(blurred, operator, iterations=3)


def test_compressed_operators_with_negative_lobes_still_work():
    psfs = torch.stack([torch.stack([gaussian(21, 0.5 + 0.25 * (i + j), angle=0.3 * i)
                                     for j in range(8)]) for i in range(8)])
    grid = from_psf_grid(psfs, (96, 96))
    compressed = grid.compress(rank=2)
    corner = compressed.psf_at(0, 0)
    assert float((-corner).clamp(min=0).sum() / corner.abs().sum()) > 0.1  # lobes by design
    image = grid(torch.rand(96, 96, generator=torch.Generator().manual_seed(0))).clamp(min=0)
    restored = richardson_lucy(image, compressed, iterations=5, tv=0.01)
    assert torch.isfinite(restored).all() and float(restored.min()) >= 0


class _Matrixless:
    """An operator without psf_at: checked through H 1."""

    def __init__(self, sign: float, nan_after: int | None = None):
        self.sign, self.calls, self.nan_after = sign, 0, nan_after

    def forward(self, x):
        self.calls += 1
        if self.nan_after is not None and self.calls > self.nan_after:
            return x * float("nan")
        return self.sign * x

    def adjoint(self, y):
        return self.sign * y


def test_operator_without_psf_at_is_checked_and_rl_never_returns_nan(scene):
    blurred, _ = scene
    with pytest.raises(ValueError, match="maps a uniform image to values from -1"):
        richardson_lucy(blurred, _Matrixless(-1.0), iterations=2)
    # an operator that goes wrong during the iterations: the final guard names it
    with pytest.raises(ValueError, match="_Matrixless.*diverged.*nan times the light"):
        richardson_lucy(blurred, _Matrixless(1.0, nan_after=2), iterations=3)


# ---------------------------------------------------------------- one API for every verb
def _small_map(shape=(48, 40), width=1.5):
    return PSFMap(psfmap.psf.model("gaussian1", size=9), np.full((2, 2, 1), width),
                  image_shape=shape)


def test_lists_are_numpy_arrays_in_every_verb(scene):
    blurred, blur = scene
    listed = blurred.tolist()
    psf = blur.psf.numpy()
    as_float32 = blurred.astype(np.float32)
    for verb, expected in (
        (lambda x: richardson_lucy(x, blur, iterations=3), richardson_lucy(as_float32, blur,
                                                                           iterations=3)),
        (lambda x: deconvolve(x, psf, iterations=3), deconvolve(as_float32, psf, iterations=3)),
        (lambda x: deblur(x, psf_map=_small_map(), iterations=3),
         deblur(as_float32, psf_map=_small_map(), iterations=3)),
    ):
        result = verb(listed)
        assert isinstance(result, np.ndarray) and result.dtype == np.float32
        np.testing.assert_array_equal(result, expected)


def test_wrong_types_are_type_errors_naming_the_argument(scene):
    blurred, blur = scene
    calls = {
        "image": [lambda: richardson_lucy(None, blur), lambda: deconvolve(None, blur),
                  lambda: deblur(None, psf_map=_small_map())],
        "operator": [lambda: richardson_lucy(blurred, None),
                     lambda: deconvolve(blurred, None)],
        "psf_map": [lambda: deblur(blurred, psf_map=42)],
        "iterations": [lambda: richardson_lucy(blurred, blur, iterations=2.5),
                       lambda: deconvolve(blurred, blur, iterations="3"),
                       lambda: deblur(blurred, psf_map=_small_map(), iterations=None)],
    }
    for name, functions in calls.items():
        for function in functions:
            with pytest.raises(TypeError, match=name):
                function()


def test_iterations_are_bounded(scene):
    blurred, blur = scene
    for function in (lambda n: richardson_lucy(blurred, blur, iterations=n),
                     lambda n: deconvolve(blurred, blur, iterations=n),
                     lambda n: deconvolve(blurred, blur, "sparse-smooth", iterations=n),
                     lambda n: deblur(blurred, psf_map=_small_map(), iterations=n)):
        for bad in (10**30, MAX_ITERATIONS + 1, 0):
            with pytest.raises(ValueError, match="iterations must be an integer from 1 to "
                                                 "100000"):
                function(bad)


def test_psf_maps_far_outside_their_range_warn(scene):
    blurred, _ = scene
    family = psfmap.psf.model("gaussian1", size=9)
    params = np.full((2, 2, 1), 1.5)
    params[0, 0, 0] = family.high[0] + 2 * (family.high[0] - family.low[0])
    strange = PSFMap(family, params, image_shape=blurred.shape)
    for call in (lambda: deconvolve(blurred, strange, iterations=2),
                 lambda: deblur(blurred, psf_map=strange, iterations=2)):
        with pytest.warns(UserWarning, match=r"25% of the PSF map's 4 cells have parameters "
                                             r"far outside the family's range \(width in"):
            call()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        deconvolve(blurred, _small_map(), iterations=2)  # in range: silent


# ---------------------------------------------------------------- tiles for deconvolve
def test_tile_bounds_cover_the_axis_with_even_cores():
    bounds = tile_bounds(150, 64, 10)
    assert [(a, b) for a, b, _, _ in bounds] == [(0, 50), (50, 100), (100, 150)]
    assert [(c, d) for _, _, c, d in bounds] == [(0, 60), (40, 110), (90, 150)]


@pytest.mark.slow
def test_tiled_deconvolve_equals_one_piece_for_every_operator_kind():
    shape = (100, 120)
    psfs, grid = _grid(shape)
    rng = np.random.default_rng(0)
    # two frames of different brightness: each frame's tiles are relative to its own maximum
    sharp = rng.random((2, *shape)) * np.array([1.0, 300.0])[:, None, None]
    blurred = grid(torch.from_numpy(sharp)).numpy().clip(0)
    a_map = PSFMap(psfmap.psf.model("gaussian1", size=11),
                   np.linspace(1, 2, 12).reshape(3, 4, 1), image_shape=shape)
    dense = ProductConvolution(grid.kernels, grid.weights)  # no grid metadata: cropped
    for operator in (psfs, grid, dense, grid.compress(rank=3), a_map,
                     Convolution(gaussian(11, 2.0, dtype=torch.float64))):
        whole = deconvolve(blurred, operator, method="rl", iterations=8)
        tiled = deconvolve(blurred, operator, method="rl", iterations=8, tile=40, overlap=40)
        for frame in range(2):
            np.testing.assert_allclose(tiled[frame], whole[frame], rtol=0,
                                       atol=1e-5 * whole[frame].max())
    # RL-TV: the seams stay within the solver's own sensitivity
    whole = deconvolve(blurred, grid, iterations=8)
    tiled = deconvolve(blurred, grid, iterations=8, tile=40)
    assert np.linalg.norm(tiled - whole) < 1e-3 * np.linalg.norm(whole)
    # without context the seams show
    seams = deconvolve(blurred, grid, method="rl", iterations=8, tile=40, overlap=0)
    assert np.abs(seams - whole).max() > 1e-3 * whole.max()


@pytest.mark.slow
def test_tiled_deconvolve_crops_a_background_map_and_runs_sparse_smooth():
    _, grid = _grid()
    rng = np.random.default_rng(1)
    blurred = grid(torch.from_numpy(rng.random((150, 170)))).numpy().clip(0)
    background = np.full(blurred.shape, 0.05)
    background[:, 85:] = 0.1
    whole = deconvolve(blurred + background, grid, "rl", iterations=8, background=background)
    tiled = deconvolve(blurred + background, grid, "rl", iterations=8, background=background,
                       tile=64, overlap=64)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5 * whole.max())
    whole = deconvolve(blurred, grid, "sparse-smooth", iterations=30)
    tiled = deconvolve(blurred, grid, "sparse-smooth", iterations=30, tile=64)
    assert np.linalg.norm(tiled - whole) < 1e-2 * np.linalg.norm(whole)


def test_tiled_deconvolve_checks_its_arguments(scene):
    blurred, blur = scene
    for bad, error in (({"tile": 16}, ValueError), ({"tile": 1.5}, TypeError),
                       ({"tile": 32, "overlap": -1}, ValueError)):
        with pytest.raises(error, match="tile|overlap"):
            deconvolve(blurred, blur, **bad)
    with pytest.raises(ValueError, match="spans 32 px, less than the PSF"):
        deconvolve(np.ones((64, 64)), gaussian(33, 3.0), tile=32, overlap=0)
    with pytest.raises(TypeError, match="_Matrixless cannot be restricted to a tile"):
        deconvolve(np.ones((64, 64)), _Matrixless(1.0), tile=32)
    # a frame no larger than the tile is one piece: the same numbers as without tile
    np.testing.assert_array_equal(deconvolve(blurred, blur, tile=64),
                                  deconvolve(blurred, blur))


def test_restricted_operator_blurs_its_box_as_the_whole_field_does():
    _, grid = _grid()
    dense = ProductConvolution(grid.kernels, grid.weights)
    x = torch.zeros(150, 170, dtype=torch.float64)
    x[40:90, 60:130] = torch.rand(50, 70, generator=torch.Generator().manual_seed(2),
                                  dtype=torch.float64)

    def solve(piece, operator, region):
        top, bottom, left, right = region
        assert tuple(operator.image_shape) == (bottom - top, right - left)
        return operator.forward(piece)

    restored = restore_tiled(x, dense, solve, tile=None)
    np.testing.assert_allclose(restored, dense(x), atol=1e-12)
    # each box alone, without context: what the sources inside it give inside it
    boxes = restore_tiled(x[None], dense, lambda piece, op, region: op.forward(piece), 32, 0)
    (top, bottom, _, _), (left, right, _, _) = tile_bounds(150, 32, 0)[1], tile_bounds(170, 32,
                                                                                      0)[2]
    inside = torch.zeros_like(x)
    inside[top:bottom, left:right] = x[top:bottom, left:right]
    np.testing.assert_allclose(boxes[0, top:bottom, left:right],
                               dense(inside)[top:bottom, left:right], atol=1e-12)
    with pytest.raises(TypeError, match="solve must be callable"):
        restore_tiled(x, dense, None, tile=None)
