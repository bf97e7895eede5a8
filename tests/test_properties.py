"""Property-based tests (issue 18): every public verb and operator (the Deep-Blur and blind
map verbs included), on random shapes, dtypes, scales and NaN/Inf placements, gives either a
finite result of the documented kind and dtype or a ValueError/TypeError whose message names
the argument."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import psfmap
from psfmap.blind.verbs import deblur
from psfmap.metrics import snr, ssim
from psfmap.operators import Convolution, ProductConvolution, from_psf_grid
from psfmap.operators.psf_map import PSFMap
from psfmap.psf import gaussian
from psfmap.restore import deconvolve, richardson_lucy

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
DTYPES = [np.float16, np.float32, np.float64, np.int32, np.uint8, np.bool_]
BLUR = Convolution(gaussian(3, 0.8))


@st.composite
def images(draw, min_side=0, max_side=12, ndim=(1, 2, 3)):
    """Random arrays: shape (possibly empty or 1 px), dtype, scale 1e-30..3e38, NaN/Inf."""
    dims = draw(st.sampled_from(ndim))
    shape = tuple(draw(st.integers(min_side, max_side)) for _ in range(dims))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    values = np.random.default_rng(seed).random(shape)
    if np.issubdtype(dtype, np.floating):
        exponent = draw(st.floats(-30, 38.4))
        values = values * 10.0**exponent
        if values.size and draw(st.booleans()) and draw(st.booleans()):
            values.flat[draw(st.integers(0, values.size - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf]))
        with np.errstate(over="ignore"):
            return values.astype(dtype)
    return (values * 200).astype(dtype)


def _documented(error: Exception, *names: str) -> None:
    """A documented failure: ValueError/TypeError naming one of the arguments."""
    assert isinstance(error, (ValueError, TypeError)), repr(error)
    assert any(name in str(error) for name in names), str(error)


def _check_restored(result, image) -> None:
    assert isinstance(result, np.ndarray)
    assert result.shape == image.shape
    expected = image.dtype if np.issubdtype(image.dtype, np.floating) else np.float32
    assert result.dtype == expected
    assert np.isfinite(result).all()


@SETTINGS
@given(images())
def test_richardson_lucy_and_deconvolve_are_finite_or_refuse(image):
    for verb in (lambda x: richardson_lucy(x, BLUR, iterations=2, tv=0.01),
                 lambda x: deconvolve(x, BLUR, iterations=2)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # peaks clipped at the max
                result = verb(image)
        except Exception as error:  # noqa: BLE001 - the property is about which errors
            _documented(error, "image", "operator", "PSF")
            continue
        _check_restored(result, image)


@SETTINGS
@given(images(min_side=0, max_side=20, ndim=(2,)))
def test_deblur_with_a_small_map_is_finite_or_refuses(image):
    shape = image.shape if min(image.shape) >= 2 else (2, 2)
    psf_map = PSFMap(psfmap.psf.model("gaussian1", size=3), np.full((1, 1, 1), 1.0),
                     image_shape=shape)
    try:
        result = deblur(image, psf_map=psf_map, iterations=2)
    except Exception as error:  # noqa: BLE001
        _documented(error, "image", "psf_map", "PSF")
        return
    _check_restored(result, image)


@SETTINGS
@given(images(min_side=0, max_side=10, ndim=(1, 2, 3)), st.integers(1, 3), st.integers(1, 5))
def test_product_convolution_forward_and_adjoint(image, terms, kernel):
    weights = torch.rand(terms, 8, 8, generator=torch.Generator().manual_seed(terms))
    kernels = torch.rand(terms, kernel, kernel, generator=torch.Generator().manual_seed(kernel))
    operator = ProductConvolution(kernels, weights)
    for method in (operator.forward, operator.adjoint):
        try:
            result = method(image)
        except Exception as error:  # noqa: BLE001
            _documented(error, "x", "y", "image", "shape")
            continue
        assert isinstance(result, torch.Tensor) and result.shape[-2:] == (8, 8)
        if np.isfinite(image.astype(np.float64)).all() and np.abs(image.astype(
                np.float64)).max(initial=0) < 1e30:
            assert torch.isfinite(result).all()


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 4), st.sampled_from([1, 3, 5]),
       st.integers(0, 12), st.integers(0, 12), st.floats(0.3, 3))
def test_from_psf_grid_shapes_and_refusals(gy, gx, size, height, width, sigma):
    psfs = gaussian(size, sigma).expand(gy, gx, size, size)
    try:
        operator = from_psf_grid(psfs, (height, width))
    except Exception as error:  # noqa: BLE001
        _documented(error, "image_shape", "grid", "kernels")
        return
    ones = torch.ones(height, width)
    assert operator.image_shape == (height, width)
    assert torch.isfinite(operator(ones)).all()
    # weights are a partition of unity: the adjoint of a constant is the PSF mass (1) inside
    assert float(operator.weights.sum(0).min()) == pytest.approx(1.0, abs=1e-5)


@SETTINGS
@given(st.integers(-3, 40), st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                      st.just(None), st.text(max_size=2)))
def test_gaussian_psf_is_normalised_or_refuses(size, sigma):
    try:
        psf = gaussian(size, sigma)
    except Exception as error:  # noqa: BLE001
        _documented(error, "size", "sigma")
        return
    assert psf.shape == (size, size)
    assert torch.isfinite(psf).all() and float(psf.sum()) == pytest.approx(1.0, abs=1e-4)


@SETTINGS
@given(images(min_side=0, max_side=10, ndim=(1, 2, 3)))
def test_metrics_are_finite_or_refuse(image):
    for metric in (snr, ssim):
        try:
            value = metric(image, image)
        except Exception as error:  # noqa: BLE001
            _documented(error, "reference", "estimate", "image", "shape", "window")
            continue
        assert np.isfinite(value) or value == np.inf  # snr of identical images is +inf


def _deepblur_model():
    from psfmap.deepblur import load_model

    return load_model("zernike7")


@SETTINGS
@given(images(min_side=56, max_side=80, ndim=(1, 2, 3)))  # both sides of the 64 px field
def test_deepblur_identify_and_deblur_are_finite_or_refuse(image):
    from psfmap.deepblur import deblur as deepblur_deblur
    from psfmap.deepblur import identify

    model = _deepblur_model()
    try:
        gamma = identify(image, model)
    except Exception as error:  # noqa: BLE001
        _documented(error, "image")
    else:
        assert isinstance(gamma, np.ndarray)
        assert gamma.shape == (*image.shape[:-2], model.n_params)
        assert np.isfinite(gamma).all()
    try:
        restored = deepblur_deblur(image, model, model.family.centre)
    except Exception as error:  # noqa: BLE001
        _documented(error, "image")
        return
    _check_restored(restored, image)


@SETTINGS
@given(images(min_side=56, max_side=80, ndim=(1, 2, 3)))  # both sides of the 64 px window
def test_blind_psf_map_estimation_is_finite_or_refuses(image):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # widths at the range's end
            maps = psfmap.estimate(image, "gaussian1")
    except Exception as error:  # noqa: BLE001
        _documented(error, "image", "window")
        return
    for psf_map in maps if isinstance(maps, list) else [maps]:
        assert np.isfinite(np.asarray(psf_map.params)).all()
        assert np.isfinite(np.asarray(psf_map.validity)).all()
