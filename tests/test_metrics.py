"""psfmap.metrics: SNR, PSNR, SSIM (against scikit-image), R² (eq. 15), operator error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from psfmap import metrics
from psfmap.operators import Convolution, from_psf_grid
from psfmap.psf import gaussian


def test_snr_matches_definition(rng):
    reference = rng.random((20, 30))
    noise = 0.1 * rng.standard_normal((20, 30))
    expected = 10 * np.log10(np.sum(reference**2) / np.sum(noise**2))
    assert metrics.snr(reference, reference + noise) == pytest.approx(expected, rel=1e-12)


def test_snr_identical_is_infinite_and_torch_accepted():
    image = torch.rand(8, 8, dtype=torch.float64)
    assert math.isinf(metrics.snr(image, image.clone()))


def test_psnr_matches_skimage(rng):
    reference = rng.random((32, 32))
    estimate = np.clip(reference + 0.05 * rng.standard_normal(reference.shape), 0, 1)
    expected = peak_signal_noise_ratio(reference, estimate, data_range=1.0)
    assert metrics.psnr(reference, estimate, data_range=1.0) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("noise", [0.01, 0.1, 0.5])
def test_ssim_agrees_with_skimage(rng, noise):
    reference = rng.random((40, 50))
    estimate = reference + noise * rng.standard_normal(reference.shape)
    expected = structural_similarity(
        reference, estimate, data_range=1.0, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )
    assert abs(metrics.ssim(reference, estimate, data_range=1.0) - expected) < 1e-3
    assert abs(metrics.ssim(reference, estimate, data_range=1.0) - expected) < 1e-9


def test_ssim_default_data_range_and_torch_float32(rng):
    reference = rng.random((24, 24)).astype(np.float32)
    estimate = reference * 0.9
    expected = structural_similarity(
        reference.astype(np.float64), estimate.astype(np.float64),
        data_range=float(reference.max() - reference.min()), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )
    value = metrics.ssim(torch.from_numpy(reference), torch.from_numpy(estimate))
    assert abs(value - expected) < 1e-3
    assert metrics.ssim(reference, reference) == pytest.approx(1.0)


def test_r2_per_parameter_and_average(rng):
    truth = rng.random((50, 2))
    predicted = truth.copy()
    predicted[:, 1] = truth[:, 1].mean()  # predicting the mean gives R² = 0
    values = metrics.r2(truth, predicted, average=False)
    np.testing.assert_allclose(values, [1.0, 0.0], atol=1e-12)
    assert metrics.r2(truth, predicted) == pytest.approx(0.5)
    noisy = truth + 0.01 * rng.standard_normal(truth.shape)
    manual = 1 - np.sum((truth - noisy) ** 2, 0) / np.sum((truth - truth.mean(0)) ** 2, 0)
    np.testing.assert_allclose(metrics.r2(truth, noisy, average=False), manual, rtol=1e-12)


def test_r2_grid_shaped_params_and_one_dimensional(rng):
    truth = rng.random((4, 5, 3))
    assert metrics.r2(truth, truth) == pytest.approx(1.0)
    assert metrics.r2(truth[..., 0].ravel(), truth[..., 0].ravel()) == pytest.approx(1.0)


def test_relative_operator_error():
    psf = gaussian(9, 1.2)
    grid = from_psf_grid(psf.expand(2, 2, 9, 9).clone(), (32, 32))
    conv = Convolution(psf)
    assert metrics.relative_operator_error(grid, conv) < 1e-6
    wider = from_psf_grid(gaussian(9, 2.0).expand(2, 2, 9, 9).clone(), (32, 32))
    error = metrics.relative_operator_error(grid, wider, n_images=2, seed=1)
    assert 0.01 < error < 1.0
    assert error == metrics.relative_operator_error(grid, wider, n_images=2, seed=1)


def test_relative_operator_error_scaled_operator_is_exact():
    psf = gaussian(7, 1.0, dtype=torch.float64)
    error = metrics.relative_operator_error(Convolution(psf), Convolution(1.1 * psf),
                                            image_shape=(16, 16))
    assert error == pytest.approx(0.1, rel=1e-9)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: metrics.snr(np.ones((4, 4)), np.ones((4, 5))), "same shape"),
        (lambda: metrics.snr(np.ones((4, 4)), np.full((4, 4), np.nan)), "NaN"),
        (lambda: metrics.snr(np.zeros((4, 4)), np.ones((4, 4))), "all zero"),
        (lambda: metrics.ssim(np.ones((5, 5)), np.ones((5, 5)), data_range=1), "at least 11"),
        (lambda: metrics.psnr(np.ones((4, 4)), np.ones((4, 4)) * 2), "constant"),
        (lambda: metrics.r2(np.ones((5, 1)), np.ones((5, 1))), "constant"),
        (lambda: metrics.r2(np.ones((1, 2)), np.ones((1, 2))), "at least 2"),
        (lambda: metrics.relative_operator_error(Convolution(gaussian(5, 1.0)),
                                                 Convolution(gaussian(5, 1.0))), "image_shape"),
        (lambda: metrics.snr(np.array([]), np.array([])), "empty"),
        (lambda: metrics.r2(np.ones(3), np.ones(4)), "true_params and predicted_params"),
        (lambda: metrics.r2(1.0, 1.0), "single number"),
        (lambda: metrics.ssim(np.ones((16, 16)), np.ones((16, 16)), data_range=1, k1=-0.1),
         "k1"),
        (lambda: metrics.relative_operator_error(
            Convolution(gaussian(5, 1.0)), Convolution(gaussian(5, 1.0)),
            image_shape=(-32, 32)), "image_shape"),
        (lambda: metrics.relative_operator_error(
            Convolution(gaussian(5, 1.0)), Convolution(gaussian(5, 1.0)),
            image_shape=(32, 32), seed=-1), "seed"),
    ],
)
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_relative_operator_error_rejects_non_operators():
    with pytest.raises(TypeError, match="operator1"):
        metrics.relative_operator_error(np.ones((4, 4)), Convolution(gaussian(5, 1.0)))


def test_fwhm_of_a_finely_sampled_gaussian_and_bad_profiles():
    sigma = 12.0
    x = np.arange(-80, 81)
    profile = np.exp(-x**2 / (2 * sigma**2))
    exact = 2 * np.sqrt(2 * np.log(2)) * sigma
    assert metrics.fwhm(profile) == pytest.approx(exact, rel=1e-3)
    assert metrics.fwhm(torch.from_numpy(profile), 0.1) == pytest.approx(0.1 * exact, rel=1e-3)
    # a triangle is exact under linear interpolation: half height at ±5 of a base of ±10
    triangle = np.clip(10 - np.abs(np.arange(-12, 13)), 0, None).astype(float)
    assert metrics.fwhm(triangle) == pytest.approx(10.0, abs=1e-12)
    with pytest.raises(ValueError, match="both sides"):
        metrics.fwhm(np.exp(-np.arange(10.0)))  # peak at the edge
    with pytest.raises(ValueError, match="1-D"):
        metrics.fwhm(np.ones((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.fwhm(np.array([0.0, 1.0, np.nan, 0.0]))


def test_ssim_per_image_matches_ssim_and_has_a_gradient(rng):
    reference = torch.from_numpy(rng.random((3, 24, 20)))
    estimate = (reference + 0.1 * torch.from_numpy(rng.standard_normal((3, 24, 20)))
                ).requires_grad_()
    values = metrics.ssim_per_image(reference, estimate, 1.0)
    assert values.shape == (3,)
    for index in range(3):
        assert float(values[index]) == pytest.approx(
            metrics.ssim(reference[index], estimate[index].detach(), data_range=1.0), abs=1e-12)
    (1 - values.mean()).backward()
    assert estimate.grad is not None and bool(torch.isfinite(estimate.grad).all())
    assert float(estimate.grad.abs().sum()) > 0
