"""3D PSFs through focus: the scalar pupil propagated to every plane, widefield and confocal.

The field of plane ``z`` (µm, positive away from the objective) is the inverse Fourier
transform of the pupil of :mod:`psfmap.psf.zernike` times the angular-spectrum propagator

    P_z(f) = 1_{|f| ≤ NA/λ} · exp(i 2π Σ_j a_j Z_j) · exp(i 2π z k_i) · exp(i 2π d (k_s − k_i))

with ``k_n(f) = sqrt(n²/λ² − |f|²)`` (cycles/µm). The last factor is the depth aberration of a
source ``d`` µm below the coverslip in a sample of index ``n_s`` imaged through an immersion of
index ``n_i`` (the optical path difference ``d (n_s cos θ_s − n_i cos θ_i)`` of Gibson & Lanni
(1991) with the coverslip matched to the immersion; the stage is at the nominal focus
``z = 0``). Where ``|f| > n_s/λ`` (``NA > n_s``), ``k_s`` is imaginary and those rays decay:
the supercritical light of an oil objective does not reach a water sample. With matched indices
the factor is 1 and the PSF is symmetric about ``z = 0``; with ``n_s < n_i`` the focus shifts
towards the objective and the axial profile is asymmetric.

Laterally each plane is computed on a grid finer than the camera pixels and integrated over
them, exactly as the 2D model; the planes are point samples of ``z``.

References
----------
Gibson & Lanni, "Experimental test of an analytical model of aberration in an oil-immersion
objective lens used in three-dimensional light microscopy", JOSA A 8 (1991).
Goodman, *Introduction to Fourier Optics*, §3.10 (angular spectrum).
Wilson, *Confocal Microscopy* (1990), ch. 1 (confocal PSF = excitation × pinhole ⊛ emission).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from psfmap._validation import check_positive
from psfmap.psf.gaussian import _check_size, bin_pixels
from psfmap.psf.zernike import (
    _pupil_basis,
    check_pupil_optics,
    coefficient_vector,
    supersampling,
)

__all__ = ["axial_positions", "confocal", "depth_series", "through_focus"]

# the stack of complex planes is propagated this many planes at a time (bounds the memory)
_PLANES_PER_BATCH = 16


def axial_positions(planes: int | Sequence[float] | np.ndarray | torch.Tensor,
                    z_step: float | None) -> torch.Tensor:
    """The planes' axial positions (µm, float64): ``planes`` given, or ``D`` planes centred on
    0 (index ``D // 2`` at ``z = 0``) spaced by ``z_step``."""
    if isinstance(planes, (int, np.integer)) and not isinstance(planes, bool):
        if planes < 1:
            raise ValueError(f"planes must be >= 1 or a sequence of z positions, got {planes}")
        if z_step is None:
            raise ValueError("z_step (µm) is required when planes is a number of planes")
        z_step = check_positive(z_step, "z_step")
        return (torch.arange(int(planes), dtype=torch.float64) - int(planes) // 2) * z_step
    z = torch.as_tensor(np.asarray(planes, dtype=np.float64)).reshape(-1)
    if z.numel() == 0 or not bool(torch.isfinite(z).all()):
        raise ValueError("planes must be a positive number of planes or finite z positions in µm, "
                         f"got {planes!r}")
    return z


def _check_optics(na: float, wavelength: float, pixel_size: float, immersion_index: float,
                  sample_index: float | None, depth: float, oversample: Any
                  ) -> tuple[float, ...]:
    na, wavelength, pixel_size, immersion_index = check_pupil_optics(
        na, wavelength, pixel_size, immersion_index, oversample)
    sample_index = immersion_index if sample_index is None else check_positive(
        sample_index, "sample_index")
    depth = check_positive(depth, "depth", allow_zero=True)
    return na, wavelength, pixel_size, immersion_index, sample_index, depth


def through_focus(
    size: int,
    planes: int | Sequence[float] | np.ndarray | torch.Tensor,
    coefficients: Sequence[float] | Mapping[int, float] | np.ndarray | torch.Tensor = (0.0,),
    *,
    na: float,
    wavelength: float,
    pixel_size: float,
    z_step: float | None = None,
    immersion_index: float = 1.515,
    sample_index: float | None = None,
    depth: float = 0.0,
    oversample: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Widefield 3D PSF ``(D, size, size)`` of a scalar pupil through focus.

    Parameters
    ----------
    size : int
        Lateral window in camera pixels (centred at ``size // 2``).
    planes : int or sequence of float
        Number of planes ``D`` (then spaced by ``z_step`` and centred: plane ``D // 2`` is the
        nominal focus), or the planes' axial positions in µm.
    coefficients : sequence, dict, array or tensor
        Zernike RMS amplitudes in waves, Noll-indexed, as :func:`psfmap.psf.zernike`.
    na, wavelength, pixel_size : float
        Numerical aperture, emission wavelength (µm), lateral pixel size in the sample (µm).
    z_step : float, optional
        Axial step in µm when ``planes`` is a number.
    immersion_index : float
        Refractive index of the immersion medium (1.515 for oil).
    sample_index : float, optional
        Refractive index of the sample (1.33 for water); the immersion's when omitted.
    depth : float
        Depth of the source below the coverslip in µm (0: no depth aberration).
    oversample : int, optional
        Lateral sub-samples per pixel (odd); default as in :func:`psfmap.psf.zernike`.

    Returns
    -------
    torch.Tensor
        ``(D, size, size)``, non-negative, the whole stack sums to 1 (a widefield PSF carries
        the same energy through every plane, so each plane holds about ``1 / D``).

    Examples
    --------
    >>> psf = through_focus(33, 21, na=1.4, wavelength=0.52, pixel_size=0.1, z_step=0.2)
    >>> tuple(psf.shape)
    (21, 33, 33)
    """
    _check_size(size)
    na, wavelength, pixel_size, n_i, n_s, depth = _check_optics(
        na, wavelength, pixel_size, immersion_index, sample_index, depth, oversample)
    z = axial_positions(planes, z_step)
    vector = coefficient_vector(coefficients, dtype=torch.float64, device=device)
    if vector.ndim != 1:
        raise ValueError("coefficients must be one set of Noll amplitudes (J,) for a 3D PSF, "
                         f"got shape {tuple(vector.shape)}")
    stack = _intensity_stack(size, z, vector, na, wavelength, pixel_size, n_i, n_s, depth,
                             oversample)
    stack = stack / stack.sum()
    return stack.to(dtype=dtype or torch.get_default_dtype())


def _intensity_stack(size, z, vector, na, wavelength, pixel_size, n_i, n_s, depth,
                     oversample) -> torch.Tensor:
    """Unnormalised intensities ``(D, size, size)`` (float64), energy-true between planes."""
    s = oversample or supersampling(na, wavelength, pixel_size)
    device = vector.device
    disk, basis, grid = _pupil_basis(size, s, vector.shape[0], float(na), float(wavelength),
                                     float(pixel_size), torch.float64, str(device))
    freqs = torch.fft.fftfreq(grid, d=pixel_size / s, dtype=torch.float64, device=device)
    f2 = freqs[:, None] ** 2 + freqs[None, :] ** 2
    k_i = torch.sqrt(torch.clamp((n_i / wavelength) ** 2 - f2, min=0.0))
    wavefront = torch.einsum("j,jyx->yx", vector, basis)
    phase = 2 * math.pi * wavefront
    pupil = disk * torch.polar(torch.ones_like(phase), phase)
    if depth > 0 and n_s != n_i:
        # complex sqrt: imaginary (decaying) beyond the critical angle of the sample
        k_s = torch.sqrt(((n_s / wavelength) ** 2 - f2).to(torch.complex128))
        pupil = pupil * torch.exp(2j * math.pi * depth * (k_s - k_i))
    start = grid // 2 - (size // 2) * s - s // 2
    out = []
    z = z.to(device)
    for first in range(0, z.numel(), _PLANES_PER_BATCH):
        zs = z[first:first + _PLANES_PER_BATCH]
        propagator = torch.polar(torch.ones_like(k_i), 2 * math.pi * zs[:, None, None] * k_i)
        amplitude = torch.fft.ifft2(pupil * propagator)
        intensity = torch.fft.fftshift(amplitude.real ** 2 + amplitude.imag ** 2, dim=(-2, -1))
        window = intensity[..., start:start + size * s, start:start + size * s]
        out.append(bin_pixels(window, size, s))
    return torch.cat(out)


def confocal(
    size: int,
    planes: int | Sequence[float] | np.ndarray | torch.Tensor,
    coefficients: Sequence[float] | Mapping[int, float] | np.ndarray | torch.Tensor = (0.0,),
    *,
    na: float,
    wavelength: float,
    excitation_wavelength: float,
    pixel_size: float,
    pinhole: float = 1.0,
    z_step: float | None = None,
    immersion_index: float = 1.515,
    sample_index: float | None = None,
    depth: float = 0.0,
    oversample: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Confocal 3D PSF ``(D, size, size)``: excitation × (emission ⊛ pinhole), plane by plane.

    ``h_conf(x, y, z) = h_ex(x, y, z) · (h_em(·, ·, z) ⊛ 1_{pinhole})(x, y)`` (Wilson 1990),
    both through :func:`through_focus` with the same aberrations and depth. ``pinhole`` is the
    pinhole's diameter in Airy units projected into the sample (1 AU = 1.22 λ_em / NA); 0 is
    the ideal point pinhole ``h_ex · h_em``. Other parameters as :func:`through_focus`; the
    stack sums to 1.
    """
    pinhole = check_positive(pinhole, "pinhole", allow_zero=True)
    excitation_wavelength = check_positive(excitation_wavelength, "excitation_wavelength")
    common: dict[str, Any] = dict(na=na, pixel_size=pixel_size, z_step=z_step,
                                  immersion_index=immersion_index, sample_index=sample_index,
                                  depth=depth, oversample=oversample, dtype=torch.float64,
                                  device=device)
    emission = through_focus(size, planes, coefficients, wavelength=wavelength, **common)
    excitation = through_focus(size, planes, coefficients, wavelength=excitation_wavelength,
                               **common)
    if pinhole > 0:
        radius = pinhole * 1.22 * wavelength / na / 2 / pixel_size  # in pixels
        emission = _blur_by_disk(emission, radius)
    stack = excitation * emission
    return (stack / stack.sum()).to(dtype=dtype or torch.get_default_dtype())


def _blur_by_disk(stack: torch.Tensor, radius: float, sub: int = 9) -> torch.Tensor:
    """Convolve every plane with a disk of ``radius`` pixels (area-sampled, sum 1)."""
    half = int(math.ceil(radius))
    offsets = (torch.arange((2 * half + 1) * sub, dtype=torch.float64) + 0.5) / sub - half - 0.5
    inside = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).to(torch.float64)
    disk = bin_pixels(inside, 2 * half + 1, sub).to(stack.device)
    disk = disk / disk.sum()
    out = torch.nn.functional.conv2d(stack[:, None], disk[None, None], padding=half)
    return out[:, 0]


def depth_series(
    size: int,
    planes: int | Sequence[float] | np.ndarray | torch.Tensor,
    depths: Sequence[float] | np.ndarray,
    coefficients: Sequence[float] | Mapping[int, float] | np.ndarray | torch.Tensor = (0.0,),
    *,
    mode: str = "widefield",
    **optics: Any,
) -> torch.Tensor:
    """3D PSFs of sources at several depths: ``(gz, 1, 1, D, size, size)``, the depth-only grid
    that :func:`psfmap.operators.from_psf_grid` turns into a depth-variant operator.

    ``mode`` is ``"widefield"`` (:func:`through_focus`) or ``"confocal"`` (:func:`confocal`);
    ``optics`` are their keyword arguments (``na``, ``wavelength``, ``pixel_size``,
    ``z_step``, ``immersion_index``, ``sample_index``...).
    """
    if mode not in ("widefield", "confocal"):
        raise ValueError(f"mode must be 'widefield' or 'confocal', got {mode!r}")
    depths = np.asarray(depths, dtype=np.float64).reshape(-1)
    if depths.size == 0:
        raise ValueError("depths must hold at least one depth in µm, got none")
    model = through_focus if mode == "widefield" else confocal
    stacks = [model(size, planes, coefficients, depth=float(d), **optics) for d in depths]
    return torch.stack(stacks)[:, None, None]
