"""Scalar pupil model of a fluorescence microscope with Zernike aberrations.

The pupil is the disk of radius ``NA / λ`` in frequency space (cycles/µm) times the phase
``exp(i 2π W)``, with the wavefront ``W = Σ_j a_j Z_j(ρ, θ)`` in waves (Noll-indexed,
RMS-normalised Zernike polynomials, ``ρ`` = frequency / cut-off). The PSF is
``|F⁻¹{pupil}|²``, normalised to sum 1.

Camera pixels are often coarser than the Nyquist step ``λ / (4 NA)`` of the intensity PSF.
The field is therefore computed on a finer grid (an odd number ``s`` of sub-samples per pixel,
at least twice as fine as Nyquist), padded to twice the window to keep the periodic
wrap-around of the tails away, and each camera pixel integrates its ``s × s`` sub-samples.

Angles are measured from the x (column) axis towards the y (row) axis.

References
----------
Noll, "Zernike polynomials and atmospheric turbulence", JOSA 66 (1976).
Goodman, *Introduction to Fourier Optics*, ch. 6.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from psfmap._validation import as_tensor, check_finite, check_positive
from psfmap.psf.gaussian import _check_size, bin_pixels

NOLL_NAMES = {
    1: "piston",
    2: "tip",
    3: "tilt",
    4: "defocus",
    5: "oblique astigmatism",
    6: "vertical astigmatism",
    7: "vertical coma",
    8: "horizontal coma",
    9: "vertical trefoil",
    10: "oblique trefoil",
    11: "primary spherical",
}


def noll_to_nm(j: int) -> tuple[int, int]:
    """Radial order ``n`` and signed azimuthal frequency ``m`` of Noll index ``j`` (≥ 1).

    ``m > 0`` is a cosine term (even ``j``), ``m < 0`` a sine term (odd ``j``).
    """
    if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or j < 1:
        raise ValueError(f"Noll index must be an integer >= 1, got {j!r}")
    n = 0
    remainder = int(j) - 1
    while remainder > n:
        n += 1
        remainder -= n
    m = (-1) ** j * ((n % 2) + 2 * ((remainder + ((n + 1) % 2)) // 2))
    return n, m


def zernike_polynomial(j: int, rho: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """RMS-normalised Zernike polynomial ``Z_j(ρ, θ)`` (Noll index), zero outside ``ρ ≤ 1``.

    ``(1/π) ∫∫_{ρ≤1} Z_i Z_j ρ dρ dθ = δ_ij``.
    """
    n, m = noll_to_nm(j)
    mm = abs(m)
    radial = torch.zeros_like(rho)
    for k in range((n - mm) // 2 + 1):
        coefficient = (
            (-1) ** k
            * math.factorial(n - k)
            / (
                math.factorial(k)
                * math.factorial((n + mm) // 2 - k)
                * math.factorial((n - mm) // 2 - k)
            )
        )
        radial = radial + coefficient * rho ** (n - 2 * k)
    if m == 0:
        value = math.sqrt(n + 1) * radial
    elif m > 0:
        value = math.sqrt(2 * (n + 1)) * radial * torch.cos(mm * theta)
    else:
        value = math.sqrt(2 * (n + 1)) * radial * torch.sin(mm * theta)
    return torch.where(rho <= 1, value, torch.zeros_like(value))


# largest FFT grid side of the supersampled pupil (8192²: 1 GB per complex128 field)
MAX_PUPIL_GRID = 8192


def check_pupil_optics(na: Any, wavelength: Any, pixel_size: Any, immersion_index: Any,
                       oversample: Any = None) -> tuple[float, float, float, float]:
    """The pupil model's optics as positive floats (µm), checked: the NA must not exceed the
    immersion's index, ``oversample`` is None or an odd positive integer."""
    na = check_positive(na, "na")
    wavelength = check_positive(wavelength, "wavelength")
    pixel_size = check_positive(pixel_size, "pixel_size")
    immersion_index = check_positive(immersion_index, "immersion_index")
    if na > immersion_index:
        raise ValueError(
            f"na={na} exceeds immersion_index={immersion_index}; the NA cannot exceed the "
            "refractive index of the immersion medium"
        )
    if oversample is not None and (
        not isinstance(oversample, int) or oversample < 1 or oversample % 2 == 0
    ):
        raise ValueError(f"oversample must be an odd positive integer, got {oversample!r}")
    return na, wavelength, pixel_size, immersion_index


def supersampling(na: float, wavelength: float, pixel_size: float) -> int:
    """Odd number of sub-samples per pixel so the fine grid is ≥ 2× finer than Nyquist."""
    factor = max(1, math.ceil(8 * na * pixel_size / wavelength - 1e-9))
    return factor if factor % 2 == 1 else factor + 1


