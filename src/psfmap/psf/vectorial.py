"""Vectorial PSFs through focus (Richards–Wolf), computed by the optional ``psf-generator``.

At high NA the scalar pupil of :mod:`psfmap.psf.through_focus` misses two things: the field
at the focus has an axial component ``E_z`` (rays tilted by up to ``θ_max = arcsin(NA/n)``
carry their polarisation with them), and the lens redistributes the amplitude over the
aperture. The Richards & Wolf (1959) focal field, in direction cosines
``s = (s_x, s_y) = n sin θ (cos φ, sin φ) / n``, is

    E(x, y, z) ∝ ∬_{|s| ≤ NA/n} e_∞(s) · A(θ) / cos θ · exp(i 2π W(s)) ·
                 exp(i 2π z k_i) · exp(i 2π d (k_s − k_i)) · exp(i 2π (f_x x + f_y y)) ds

with ``f = n s / λ`` (cycles/µm), ``k_n = sqrt(n²/λ² − |f|²)``, ``W`` the Zernike wavefront
in waves (Noll, RMS-normalised, as :func:`psfmap.psf.zernike`), the depth factor of
:func:`psfmap.psf.through_focus` for a source ``d`` µm deep in a sample of index ``n_s``, the
aplanatic apodisation ``A(θ) = sqrt(cos θ)`` (sine condition) and the field behind the lens for
an incident Jones vector ``(e_x, e_y)``

    e_∞ = ½ [ (cos θ + 1) + (cos θ − 1) cos 2φ,  (cos θ − 1) sin 2φ,  −2 sin θ cos φ ] e_x
        + ½ [ (cos θ − 1) sin 2φ,  (cos θ + 1) − (cos θ − 1) cos 2φ,  −2 sin θ sin φ ] e_y.

The intensity PSF is ``|E_x|² + |E_y|² + |E_z|²``. ``polarization="unpolarized"`` averages the
intensities of ``x`` and ``y`` polarised light: by reciprocity this is also the usual model
of the widefield image of an isotropic (freely rotating) emitter. For ``x`` polarisation the
``E_z`` lobes lie on the x axis and the spot is elongated along x (Richards & Wolf
1959); the unpolarised spot is round and wider than the scalar one.

psf-generator (Biomedical Imaging Group, EPFL) evaluates the integral with a chirp-z
transform (``VectorialCartesianPropagator``); psfmap hands it the whole pupil phase (Zernike,
defocus and depth terms above, in psfmap's conventions), samples it on a grid finer than the
camera pixels and integrates every pixel, exactly like the scalar model, so the two agree at
low NA. The depth term is the scalar model's pupil phase: Fresnel transmission at the
coverslip–sample interface is not modelled.

References
----------
Richards & Wolf, "Electromagnetic diffraction in optical systems II. Structure of the image
field in an aplanatic system", Proc. R. Soc. A 253 (1959).
Novotny & Hecht, *Principles of Nano-Optics*, ch. 3 (angular spectrum, focal fields).
Gibson & Lanni, JOSA A 8 (1991) (depth aberration).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from psfmap._validation import check_int
from psfmap.psf.gaussian import _check_size, bin_pixels
from psfmap.psf.through_focus import _check_optics, axial_positions
from psfmap.psf.zernike import (
    coefficient_vector,
    noll_to_nm,
    supersampling,
    zernike_polynomial,
)

__all__ = ["POLARIZATIONS", "vectorial_through_focus", "vectorial_zernike"]

INSTALL_HINT = 'pip install "psfmap[vectorial]"'
# named incident polarisations: the Jones vectors whose intensities are averaged
POLARIZATIONS: dict[str, tuple[tuple[complex, complex], ...]] = {
    "x": ((1.0, 0.0),),
    "y": ((0.0, 1.0),),
    "circular": ((1 / math.sqrt(2), 1j / math.sqrt(2)),),
    "unpolarized": ((1.0, 0.0), (0.0, 1.0)),
}
# automatic pupil sampling: at least this many samples across the pupil, at most this many
# (4× that when given explicitly)
_MIN_PUPIL, _MAX_PUPIL = 129, 1025
# complex elements (planes × 3 field components × FFT grid²) propagated at once
_BATCH_ELEMENTS = 2 ** 22


def _propagator_class() -> Any:
    """psf-generator's vectorial Cartesian propagator, imported on first use."""
    try:
        from psf_generator import VectorialCartesianPropagator
    except ImportError as error:  # the optional extra is missing
        raise ImportError(
            "vectorial PSFs need the optional package psf-generator, which is not installed: "
            f'{INSTALL_HINT}'
        ) from error
    return VectorialCartesianPropagator


