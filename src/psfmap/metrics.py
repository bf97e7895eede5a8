"""Image and model quality metrics: SNR, PSNR, SSIM, R², relative operator error, FWHM.

Every function accepts NumPy arrays or torch tensors and returns a Python ``float`` (or a NumPy
array for per-parameter R²). Computations run in float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from psfmap._validation import (
    as_tensor,
    check_finite,
    check_int,
    check_pair,
    check_positive,
    check_seed,
    describe,
)


def _pair(
    reference: Any, estimate: Any, names: tuple[str, str] = ("reference", "estimate")
) -> tuple[torch.Tensor, torch.Tensor]:
    first, second = names
    ref = check_finite(as_tensor(reference, first, dtype=torch.float64), first)
    est = check_finite(as_tensor(estimate, second, dtype=torch.float64), second)
    if ref.shape != est.shape:
        raise ValueError(
            f"{first} and {second} must have the same shape, got {tuple(ref.shape)} "
            f"and {tuple(est.shape)}"
        )
    if ref.numel() == 0:
        raise ValueError(f"{first} is empty; expected at least one value")
    return ref, est.to(ref.device)


def snr(reference: Any, estimate: Any) -> float:
    """Signal-to-noise ratio of ``estimate`` against ``reference``, in dB.

    ``SNR = 10 log10(‖x‖² / ‖x − x̂‖²)`` with ``x`` the reference (the SNR improvement figures
    of Shajkofci & Liebling, IEEE TIP 2020, use this definition). Returns ``inf`` when the
    two are identical.
    """
    ref, est = _pair(reference, estimate)
    error = float(torch.sum((ref - est) ** 2))
    signal = float(torch.sum(ref**2))
    if signal == 0.0:
        raise ValueError("reference is all zero; the SNR is undefined")
    if error == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / error)


def _data_range(ref: torch.Tensor, data_range: float | None) -> float:
    if data_range is None:
        value = float(ref.max() - ref.min())
        if value <= 0:
            raise ValueError("reference is constant; pass data_range explicitly")
        return value
    return check_positive(data_range, "data_range")


def psnr(reference: Any, estimate: Any, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(R² / MSE)``.

    ``R`` is ``data_range`` (default: ``max − min`` of the reference). Returns ``inf`` when
    the two images are identical.
    """
    ref, est = _pair(reference, estimate)
    peak = _data_range(ref, data_range)
    mse = float(torch.mean((ref - est) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak**2 / mse)


# SSIM's Gaussian window reaches this many σ (Wang et al.: σ 1.5 px, 11 × 11)
SSIM_TRUNCATE = 3.5


def _window_radius(sigma: float, truncate: float = SSIM_TRUNCATE) -> int:
    return int(truncate * sigma + 0.5)


def _gaussian_window(sigma: float, truncate: float, dtype, device) -> torch.Tensor:
    radius = _window_radius(sigma, truncate)
    offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    window = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return window / window.sum()


def _filter_valid(image: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable correlation of ``(B, H, W)`` images, 'valid' part only."""
    size = window.numel()
    batch = image[:, None]
    batch = torch.nn.functional.conv2d(batch, window.view(1, 1, size, 1))
    batch = torch.nn.functional.conv2d(batch, window.view(1, 1, 1, size))
    return batch[:, 0]


def ssim(
    reference: Any,
    estimate: Any,
    data_range: float | None = None,
    *,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Mean structural similarity (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004).

    .. math::
        \\mathrm{SSIM}(x, y) = \\frac{(2 μ_x μ_y + C_1)(2 σ_{xy} + C_2)}
                                 {(μ_x^2 + μ_y^2 + C_1)(σ_x^2 + σ_y^2 + C_2)},
        \\quad C_1 = (k_1 R)^2,\\ C_2 = (k_2 R)^2

    Local statistics use the paper's Gaussian window (σ = 1.5 px, truncated at 3.5 σ, i.e.
    11 × 11) and population (not sample) covariances; the map is averaged over the pixels
    whose window lies inside the image. This matches
    ``skimage.metrics.structural_similarity(reference, estimate, data_range=R,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` (tested to 1e-6).

    Parameters
    ----------
    reference, estimate : array or tensor, shape (H, W) or (..., H, W)
        Images to compare; leading axes are treated as separate images and averaged.
    data_range : float, optional
        Dynamic range ``R`` of the images (default: ``max − min`` of the reference).
    """
    ref, est = _pair(reference, estimate)
    if ref.ndim < 2:
        raise ValueError(f"reference must be an image (..., H, W), got {describe(reference)}")
    peak = _data_range(ref, data_range)
    k1, k2 = check_positive(k1, "k1"), check_positive(k2, "k2")
    sigma = check_positive(sigma, "sigma")
    size = 2 * _window_radius(sigma) + 1  # the Gaussian window's width
    if min(ref.shape[-2:]) < size:
        raise ValueError(
            f"images must be at least {size}x{size} px for SSIM with "
            f"sigma={sigma}, got {tuple(ref.shape[-2:])}"
        )
    x = ref.reshape(-1, *ref.shape[-2:])
    y = est.reshape(-1, *est.shape[-2:])
    return float(ssim_per_image(x, y, peak, sigma=sigma, k1=k1, k2=k2).mean())


def ssim_per_image(x: torch.Tensor, y: torch.Tensor, peak: float | torch.Tensor, *,
                   sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """The mean SSIM of each image pair of ``x, y (B, H, W)`` as a tensor ``(B,)``, without
    checks and differentiable (a training loss); ``peak`` is the data range (a number, or one
    per image ``(B, 1, 1)``); the window as in :func:`ssim`."""
    window = _gaussian_window(sigma, SSIM_TRUNCATE, x.dtype, x.device)
    mu_x, mu_y = _filter_valid(x, window), _filter_valid(y, window)
    var_x = _filter_valid(x * x, window) - mu_x**2
    var_y = _filter_valid(y * y, window) - mu_y**2
    cov = _filter_valid(x * y, window) - mu_x * mu_y
    c1, c2 = (k1 * peak) ** 2, (k2 * peak) ** 2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (numerator / denominator).mean(dim=(-2, -1))


def r2(true_params: Any, predicted_params: Any, *, average: bool = True) -> float | np.ndarray:
    """Coefficient of determination of predicted PSF parameters (Shajkofci & Liebling,
    IEEE TIP 2020, eq. 15).

    .. math:: R^2_n = 1 - \\frac{\\sum_k (p_{k,n} - \\hat p_{k,n})^2}
                              {\\sum_k (p_{k,n} - \\bar p_n)^2}

    computed for every parameter ``n`` over the samples ``k``.

    Parameters
    ----------
    true_params, predicted_params : array or tensor, shape (K,) or (..., N)
        Ground-truth and predicted parameters; all leading axes are samples, the last axis
        holds the ``N`` parameters (a 1-D input is one parameter).
    average : bool
        Return the mean of the per-parameter values (default) or the array ``(N,)``.
    """
    truth, predicted = _pair(true_params, predicted_params, ("true_params", "predicted_params"))
    if truth.ndim == 0:
        raise ValueError("true_params must hold samples (K,) or (..., N), got a single number")
    if truth.ndim == 1:
        truth, predicted = truth[:, None], predicted[:, None]
    truth = truth.reshape(-1, truth.shape[-1])
    predicted = predicted.reshape(-1, predicted.shape[-1])
    if truth.shape[0] < 2:
        raise ValueError(f"true_params needs at least 2 samples, got {truth.shape[0]}")
    residual = torch.sum((truth - predicted) ** 2, dim=0)
    spread = torch.sum((truth - truth.mean(dim=0)) ** 2, dim=0)
    if bool((spread == 0).any()):
        constant = torch.nonzero(spread == 0).flatten().tolist()
        raise ValueError(
            f"true_params is constant for parameter(s) {constant}; R² is undefined there"
        )
    values = (1.0 - residual / spread).cpu().numpy()
    return float(values.mean()) if average else values


def relative_operator_error(
    operator1: Any,
    operator2: Any,
    *,
    image_shape: tuple[int, int] | None = None,
    n_images: int = 4,
    seed: int = 0,
) -> float:
    """Mean relative difference of two blur operators on random test images.

    .. math:: e = \\frac{1}{K} \\sum_k \\frac{‖H_1 x_k − H_2 x_k‖_2}{‖H_1 x_k‖_2}

    with ``x_k`` i.i.d. uniform in [0, 1) (seeded), so that the error reflects images with
    content at every position and frequency.

    Parameters
    ----------
    operator1, operator2 : operator with ``forward`` (e.g. ProductConvolution)
        ``operator1`` is the reference.
    image_shape : (int, int), optional
        Needed only when neither operator has a fixed ``image_shape`` (convolutions).
    n_images : int
        Number of random test images ``K``.
    seed : int
        Seed of the test images.
    """
    for name, operator in (("operator1", operator1), ("operator2", operator2)):
        if not callable(getattr(operator, "forward", None)):
            raise TypeError(f"{name} must be an operator with a forward method, got "
                            f"{describe(operator)}")
    shape = image_shape or getattr(operator1, "image_shape", None)
    shape = shape or getattr(operator2, "image_shape", None)
    if shape is None:
        raise ValueError("image_shape=(H, W) is needed for operators of any image size")
    shape = check_pair(shape, "image_shape")
    check_int(n_images, "n_images")
    seed = check_seed(seed)
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {describe(seed)}")
    dtype = getattr(operator1, "dtype", torch.float32)
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((n_images, *tuple(shape)), generator=generator, dtype=torch.float64)
    images = images.to(dtype=dtype, device=getattr(operator1, "device", "cpu"))
    with torch.no_grad():
        first = operator1.forward(images).to(torch.float64)
        second = operator2.forward(images.to(getattr(operator2, "dtype", dtype))).to(
            device=first.device, dtype=torch.float64
        )
    numerator = torch.linalg.vector_norm((first - second).flatten(1), dim=1)
    denominator = torch.linalg.vector_norm(first.flatten(1), dim=1)
    if bool((denominator == 0).any()):
        raise ValueError("operator1 maps a test image to zero; the relative error is undefined")
    return float((numerator / denominator).mean())


def fwhm(profile: Any, spacing: float = 1.0) -> float:
    """Full width at half maximum of the main peak of a 1-D profile.

    The half-maximum crossings on either side of the peak are found between the last sample
    at or above ``max / 2`` and the first below it, by linear interpolation (which widens a
    peak sampled at 3 samples per σ by about 0.5 %):

    .. math:: x_{1/2} = a + \frac{p_a - p_{max}/2}{p_a - p_{a \\pm 1}}

    Parameters
    ----------
    profile : array or tensor, shape (n,)
        Samples of the peak (background already removed; side lobes below half the maximum,
        as in an Airy pattern, are ignored).
    spacing : float
        Distance between samples (pixels, µm, planes ...); the width is in its units.

    Returns
    -------
    float
        ``(x_right − x_left) · spacing``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(-20, 21)
    >>> round(fwhm(np.exp(-x**2 / (2 * 3.0**2))), 2)  # exactly 2 sqrt(2 ln 2) 3 = 7.06
    7.09
    """
    values = as_tensor(profile, "profile").detach().cpu().double()
    if values.ndim != 1 or values.numel() < 3:
        raise ValueError(f"profile must be a 1-D profile of at least 3 samples, got shape "
                         f"{tuple(values.shape)}")
    check_finite(values, "profile")
    spacing = check_positive(spacing, "spacing")
    p = values.numpy()
    peak = int(p.argmax())
    half = p[peak] / 2
    if half <= 0:
        raise ValueError("profile must have a positive peak")
    below = np.flatnonzero(p < half)
    left, right = below[below < peak], below[below > peak]
    if not len(left) or not len(right):
        raise ValueError("profile must fall below half its maximum on both sides of its peak "
                         "(widen the profile)")
    a, b = left[-1], right[0]
    x_left = a + (half - p[a]) / (p[a + 1] - p[a])
    x_right = b - 1 + (p[b - 1] - half) / (p[b - 1] - p[b])
    return float((x_right - x_left) * spacing)
