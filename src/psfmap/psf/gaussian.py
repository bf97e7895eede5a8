"""Gaussian PSF models (the CNN papers' G-1 and G-2 families).

A 2-D Gaussian with standard deviations ``sigma_x`` (along columns) and ``sigma_y`` (along
rows), rotated by ``angle`` (radians, counter-clockwise from the x axis):

    g(x, y) ∝ exp(-½ [x'² / σx² + y'² / σy²]),   x' = x cos θ + y sin θ,  y' = −x sin θ + y cos θ

It is integrated over each camera pixel (super-sampled on an odd sub-grid) so narrow widths
(σ ≈ 0.5 px) are not mis-represented by point sampling, cropped to the window and normalised
to sum 1. Reference: Shajkofci & Liebling, "Spatially-variant CNN-based point spread function
estimation for blind deconvolution and depth estimation in optical microscopy", IEEE TIP 2020.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from psfmap._validation import as_tensor, check_finite, check_int

# sub-samples per pixel side; odd so the centre sub-sample sits at the pixel centre
SUPERSAMPLE = 5


def _check_size(size: int) -> int:
    return check_int(size, "size")


def pixel_grid(
    size: int, supersample: int, dtype: torch.dtype, device: torch.device | None
) -> torch.Tensor:
    """1-D sub-pixel coordinates (px, relative to the centre pixel ``size // 2``).

    Returns ``size * supersample`` positions; consecutive groups of ``supersample`` belong to
    one camera pixel.
    """
    pixel = torch.arange(size, dtype=dtype, device=device) - size // 2
    sub = (torch.arange(supersample, dtype=dtype, device=device) + 0.5) / supersample - 0.5
    return (pixel[:, None] + sub[None, :]).reshape(-1)


def bin_pixels(fine: torch.Tensor, size: int, supersample: int) -> torch.Tensor:
    """Sum ``(..., size*s, size*s)`` sub-samples into ``(..., size, size)`` camera pixels."""
    shape = fine.shape[:-2] + (size, supersample, size, supersample)
    return fine.reshape(shape).sum(dim=(-3, -1))


def bin_1d(fine: torch.Tensor, size: int, supersample: int) -> torch.Tensor:
    """Sum ``(..., size*s)`` sub-samples into ``(..., size)`` camera pixels."""
    return fine.reshape(fine.shape[:-1] + (size, supersample)).sum(dim=-1)


def gaussian_batch(
    size: int, sigma_x: torch.Tensor, sigma_y: torch.Tensor, angle: torch.Tensor
) -> torch.Tensor:
    """Vectorised pixel-integrated Gaussians: ``(B,)`` parameters -> ``(B, size, size)``."""
    s = SUPERSAMPLE
    coords = pixel_grid(size, s, sigma_x.dtype, sigma_x.device)
    if not angle.requires_grad and not bool(angle.any()):
        # axis-aligned: the supersampled sum factorises into two 1-D binned profiles, the
        # same numbers as below to rounding at a fraction of the cost (a 31 x 31 map: 25x)
        profile_x = bin_1d(torch.exp(-0.5 * (coords[None, :] / sigma_x[:, None]) ** 2), size, s)
        profile_y = bin_1d(torch.exp(-0.5 * (coords[None, :] / sigma_y[:, None]) ** 2), size, s)
        psf = profile_y[:, :, None] * profile_x[:, None, :]
        return psf / psf.sum(dim=(-2, -1), keepdim=True)
    y = coords[None, :, None]
    x = coords[None, None, :]
    cos = torch.cos(angle)[:, None, None]
    sin = torch.sin(angle)[:, None, None]
    x_rot = x * cos + y * sin
    y_rot = -x * sin + y * cos
    exponent = (x_rot / sigma_x[:, None, None]) ** 2 + (y_rot / sigma_y[:, None, None]) ** 2
    fine = torch.exp(-0.5 * exponent)
    psf = bin_pixels(fine, size, s)
    return psf / psf.sum(dim=(-2, -1), keepdim=True)


def gaussian(
    size: int,
    sigma: float | Sequence[float] | torch.Tensor,
    angle: float | torch.Tensor = 0.0,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Pixel-integrated 2-D Gaussian PSF of shape ``(size, size)``, centred at ``size // 2``.

    Parameters
    ----------
    size : int
        Side of the square window in pixels.
    sigma : float or (float, float)
        Standard deviation in pixels; one value (isotropic, model G-1) or ``(sigma_x, sigma_y)``
        along the rotated x and y axes (model G-2). Tensors keep gradients.
    angle : float
        Rotation of the x axis in radians, counter-clockwise.

    Returns
    -------
    torch.Tensor
        ``(size, size)``, non-negative, sums to 1.
    """
    _check_size(size)
    sigma_t = as_tensor(sigma, "sigma", dtype=dtype, device=device)
    dtype = sigma_t.dtype
    if sigma_t.ndim == 0:
        sigma_t = sigma_t.reshape(1).expand(2)
    if sigma_t.shape != (2,):
        raise ValueError(f"sigma must be one number or a pair (sigma_x, sigma_y), got {sigma!r}")
    check_finite(sigma_t, "sigma")
    if bool((sigma_t <= 0).any()):
        raise ValueError(f"sigma must be > 0 px, got {sigma_t.tolist()}")
    angle_t = check_finite(as_tensor(angle, "angle", dtype=dtype, device=sigma_t.device), "angle")
    if angle_t.ndim != 0:
        raise ValueError(f"angle must be a single number in radians, got shape {angle_t.shape}")
    return gaussian_batch(size, sigma_t[0:1], sigma_t[1:2], angle_t.reshape(1))[0]