def _jones_vectors(polarization: Any) -> tuple[tuple[complex, complex], ...]:
    """The Jones vectors (unit norm) whose intensities are averaged."""
    if isinstance(polarization, str):
        if polarization not in POLARIZATIONS:
            raise ValueError(f"polarization must be one of {', '.join(POLARIZATIONS)} or a "
                             f"Jones vector (e_x, e_y), got {polarization!r}")
        return POLARIZATIONS[polarization]
    try:
        e_x, e_y = (complex(value) for value in polarization)
    except (TypeError, ValueError):
        raise TypeError(f"polarization must be one of {', '.join(POLARIZATIONS)} or a Jones "
                        f"vector (e_x, e_y) of two numbers, got {polarization!r}") from None
    norm = math.hypot(abs(e_x), abs(e_y))
    if not math.isfinite(norm) or norm == 0:
        raise ValueError(f"polarization Jones vector must be finite and non-zero, got "
                         f"{polarization!r}")
    return ((e_x / norm, e_y / norm),)


def _pupil_samples_needed(z: torch.Tensor, vector: torch.Tensor, window: float, na: float,
                          wavelength: float, n_i: float, n_s: float, depth: float) -> int:
    """Odd number of pupil samples across the diameter that keeps the computed PSF's period
    at least twice the window and the pupil phase below π/2 per sample."""
    needed = 4 * na * window / wavelength  # period λ (N − 1) / (2 NA) ≥ 2 · window
    rho = np.linspace(0.0, 1.0, 4097)
    f2 = (na * rho / wavelength) ** 2
    k_i = np.sqrt(np.maximum((n_i / wavelength) ** 2 - f2, 0.0))
    slopes = []
    for z_end in (float(z.min()), float(z.max())):
        phase = 2 * math.pi * z_end * k_i
        if depth > 0 and n_s != n_i:
            # the depth phase varies without bound at the sample's critical angle: judge it
            # where k_s is at least ~22 % of n_s / λ (a thin ring of the pupil is left out)
            k_s2 = (n_s / wavelength) ** 2 - f2
            keep = k_s2 >= 0.05 * (n_s / wavelength) ** 2
            phase = np.where(keep, phase + 2 * math.pi * depth
                             * (np.sqrt(np.maximum(k_s2, 0.0)) - k_i), np.nan)
        slopes.append(np.nanmax(np.abs(np.diff(phase))) / (rho[1] - rho[0]))
    slope = max(slopes)
    if bool((vector[1:] != 0).any()):
        u = torch.linspace(-1, 1, 513, dtype=torch.float64)
        wavefront = 2 * math.pi * _wavefront(vector.detach().double().cpu(), u)
        inside = torch.hypot(u[:, None], u[None, :]) <= 1
        rows = wavefront.diff(dim=0).abs()[inside[1:] & inside[:-1]]
        columns = wavefront.diff(dim=1).abs()[inside[:, 1:] & inside[:, :-1]]
        slope += float(torch.maximum(rows.max(), columns.max())) / float(u[1] - u[0])
    needed = max(needed, 4 * slope / math.pi)  # |dφ/dρ| · 2 / (N − 1) ≤ π / 2
    count = max(_MIN_PUPIL, math.ceil(needed) + 1)
    return count + (1 - count % 2)


def _rotationally_symmetric(vector: torch.Tensor) -> bool:
    """Whether the Zernike wavefront has only m = 0 terms (piston, defocus, spherical...);
    not when a gradient is wanted, which the other terms' zero coefficients also receive."""
    return not vector.requires_grad and all(
        noll_to_nm(j)[1] == 0 for j in range(2, vector.shape[0] + 1) if bool(vector[j - 1] != 0))


