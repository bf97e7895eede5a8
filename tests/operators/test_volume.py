"""3D operators: brute-force equality, scipy equality, grids, compression, files, bad input.

The contract tests (adjointness, linearity, dtypes, frames, files) run on the volume cases of
``operator_registry.py``; this file checks what is specific to volumes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from operator_registry import VOLUME, volume_dense, volume_psfs
from scipy.signal import fftconvolve

from psfmap.operators import Convolution, ProductConvolution, from_psf_grid, load
from psfmap.operators.fft3d import irfft3, rfft3
from psfmap.operators.volume import VolumeConvolution, VolumeProductConvolution


def _random(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _brute_force(op, x):
    """``y = Σ_v x[v] · psf_at(v)`` placed at ``v``: the space-variant convolution by definition."""
    d, h, w = op.kernel_shape
    depth, height, width = x.shape
    out = torch.zeros((depth + d, height + h, width + w), dtype=x.dtype)
    for z in range(depth):
        for r in range(height):
            for c in range(width):
                out[z:z + d, r:r + h, c:c + w] += x[z, r, c] * op.psf_at(z, r, c)
    return out[d // 2:d // 2 + depth, h // 2:h // 2 + height, w // 2:w // 2 + width]


@pytest.mark.parametrize("build", ["grid", "dense", "compressed"])
def test_equals_the_voxel_by_voxel_space_variant_convolution(build):
    op = {"grid": lambda: from_psf_grid(volume_psfs(torch.float64), VOLUME),
          "dense": lambda: volume_dense(torch.float64),
          "compressed": lambda: from_psf_grid(volume_psfs(torch.float64), VOLUME).compress(2),
          }[build]()
    x = _random(VOLUME, 0)
    torch.testing.assert_close(op.forward(x), _brute_force(op, x), rtol=0, atol=1e-12)


def test_one_psf_equals_scipy_fftconvolve_for_every_form():
    psf = volume_psfs(torch.float64)[0, 0, 0]
    x = _random(VOLUME, 1)
    expected = torch.from_numpy(fftconvolve(x.numpy(), psf.numpy(), mode="same"))
    ones = torch.ones((1,) + VOLUME, dtype=torch.float64)
    forms = {
        "convolution": Convolution(psf),
        "dense": ProductConvolution(psf[None], ones),
        "grid": from_psf_grid(psf.expand(3, 2, 2, -1, -1, -1), VOLUME),
    }
    for name, op in forms.items():
        torch.testing.assert_close(op.forward(x), expected, rtol=0, atol=1e-12, msg=name)
    # the adjoint is the correlation: convolution with the flipped PSF
    flipped = np.ascontiguousarray(psf.numpy()[::-1, ::-1, ::-1])
    # with odd sizes the flipped kernel's centre stays at the centre
    torch.testing.assert_close(forms["convolution"].adjoint(x),
                               torch.from_numpy(fftconvolve(x.numpy(), flipped, mode="same")),
                               rtol=0, atol=1e-12)


def test_constructors_dispatch_on_the_number_of_axes():
    psf = volume_psfs(torch.float32)[0, 0, 0]
    assert isinstance(Convolution(psf), VolumeConvolution)
    assert isinstance(Convolution(psf[0]), Convolution)  # a 2D PSF stays 2D
    op = ProductConvolution(psf[None], torch.ones((1,) + VOLUME))
    assert isinstance(op, VolumeProductConvolution) and op.image_shape == VOLUME
    grid = from_psf_grid(volume_psfs(torch.float32, (3, 1, 1)), (1,) + VOLUME)  # stack shape
    assert grid.is_factored and grid.n_kernels == 3 and grid.image_shape == VOLUME


def test_grid_weights_are_a_trilinear_partition_of_unity():
    psfs = volume_psfs(torch.float64, (3, 2, 2))
    op = from_psf_grid(psfs, (12, 12, 10))
    torch.testing.assert_close(op.weights.sum(0), torch.ones(12, 12, 10, dtype=torch.float64))
    # cell (a, b, c) is centred at ((a + ½) D / gz, ...): on (6, 8, 4) at z 1, 3, 5; y 2, 6; x 1, 3
    op = from_psf_grid(psfs, (6, 8, 4))
    for (a, b, c), voxel in (((0, 0, 0), (1, 2, 1)), ((2, 1, 1), (5, 6, 3)),
                             ((1, 0, 1), (3, 2, 3))):
        torch.testing.assert_close(op.psf_at(*voxel), psfs[a, b, c], rtol=0, atol=1e-12)


def test_compression_error_and_rank():
    op = from_psf_grid(volume_psfs(torch.float64, (2, 2, 1)), VOLUME)
    full = op.compress(rank=4)
    assert full.compression_error < 1e-6
    x = _random(VOLUME, 2)
    torch.testing.assert_close(full.forward(x), op.forward(x), rtol=0, atol=1e-10)
    two = op.compress(rank=2)
    assert two.n_kernels == 2 and 0 < two.compression_error < 1
    assert two.is_factored and two.metadata["compressed_from"] == 4
    dense_two = volume_dense(torch.float64).compress(energy=0.5)
    assert dense_two.n_kernels < 3


def test_extended_operator_replicates_the_edge_psfs():
    op = from_psf_grid(volume_psfs(torch.float64), VOLUME)
    wide = op.extended((2, 1, 3))
    assert wide.image_shape == (VOLUME[0] + 4, VOLUME[1] + 2, VOLUME[2] + 6)
    torch.testing.assert_close(wide.psf_at(0, 0, 0), op.psf_at(0, 0, 0))
    torch.testing.assert_close(wide.psf_at(4, 3, 5), op.psf_at(2, 2, 2))


def test_files_keep_factored_grids_factored(tmp_path):
    op = from_psf_grid(volume_psfs(torch.float32), VOLUME)
    path = op.save(tmp_path / "volume.psfmap", metadata={"z_step": 0.3})
    loaded = load(path)
    assert isinstance(loaded, VolumeProductConvolution) and loaded.is_factored
    assert loaded.metadata["z_step"] == 0.3 and loaded.metadata["grid"] == [2, 2, 1]
    assert VolumeProductConvolution.load(path).image_shape == VOLUME
    x = torch.rand(VOLUME)
    torch.testing.assert_close(loaded.forward(x), op.forward(x))


def test_inverse_fft_matches_irfftn_on_small_volumes():
    x = _random((6, 10, 9), 3)
    spectrum = rfft3(x, (8, 10, 12))
    torch.testing.assert_close(irfft3(spectrum, (8, 10, 12)),
                               torch.fft.irfftn(spectrum, s=(8, 10, 12)), rtol=0, atol=1e-12)


def test_gradients_flow_to_3d_kernels():
    kernels = volume_psfs(torch.float64, (2, 1, 1)).reshape(2, *volume_psfs(
        torch.float64).shape[3:]).clone().requires_grad_(True)
    op = ProductConvolution(kernels, torch.rand((2,) + VOLUME, dtype=torch.float64))
    op.forward(_random(VOLUME, 4)).square().sum().backward()
    assert kernels.grad is not None and float(kernels.grad.abs().sum()) > 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ProductConvolution(torch.rand(1, 3, 3, 3), torch.rand(1, 8, 8)),
         r"\(I, D, H, W\)"),
        (lambda: ProductConvolution(torch.rand(2, 3, 3, 3), torch.rand(1, 4, 8, 8)), "same number"),
        (lambda: Convolution(torch.rand(3, 3, 3)).forward(torch.rand(8, 8)), "volume"),
        (lambda: from_psf_grid(torch.rand(2, 1, 1, 3, 3, 3), (8, 8)), r"\(D, H, W\)"),
        (lambda: from_psf_grid(torch.rand(9, 1, 1, 3, 3, 3), (4, 8, 8)), "at least"),
        (lambda: from_psf_grid(torch.rand(1, 1, 1, 21, 3, 3), (4, 8, 8)), "planes deep"),
        (lambda: volume_dense(torch.float64).psf_at(7, 0, 0), "outside"),
        (lambda: volume_dense(torch.float64).extended(-1), "margin"),
        (lambda: volume_dense(torch.float64).forward(torch.rand(7, 12, 11)), "volume shape"),
        (lambda: ProductConvolution(torch.rand(1, 3, 3, 3), torch.rand(1, 4, 8, 8),
                                    engine="tiled"), "engine"),
    ],
)
def test_bad_input_raises_one_clear_sentence(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


@pytest.mark.parametrize("engine", ["slabs", "depth"])
def test_slab_and_depth_engines_equal_the_fourier_sum_on_depth_grids(engine):
    psfs = volume_psfs(torch.float64, (4, 1, 1))
    op = from_psf_grid(psfs, (20, 12, 10))
    assert op.engine == "depth" and op.z_spans[0] == (0, 8)
    operators = [op, op.extended((2, 3, 1)), op.compress(rank=2).extended((1, 2, 2))]
    if engine == "slabs":  # dense weights: slabs only (the depth engine needs factors)
        operators.append(ProductConvolution(op.kernels, op.weights))
        assert operators[-1].engine == "slabs"
    for operator in operators:
        shape = operator.image_shape
        x, y = _random((2,) + shape, 5), _random((2,) + shape, 6)
        fourier, fast = operator.with_engine("fourier"), operator.with_engine(engine)
        torch.testing.assert_close(fast.forward(x), fourier.forward(x), rtol=0, atol=1e-12)
        torch.testing.assert_close(fast.adjoint(y), fourier.adjoint(y), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="engine"):
        op.with_engine("tiled")
    with pytest.raises(ValueError, match="vary in z only"):
        from_psf_grid(volume_psfs(torch.float64), VOLUME).with_engine("depth")


def test_depth_engine_over_its_spectra_budget_and_in_row_chunks_gives_the_same_result(
        monkeypatch):
    # beyond SPECTRA_CACHE_BYTES only the kernels' lateral spectra are cached and the
    # transform along z is redone at each use; CHUNK_BYTES of 1 runs the z transforms one
    # lateral-frequency row at a time: same operator, less memory
    from psfmap.operators import volume_slabs

    monkeypatch.setattr(volume_slabs, "SPECTRA_CACHE_BYTES", 0)
    monkeypatch.setattr(volume_slabs, "CHUNK_BYTES", 1)
    op = from_psf_grid(volume_psfs(torch.float64, (4, 1, 1)), (20, 12, 10)).extended((2, 3, 1))
    x, y = _random((2,) + op.image_shape, 7), _random((2,) + op.image_shape, 8)
    fourier, depth = op.with_engine("fourier"), op.with_engine("depth")
    torch.testing.assert_close(depth.forward(x), fourier.forward(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(depth.adjoint(y), fourier.adjoint(y), rtol=0, atol=1e-12)
    assert any(key[0] == "depth-lateral" for key in op._cache)
