"""Dask arrays in, dask arrays out (issue 24): lazy, same chunks, the same result as in memory
where the arithmetic is the same, small seams elsewhere, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import psfmap
from psfmap.operators import Convolution, from_psf_grid
from psfmap.psf import gaussian
from psfmap.restore.chunked import default_halo

da = pytest.importorskip("dask.array")


def grid(rows: int = 3, cols: int = 3, size: int = 11) -> torch.Tensor:
    return torch.stack([torch.stack([gaussian(size, 1.0 + 0.4 * r + 0.2 * c)
                                     for c in range(cols)]) for r in range(rows)])


@pytest.fixture
def blurred(rng) -> np.ndarray:
    """A 2-frame 160 x 176 noisy blurred scene, float32."""
    sharp = rng.random((2, 160, 176)) * 40 + 5
    sharp[:, rng.integers(0, 160, 30), rng.integers(0, 176, 30)] += 200
    y = from_psf_grid(grid(), (160, 176))(torch.from_numpy(sharp).float()).numpy()
    return rng.poisson(np.clip(y, 0, None)).astype(np.float32)


def test_dask_in_gives_lazy_dask_out_with_the_same_chunks(blurred):
    image = da.from_array(blurred, chunks=(1, 80, 88))
    out = psfmap.deconvolve(image, grid(), "rl", 3)
    assert isinstance(out, da.Array)
    assert out.chunks == image.chunks and out.dtype == np.float32
    assert out.shape == blurred.shape


def test_whole_frame_chunks_equal_the_in_memory_result_bitwise(blurred):
    image = da.from_array(blurred, chunks=(1, 160, 176))  # a time-lapse: one chunk per frame
    chunked = psfmap.deconvolve(image, grid(), "rl-tv", 5).compute(scheduler="threads")
    memory = psfmap.deconvolve(blurred, grid(), "rl-tv", 5)
    assert np.array_equal(chunked, memory)


def test_chunks_equal_in_memory_tiles_of_the_same_boxes_bitwise(blurred):
    frame = blurred[0, :128, :128]
    chunked = psfmap.deconvolve(da.from_array(frame, chunks=64), grid(), "rl-tv", 5,
                                overlap=32).compute(scheduler="threads")
    tiled = psfmap.deconvolve(frame, grid(), "rl-tv", 5, tile=64, overlap=32)
    assert np.array_equal(chunked, tiled)


def test_float64_chunks_stay_within_1e_6_of_one_piece(blurred):
    y = blurred[0].astype(np.float64)
    psfs = grid().double()
    whole = psfmap.deconvolve(y, psfs, "rl-tv", 10)
    parts = psfmap.deconvolve(da.from_array(y, chunks=(80, 88)), psfs, "rl-tv", 10,
                              overlap=48).compute()
    assert parts.dtype == np.float64
    assert np.linalg.norm(parts - whole) / np.linalg.norm(whole) < 1e-6


def test_seams_rl_tv_default_halo(blurred):
    """The issue's target on a small field: ≤ 0.5 % relative L2, and the difference within
    8 px of the chunk borders no more than twice the difference elsewhere."""
    y = blurred[0]
    whole = psfmap.deconvolve(y, grid(), "rl-tv", 20)
    parts = psfmap.deconvolve(da.from_array(y, chunks=(80, 88)), grid(), "rl-tv", 20)
    diff = parts.compute() - whole
    assert np.linalg.norm(diff) / np.linalg.norm(whole) <= 5e-3
    near = np.zeros(y.shape, bool)
    near[72:88, :] = True
    near[:, 80:96] = True
    rms_near = np.sqrt(np.mean(diff[near] ** 2))
    rms_far = np.sqrt(np.mean(diff[~near] ** 2))
    assert rms_near <= 2 * rms_far + 1e-6 * float(np.abs(whole).max())


def test_convolution_and_dense_product_convolution(blurred):
    y = blurred[0, :96, :96]
    psf = gaussian(9, 1.5)
    memory = psfmap.deconvolve(y, Convolution(psf), "rl", 4, tile=48, overlap=24)
    chunked = psfmap.deconvolve(da.from_array(y, chunks=48), Convolution(psf), "rl", 4,
                                overlap=24).compute()
    assert np.array_equal(chunked, memory)
    dense = from_psf_grid(grid(), (96, 96)).compress(rank=2)
    memory = psfmap.deconvolve(y, dense, "rl", 4, tile=48, overlap=24)
    chunked = psfmap.deconvolve(da.from_array(y, chunks=48), dense, "rl", 4,
                                overlap=24).compute()
    assert np.array_equal(chunked, memory)


def test_sparse_smooth_and_background(blurred):
    y = blurred[0, :96, :96]
    memory = psfmap.deconvolve(y, grid(), "rl", 3, background=2.0, tile=48, overlap=24)
    chunked = psfmap.deconvolve(da.from_array(y, chunks=48), grid(), "rl", 3, background=2.0,
                                overlap=24).compute()
    assert np.array_equal(chunked, memory)
    whole = psfmap.deconvolve(y, grid(), "sparse-smooth", 5)
    frame = psfmap.deconvolve(da.from_array(y, chunks=-1), grid(), "sparse-smooth", 5)
    assert np.array_equal(frame.compute(), whole)


def test_chunks_smaller_than_the_halo_are_rechunked_with_a_note(blurred):
    image = da.from_array(blurred[0], chunks=(20, 22))
    with pytest.warns(UserWarning, match=r"smaller than the halo of 40 px.*rechunked"):
        out = psfmap.deconvolve(image, grid(), "rl", 2, overlap=40)
    assert out.chunks == image.chunks  # the result keeps the caller's chunks
    assert np.isfinite(out.compute()).all()


def test_tile_with_a_dask_array_is_refused(blurred):
    with pytest.raises(ValueError, match="tile applies to in-memory images"):
        psfmap.deconvolve(da.from_array(blurred), grid(), "rl", 2, tile=64)


def test_default_halo_grows_with_psf_and_iterations():
    assert default_halo(11, 20) == 64
    assert default_halo(65, 20) == 130
    assert default_halo(11, 80) == 128