def _wavefront(vector: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Zernike wavefront (waves) on the pupil grid ``u`` (rows y, columns x, ρ = 1 at NA)."""
    rho = torch.hypot(u[None, :], u[:, None])
    theta = torch.atan2(u[:, None].expand_as(rho), u[None, :].expand_as(rho))
    # zero terms are skipped unless a gradient is wanted (it is not zero for them)
    terms = [vector[j - 1] * zernike_polynomial(j, rho, theta)
             for j in range(2, vector.shape[0] + 1)
             if vector.requires_grad or bool(vector[j - 1] != 0)]
    return torch.stack(terms).sum(0) if terms else torch.zeros_like(rho)


def vectorial_through_focus(
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
    polarization: str | Sequence[complex] = "unpolarized",
    apodization: bool = True,
    oversample: int | None = None,
    pupil_samples: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Widefield 3D PSF ``(D, size, size)`` of the vectorial (Richards–Wolf) focal field.

    Needs the optional extra: ``pip install "psfmap[vectorial]"`` (psf-generator).

    Parameters
    ----------
    size : int
        Lateral window in camera pixels (centred at ``size // 2``).
    planes : int or sequence of float
        Number of planes ``D`` (spaced by ``z_step``, plane ``D // 2`` at the nominal focus) or
        the planes' axial positions in µm, as :func:`psfmap.psf.through_focus`.
    coefficients : sequence, dict, array or tensor
        Zernike RMS amplitudes in waves, Noll-indexed, as :func:`psfmap.psf.zernike`.
    na, wavelength, pixel_size : float
        Numerical aperture, emission wavelength (µm), lateral pixel size in the sample (µm).
    z_step : float, optional
        Axial step in µm when ``planes`` is a number.
    immersion_index : float
        Refractive index of the immersion medium; it sets the largest ray angle
        ``arcsin(NA / n)``, which is what makes the field vectorial.
    sample_index : float, optional
        Refractive index of the sample; the immersion's when omitted.
    depth : float
        Depth of the source below the coverslip in µm (0: no depth aberration).
    polarization : str or (complex, complex)
        ``"unpolarized"`` (the mean of the ``x`` and ``y`` intensities; an isotropic emitter),
        ``"x"``, ``"y"``, ``"circular"``, or a Jones vector ``(e_x, e_y)``.
    apodization : bool
        Aplanatic amplitude ``sqrt(cos θ)`` (an objective obeying the sine condition); False
        leaves the bare ``1 / cos θ`` of the integral in direction cosines.
    oversample : int, optional
        Lateral sub-samples per pixel (odd); default as in :func:`psfmap.psf.zernike`.
    pupil_samples : int, optional
        Pupil samples across the diameter (odd, ≤ 4097); by default at least 129 and enough
        for the window and for the pupil phase of the farthest plane, up to 1025.
    dtype, device : optional
        Output dtype (default: torch's) and the device psf-generator computes on.

    Returns
    -------
    torch.Tensor
        ``(D, size, size)``, non-negative, the whole stack sums to 1, centred at
        ``(size // 2, size // 2)`` on the plane ``z = 0``; rows are y, columns x.
        Differentiable with respect to tensor ``coefficients`` (fields are complex64 inside
        psf-generator, so values and gradients carry float32 precision).

    Raises
    ------
    ImportError
        psf-generator is not installed.

    Examples
    --------
    >>> psf = vectorial_through_focus(33, 9, na=1.4, wavelength=0.52, pixel_size=0.1,
    ...                               z_step=0.25)  # doctest: +SKIP
    >>> tuple(psf.shape)  # doctest: +SKIP
    (9, 33, 33)
    """
    _check_size(size)
    na, wavelength, pixel_size, n_i, n_s, depth = _check_optics(
        na, wavelength, pixel_size, immersion_index, sample_index, depth, oversample)
    z = axial_positions(planes, z_step)
    vector = coefficient_vector(coefficients, dtype=torch.float64, device="cpu")
    if vector.ndim != 1:
        raise ValueError("coefficients must be one set of Noll amplitudes (J,) for a 3D PSF, "
                         f"got shape {tuple(vector.shape)}")
    jones = _jones_vectors(polarization)
    if not isinstance(apodization, (bool, np.bool_)):
        raise TypeError(f"apodization must be True or False, got {apodization!r}")
    s = oversample or supersampling(na, wavelength, pixel_size)
    pitch = pixel_size / s
    left = (size // 2) * s + s // 2  # fine samples left of the centre sample
    grid = 2 * left + 1              # an odd grid centred on it, cropped to size · s below
    if pupil_samples is None:
        pupil_samples = _pupil_samples_needed(z, vector, grid * pitch, na, wavelength, n_i,
                                              n_s, depth)
        if pupil_samples > _MAX_PUPIL:
            raise ValueError(
                f"planes up to |z| = {float(z.abs().max()):.3g} µm (depth {depth:g} µm) at "
                f"NA {na:g} need {pupil_samples} pupil samples, over the automatic limit of "
                f"{_MAX_PUPIL}: use closer planes, or pass pupil_samples explicitly")
    else:
        pupil_samples = check_int(pupil_samples, "pupil_samples", minimum=9)
        if pupil_samples % 2 == 0 or pupil_samples > 4 * _MAX_PUPIL:
            raise ValueError(f"pupil_samples must be odd and at most {4 * _MAX_PUPIL} (a "
                             f"pupil of that side takes ~1 GB per plane), got {pupil_samples}")
    propagator_class = _propagator_class()
    target = torch.device(device) if device is not None else torch.device("cpu")
    intensity = torch.zeros(z.numel(), grid, grid, dtype=torch.float64, device=target)
    if len(jones) == 2 and _rotationally_symmetric(vector):
        # a round pupil phase: the y-polarised intensity is the x-polarised one turned by a
        # quarter turn, i.e. transposed on this square grid centred on a sample
        jones, transpose = jones[:1], True
    else:
        transpose = False
    for e_x, e_y in jones:
        # psf-generator samples its window at fov / (n − 1) with fov = pix_size · n: give it
        # the pitch that lands its samples on psfmap's fine grid (lengths in µm throughout)
        propagator = propagator_class(
            n_pix_pupil=pupil_samples, n_pix_psf=grid, device=str(target),
            e0x=e_x, e0y=e_y, wavelength=wavelength, na=na,
            pix_size=pitch * (grid - 1) / grid, apod_factor=bool(apodization),
            n_i=n_i, n_i0=n_i)
        intensity += _focal_intensity(propagator, z, vector, na, wavelength, n_i, n_s, depth)
    if transpose:
        intensity = intensity + intensity.transpose(-1, -2)
    window = intensity[:, : size * s, : size * s]
    stack = bin_pixels(window, size, s)
    stack = stack / stack.sum()
    return stack.to(dtype=dtype or torch.get_default_dtype())


def _focal_intensity(propagator: Any, z: torch.Tensor, vector: torch.Tensor, na: float,
                     wavelength: float, n_i: float, n_s: float, depth: float) -> torch.Tensor:
    """``Σ_c |E_c|²`` on psf-generator's grid for every plane ``(D, n, n)`` (float64)."""
    if not hasattr(propagator, "defocus_filters") or not hasattr(propagator, "s_x"):
        raise RuntimeError("this psf-generator version lacks VectorialCartesianPropagator's "
                           "defocus_filters/s_x attributes that psfmap drives; install "
                           "psf-generator 0.1")
    device = propagator.s_x.device
    u = propagator.s_x.to(torch.float64)  # pupil coordinate, ρ = 1 at the NA
    f2 = (na / wavelength) ** 2 * (u[None, :] ** 2 + u[:, None] ** 2)
    k_i = torch.sqrt(torch.clamp((n_i / wavelength) ** 2 - f2, min=0.0))
    pupil_phase = torch.polar(torch.ones_like(f2), 2 * math.pi * _wavefront(vector, u.cpu())
                              .to(device))
    if depth > 0 and n_s != n_i:
        # complex sqrt: imaginary (decaying) beyond the critical angle of the sample
        k_s = torch.sqrt(((n_s / wavelength) ** 2 - f2).to(torch.complex128))
        pupil_phase = pupil_phase * torch.exp(2j * math.pi * depth * (k_s - k_i))
    n_out = propagator.n_pix_psf
    fft = 2 ** math.ceil(math.log2(propagator.n_pix_pupil + n_out - 1))
    per_batch = max(1, _BATCH_ELEMENTS // (3 * fft * fft))
    z = z.to(device)
    out = []
    for first in range(0, z.numel(), per_batch):
        zs = z[first:first + per_batch]
        defocus = torch.polar(torch.ones_like(k_i), 2 * math.pi * zs[:, None, None] * k_i)
        # psf-generator multiplies its pupil by these filters (D, 1, N, N): they carry the
        # whole phase (its own Zernike term is left at zero)
        propagator.defocus_filters = (pupil_phase * defocus)[:, None].to(torch.complex64)
        field = propagator.compute_focus_field()
        out.append((field.real.double() ** 2 + field.imag.double() ** 2).sum(dim=1))
    return torch.cat(out)


def vectorial_zernike(
    size: int,
    coefficients: Sequence[float] | Mapping[int, float] | np.ndarray | torch.Tensor = (0.0,),
    *,
    na: float,
    wavelength: float,
    pixel_size: float,
    immersion_index: float = 1.515,
    polarization: str | Sequence[complex] = "unpolarized",
    apodization: bool = True,
    oversample: int | None = None,
    pupil_samples: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """In-focus vectorial PSF ``(size, size)``, the vectorial counterpart of
    :func:`psfmap.psf.zernike` (plane ``z = 0`` of :func:`vectorial_through_focus`; same
    arguments). Sums to 1. Needs ``pip install "psfmap[vectorial]"``.

    ``immersion_index`` defaults to oil (1.515) as in :func:`psfmap.psf.through_focus`, not to
    :func:`psfmap.psf.zernike`'s 1.0: the ray angles ``arcsin(NA / n)``, hence the vectorial
    field, depend on it.
    """
    return vectorial_through_focus(
        size, [0.0], coefficients, na=na, wavelength=wavelength, pixel_size=pixel_size,
        immersion_index=immersion_index, polarization=polarization, apodization=apodization,
        oversample=oversample, pupil_samples=pupil_samples, dtype=dtype, device=device)[0]
