"""The operator contract (psfmap.operators.base.LinearOperator), checked on every operator kind
of the registry: adjointness, linearity, dtypes, batches, files, and the exact special cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from operator_registry import CASES, SHAPE, grid_operator, grid_psfs, psf_gaussian
from scipy.signal import fftconvolve

from psfmap.operators import Convolution, LinearOperator, ProductConvolution, from_psf_grid, load


def _random(shape, seed, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(params=CASES, ids=repr)
def case(request):
    return request.param


def test_satisfies_the_contract(case):
    op = case.build(torch.float64)
    assert isinstance(op, LinearOperator)
    for member in ("forward", "adjoint", "to", "extended", "save"):
        assert callable(getattr(op, member)), member
    image_shape = op.image_shape
    assert image_shape is None or tuple(image_shape) == case.out_shape
    axes = len(case.out_shape)  # 2D images or 3D volumes
    assert op.kernel_shape is None or len(op.kernel_shape) == axes
    if hasattr(op, "kernels"):
        assert op.dtype == torch.float64 and op.device == torch.device("cpu")
        assert op.kernel_shape == tuple(op.kernels.shape[-axes:])


def test_adjoint_is_exact_in_float64(case):
    op = case.build(torch.float64)
    x, y = _random((2,) + case.in_shape, 1), _random((2,) + case.out_shape, 2)
    lhs = float((op.forward(x) * y).sum())
    rhs = float((x * op.adjoint(y)).sum())
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


def test_is_linear(case):
    op = case.build(torch.float64)
    x, z = _random(case.in_shape, 3), _random(case.in_shape, 4)
    torch.testing.assert_close(op.forward(2.5 * x - 0.7 * z),
                               2.5 * op.forward(x) - 0.7 * op.forward(z), rtol=0, atol=1e-12)
    y = _random(case.out_shape, 5)
    torch.testing.assert_close(op.adjoint(-3 * y), -3 * op.adjoint(y), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keeps_the_dtype(case, dtype):
    op = case.build(dtype)
    x = torch.rand(case.in_shape, dtype=dtype)
    y = op.forward(x)
    assert y.dtype == dtype and tuple(y.shape) == case.out_shape
    assert op.adjoint(y).dtype == dtype
    reference = case.build(torch.float64).forward(x.double())
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(y.double(), reference, rtol=0, atol=tolerance)


def test_leading_axes_are_independent_frames(case):
    op = case.build(torch.float64)
    x = _random((2, 3) + case.in_shape, 6)
    y = _random((2, 3) + case.out_shape, 7)
    forward, adjoint = op.forward(x), op.adjoint(y)
    assert forward.shape == (2, 3) + case.out_shape
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(forward[i, j], op.forward(x[i, j]), rtol=0, atol=1e-12)
            torch.testing.assert_close(adjoint[i, j], op.adjoint(y[i, j]), rtol=0, atol=1e-12)


def test_save_load_round_trip(case, tmp_path):
    op = case.build(torch.float64)
    if not case.saveable:
        with pytest.raises(NotImplementedError, match="cannot be saved"):
            op.save(tmp_path / "op.psfmap")
        return
    loaded = load(op.save(tmp_path / "op.psfmap", metadata={"pixel_size": 0.1}))
    assert type(loaded) is type(op) and loaded.metadata["pixel_size"] == 0.1
    x = _random(case.in_shape, 8)
    torch.testing.assert_close(loaded.forward(x), op.forward(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(loaded.adjoint(x), op.adjoint(x), rtol=0, atol=1e-12)


def test_to_converts_where_supported(case):
    op = case.build(torch.float64)
    try:
        converted = op.to(torch.float32)
    except NotImplementedError as error:
        assert type(op).__name__ in str(error)
        return
    assert converted.dtype == torch.float32
    x = torch.rand(case.in_shape, dtype=torch.float64)
    torch.testing.assert_close(converted.forward(x.float()).double(), op.forward(x), rtol=0,
                               atol=1e-5)


# ---------------------------------------------------------------- exact special cases
def test_one_psf_everywhere_is_plain_zero_padded_convolution():
    psf = psf_gaussian(torch.float64)
    image = np.random.default_rng(0).random(SHAPE)
    expected = fftconvolve(image, psf.numpy(), mode="same")
    ones = torch.ones((1,) + SHAPE, dtype=torch.float64)
    operators = {
        "convolution": Convolution(psf),
        "fourier": ProductConvolution(psf[None], ones, engine="fourier"),
        "tiled": ProductConvolution(psf[None], ones, engine="tiled"),
        "grid": from_psf_grid(psf.expand(3, 2, -1, -1), SHAPE),
        "grid-fourier": from_psf_grid(psf.expand(3, 2, -1, -1), SHAPE).with_engine("fourier"),
    }
    for name, op in operators.items():
        np.testing.assert_allclose(op.forward(torch.from_numpy(image)).numpy(), expected,
                                   atol=1e-12, err_msg=name)


@pytest.mark.parametrize("engine", [None, "tiled", "fourier"])
def test_point_at_a_cell_centre_gives_that_cells_psf(engine):
    psfs = grid_psfs(torch.float64)
    half = psfs.shape[-1] // 2
    # 3 x 4 cells on 48 x 56: centres ((r + ½) 48 / 3, (c + ½) 56 / 4) = (8 + 16 r, 7 + 14 c),
    # on pixels
    op = from_psf_grid(psfs, (48, 56)).with_engine(engine)
    for r, c in [(0, 0), (1, 2), (2, 3)]:
        row, col = 8 + 16 * r, 7 + 14 * c
        point = torch.zeros(48, 56, dtype=torch.float64)
        point[row, col] = 1.0
        blurred = op.forward(point)
        window = blurred[row - half : row + half + 1, col - half : col + half + 1]
        torch.testing.assert_close(window, psfs[r, c], rtol=0, atol=1e-12)
        torch.testing.assert_close(op.psf_at(row, col), psfs[r, c], rtol=0, atol=1e-12)
        assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-12)


def test_engines_agree_and_auto_is_one_of_them():
    op = grid_operator(torch.float64)
    assert op.engine in ("tiled", "fourier")
    x = _random(SHAPE, 9)
    tiled, fourier = op.with_engine("tiled"), op.with_engine("fourier")
    torch.testing.assert_close(tiled.forward(x), fourier.forward(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(tiled.adjoint(x), fourier.adjoint(x), rtol=0, atol=1e-12)
    assert op.with_engine(None).engine == op.engine
    with pytest.raises(ValueError, match="engine must be one of"):
        op.with_engine("fft")
    with pytest.raises(ValueError, match="engine must be one of"):
        ProductConvolution(op.kernels, op.weights, engine="tiles")


def test_strategy_setter_is_a_deprecated_alias_of_the_engine():
    op = grid_operator(torch.float64)
    with pytest.warns(DeprecationWarning, match="engine="):
        op.strategy = "fourier-sum"
    assert op.engine == "fourier" and op.strategy == "fourier-sum"