@lru_cache(maxsize=32)
def _pupil_basis(
    size: int,
    supersample: int,
    n_terms: int,
    na: float,
    wavelength: float,
    pixel_size: float,
    dtype: torch.dtype,
    device: str,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pupil disk ``(N, N)`` and Zernike basis ``(J, N, N)`` on the FFT grid (fftfreq order)."""
    from scipy import fft as scipy_fft  # here, not at import: scipy.fft costs 0.2-0.4 s to load

    fine_pitch = pixel_size / supersample
    grid = scipy_fft.next_fast_len(2 * size * supersample, real=False)
    grid += grid % 2
    if grid > MAX_PUPIL_GRID:
        # a pixel many times the resolution is most often nanometres given as micrometres
        units = ("; pixel sizes are in µm (0.1, not 100)"
                 if pixel_size > 2 * wavelength / na else "")
        raise ValueError(
            f"size={size} px at pixel_size={pixel_size} µm with {supersample} sub-samples per "
            f"pixel (NA={na}, wavelength={wavelength} µm) needs an FFT grid of {grid}², over "
            f"the {MAX_PUPIL_GRID}² limit: use a smaller size or oversample{units}"
        )
    freqs = torch.fft.fftfreq(grid, d=fine_pitch, dtype=torch.float64)
    cutoff = na / wavelength
    radius_in_samples = cutoff * grid * fine_pitch
    if radius_in_samples < 3:
        raise ValueError(
            f"the pupil spans only {radius_in_samples:.1f} frequency samples: size={size} px at "
            f"pixel_size={pixel_size} µm is too small a window for NA={na}, "
            f"wavelength={wavelength} µm; use a larger size"
        )
    fy, fx = torch.meshgrid(freqs, freqs, indexing="ij")
    rho = torch.sqrt(fx**2 + fy**2) / cutoff
    theta = torch.atan2(fy, fx)
    disk = (rho <= 1).to(torch.float64)
    basis = torch.stack([zernike_polynomial(j, rho, theta) for j in range(1, n_terms + 1)])
    return disk.to(dtype=dtype, device=device), basis.to(dtype=dtype, device=device), grid


def zernike_batch(
    size: int,
    coefficients: torch.Tensor,
    *,
    na: float,
    wavelength: float,
    pixel_size: float,
    oversample: int | None = None,
) -> torch.Tensor:
    """Vectorised Zernike PSFs: ``coefficients (B, J)`` (Noll 1..J, RMS waves) -> ``(B, s, s)``.

    Differentiable with respect to ``coefficients``; no input checking (see :func:`zernike`).
    """
    s = oversample or supersampling(na, wavelength, pixel_size)
    dtype = coefficients.dtype
    disk, basis, grid = _pupil_basis(
        size,
        s,
        coefficients.shape[-1],
        float(na),
        float(wavelength),
        float(pixel_size),
        dtype,
        str(coefficients.device),
    )
    wavefront = torch.einsum("bj,jyx->byx", coefficients, basis)
    pupil = disk * torch.polar(torch.ones_like(wavefront), 2 * math.pi * wavefront)
    amplitude = torch.fft.ifft2(pupil)
    intensity = torch.fft.fftshift(amplitude.real**2 + amplitude.imag**2, dim=(-2, -1))
    start = grid // 2 - (size // 2) * s - s // 2
    window = intensity[..., start : start + size * s, start : start + size * s]
    psf = bin_pixels(window, size, s)
    return psf / psf.sum(dim=(-2, -1), keepdim=True)


def coefficient_vector(
    coefficients: Sequence[float] | Mapping[int, float] | np.ndarray | torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Normalise the accepted coefficient forms to a ``(J,)`` or ``(B, J)`` tensor (Noll 1..J)."""
    if isinstance(coefficients, Mapping):
        if not coefficients:
            raise ValueError("coefficients must name at least one Noll index")
        for j in coefficients:
            noll_to_nm(j)
        vector = np.zeros(max(coefficients), dtype=np.float32)  # float32 like a list
        for j, amplitude in coefficients.items():
            vector[j - 1] = amplitude
        coefficients = vector
    tensor = as_tensor(coefficients, "coefficients", dtype=dtype, device=device)
    if tensor.ndim not in (1, 2) or tensor.shape[-1] == 0:
        raise ValueError(
            "coefficients must be a 1-D sequence (entry 0 = Noll j=1), a (B, J) array or a "
            f"dict {{noll_index: amplitude}}, got shape {tuple(tensor.shape)}"
        )
    return check_finite(tensor, "coefficients")


def zernike(
    size: int,
    coefficients: Sequence[float] | Mapping[int, float] | np.ndarray | torch.Tensor,
    *,
    na: float,
    wavelength: float,
    pixel_size: float,
    immersion_index: float = 1.0,
    oversample: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """PSF of a scalar pupil with Zernike aberrations, integrated over camera pixels.

    Parameters
    ----------
    size : int
        Side of the PSF window in camera pixels; the PSF is centred at ``size // 2``.
    coefficients : sequence, dict, array or tensor
        RMS amplitudes in waves, Noll-indexed: a 1-D sequence whose entry 0 is ``j = 1``
        (piston), entry 3 is ``j = 4`` (defocus)...; a ``(B, J)`` batch; or a dict
        ``{noll_index: amplitude}``. Tensors keep gradients.
    na : float
        Numerical aperture; must not exceed ``immersion_index``.
    wavelength : float
        Emission wavelength in µm.
    pixel_size : float
        Camera pixel size in the sample plane, µm.
    immersion_index : float
        Refractive index of the immersion medium (bounds the NA).
    oversample : int, optional
        Sub-samples per pixel side (odd); by default the smallest odd factor that samples the
        intensity at least twice as finely as Nyquist.

    Returns
    -------
    torch.Tensor
        ``(size, size)`` or ``(B, size, size)``; non-negative, sums to 1.

    Notes
    -----
    ``PSF = |F⁻¹{ 1_{|f| ≤ NA/λ} exp(i 2π Σ_j a_j Z_j(|f| λ / NA, ∠f)) }|²``; the unaberrated
    PSF is the Airy pattern with FWHM ≈ 0.51 λ / NA.
    """
    _check_size(size)
    na, wavelength, pixel_size, immersion_index = check_pupil_optics(
        na, wavelength, pixel_size, immersion_index, oversample)
    vector = coefficient_vector(coefficients, dtype=dtype, device=device)
    batch = vector if vector.ndim == 2 else vector[None]
    psf = zernike_batch(
        size, batch, na=na, wavelength=wavelength, pixel_size=pixel_size, oversample=oversample
    )
    return psf if vector.ndim == 2 else psf[0]
