"""From a field to a camera image: irradiance, pixel integration, object, noise.

The camera records the irradiance ``|U|²`` integrated over each of its pixels (a camera pixel
spans ``binning × binning`` field samples). A fluorescent object ``o`` imaged by a
shift-invariant system gives ``o ⋆ PSF`` (incoherent imaging: intensities add); the detector
then counts photons, ``Poisson(g · image)``, and adds Gaussian read noise of standard
deviation ``σ_read`` electrons.
"""

from __future__ import annotations

import math

import torch

from psfmap._validation import check_seed, describe
from psfmap.optics._common import check_field


def intensity(field: torch.Tensor) -> torch.Tensor:
    """Irradiance ``|U|²`` of a complex field ``(..., H, W)`` (real, same dtype precision)."""
    field = check_field(field)
    return field.real**2 + field.imag**2


def integrate_pixels(image: torch.Tensor, binning: int) -> torch.Tensor:
    """Sum ``binning × binning`` blocks of ``(..., H, W)`` (camera pixels over field samples).

    ``H`` and ``W`` must be multiples of ``binning``.
    """
    if isinstance(binning, bool) or not isinstance(binning, int) or binning < 1:
        raise ValueError(f"binning must be a positive integer, got {binning!r}")
    height, width = image.shape[-2:]
    if height % binning or width % binning:
        raise ValueError(f"the image {height}x{width} is not a whole number of "
                         f"{binning}x{binning} camera pixels; expected sides divisible by "
                         "binning")
    if binning == 1:
        return image
    blocks = image.reshape(*image.shape[:-2], height // binning, binning,
                           width // binning, binning)
    return blocks.sum(dim=(-3, -1))


def convolve(psf: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Linear convolution ``objects ⋆ psf`` (zero outside, same size as ``objects``).

    ``psf (..., h, w)`` centred at ``(h // 2, w // 2)`` and ``objects (..., H, W)`` broadcast
    over their leading axes. Differentiable in both.
    """
    for name, value in (("psf", psf), ("objects", objects)):
        if not isinstance(value, torch.Tensor) or value.is_complex() or value.ndim < 2:
            raise TypeError(f"{name} must be a real tensor (..., H, W), got {describe(value)}")
    h, w = psf.shape[-2:]
    height, width = objects.shape[-2:]
    shape = (height + h - 1, width + w - 1)
    spectrum = torch.fft.rfft2(objects, s=shape) * torch.fft.rfft2(psf.to(objects.dtype), s=shape)
    full = torch.fft.irfft2(spectrum, s=shape)
    return full[..., h // 2:h // 2 + height, w // 2:w // 2 + width]


def add_noise(
    image: torch.Tensor,
    *,
    photons: float | None = None,
    read_noise: float = 0.0,
    seed: int | torch.Generator | None = None,
) -> torch.Tensor:
    """Poisson (shot) and Gaussian read noise.

    Parameters
    ----------
    image : real tensor
        Non-negative expected signal.
    photons : float, optional
        Expected photon count of the brightest pixel: the image is scaled to it, drawn from
        Poisson, and scaled back (``None``: ``image`` is already in photons).
    read_noise : float
        Standard deviation of the additive Gaussian noise, in photons (electrons).
    seed : int or torch.Generator, optional
        Makes the draw reproducible.

    Returns
    -------
    real tensor, same shape and scale as ``image`` (not differentiable: the draw is a sample).
    """
    if not isinstance(image, torch.Tensor) or image.is_complex():
        raise TypeError(f"image must be a real tensor, got {describe(image)}")
    if bool((image < 0).any()) or not bool(torch.isfinite(image).all()):
        raise ValueError("image must be finite and non-negative to be a photon expectation")
    if photons is not None and not (math.isfinite(photons) and photons > 0):
        raise ValueError(f"photons must be a finite number > 0, got {photons!r}")
    if not (math.isfinite(read_noise) and read_noise >= 0):
        raise ValueError(f"read_noise must be a finite number >= 0, got {read_noise!r}")
    generator = seed if isinstance(seed, torch.Generator) else None
    if generator is None:
        generator = torch.Generator(device=image.device)
        drawn = check_seed(seed)
        if drawn is None:
            generator.seed()
        else:
            generator.manual_seed(int(drawn))
    expected = image.detach()
    scale = 1.0
    if photons is not None:
        peak = float(expected.max())
        scale = photons / peak if peak > 0 else 1.0
    counts = torch.poisson(expected * scale, generator=generator)
    if read_noise > 0:
        counts = counts + read_noise * torch.randn(
            counts.shape, generator=generator, dtype=counts.dtype, device=counts.device
        )
    return counts / scale
