"""Phase masks (a spatial light modulator, a phase plate) and the usual phase patterns.

A phase mask multiplies the field by ``exp(i φ)``. A spatial light modulator (SLM) modulates
only the active fraction ``F`` (its *fill factor*) of each pixel; the gaps between pixels
reflect the light unmodulated. Averaged over a pixel, the mask is

    t = F · exp(i φ) + (1 − F),

so part ``(1 − F)`` of the amplitude forms the unmodulated *zero-order* pattern (the image of
the bare pupil) on top of the designed one, as WaveBlocks models its SLM (Page Vizcaíno et
al., ICASSP 2020). Of the incident light, ``F²`` follows the designed phase, ``(1 − F)²`` the
zero order; the remaining ``2F(1 − F)`` goes to the diffraction orders of the pixel grid
itself, at the SLM's pixel frequency, outside the band of the field (not modelled: that
light is lost to the microscope).
"""

from __future__ import annotations

import math

import torch

from psfmap._validation import describe
from psfmap.optics._common import check_field, physical
from psfmap.psf.zernike import coefficient_vector, zernike_polynomial


def phase_mask(
    field: torch.Tensor,
    phase: torch.Tensor,
    *,
    fill_factor: float | torch.Tensor = 1.0,
    wrap: bool = True,
) -> torch.Tensor:
    """Multiply ``field`` by the mask ``F · exp(i φ) + (1 − F)``.

    Parameters
    ----------
    field : complex tensor, shape (..., H, W)
    phase : real tensor, broadcastable to (..., H, W)
        Phase in radians. Differentiable.
    fill_factor : float or tensor in (0, 1]
        Fraction of each SLM pixel that modulates; below 1 the rest adds a zero-order
        (unmodulated) copy of the field. Differentiable.
    wrap : bool
        Reduce the phase to ``[0, 2π)`` first, as an SLM displays it. The field is the same
        (``exp(i φ)`` is 2π-periodic) and the gradient passes unchanged; ``wrap=False`` refuses
        a phase outside ``[0, 2π)`` instead, for a device that cannot wrap (a phase plate
        designed within one wave).
    """
    field = check_field(field)
    if not isinstance(phase, torch.Tensor) or phase.is_complex():
        raise TypeError(f"phase must be a real torch tensor in radians, got {describe(phase)}")
    try:
        torch.broadcast_shapes(phase.shape, field.shape)
    except RuntimeError:
        raise ValueError(f"phase has shape {tuple(phase.shape)}, which does not broadcast "
                         f"over the field's shape {tuple(field.shape)}") from None
    if not bool(torch.isfinite(phase).all()):
        raise ValueError("phase contains NaN or infinite values; expected finite radians")
    phase = phase.to(device=field.device, dtype=field.real.dtype)
    if wrap:
        phase = torch.remainder(phase, 2 * math.pi)
    elif bool(((phase < 0) | (phase >= 2 * math.pi)).any()):
        raise ValueError("phase must lie in [0, 2π) with wrap=False, got values from "
                         f"{float(phase.min()):.3g} to {float(phase.max()):.3g} rad")
    fill = physical(fill_factor, "fill_factor", field)
    if bool((fill > 1).any()):
        raise ValueError(f"fill_factor must be in (0, 1], got {float(fill.max()):g}")
    modulated = torch.polar(torch.ones_like(phase), phase)
    mask = fill * modulated + (1 - fill)
    return field * mask


def _grid(size: int, radius: float, dtype: torch.dtype, device) -> tuple[torch.Tensor, ...]:
    if not isinstance(size, int) or isinstance(size, bool) or size < 2:
        raise ValueError(f"size must be an integer >= 2, got {size!r}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0 (in samples), got {radius!r}")
    index = (torch.arange(size, dtype=dtype, device=device) - size // 2) / radius
    y, x = torch.meshgrid(index, index, indexing="ij")
    return y, x


def cubic_phase(
    size: int,
    strength: float | torch.Tensor,
    *,
    radius: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Cubic phase ``α (x³ + y³)`` (radians; x, y in units of ``radius`` samples, default
    ``size / 2``): the extended-depth-of-field mask of Dowski & Cathey (1995)."""
    y, x = _grid(size, radius or size / 2, dtype, device)
    return torch.as_tensor(strength, dtype=dtype, device=device) * (x**3 + y**3)


def circular_gradient(
    size: int,
    strength: float | torch.Tensor,
    *,
    radius: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Phase growing linearly with the distance from the centre, ``α r`` (radians; r in units
    of ``radius`` samples): an axicon, whose focus is a ring."""
    y, x = _grid(size, radius or size / 2, dtype, device)
    return torch.as_tensor(strength, dtype=dtype, device=device) * torch.sqrt(x**2 + y**2)


def zernike_phase(
    size: int,
    coefficients,
    *,
    radius: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Phase ``2π Σ_j a_j Z_j(r / radius, θ)`` in radians (Noll-indexed RMS waves, zero
    outside the disk), the wavefront of :func:`psfmap.psf.zernike` on a pupil of ``radius``
    samples."""
    vector = coefficient_vector(coefficients, dtype=dtype, device=device)
    if vector.ndim != 1:
        raise ValueError(f"coefficients must be one vector (Noll 1..J), got shape "
                         f"{tuple(vector.shape)}")
    y, x = _grid(size, radius, dtype, device)
    rho, theta = torch.sqrt(x**2 + y**2), torch.atan2(y, x)
    wavefront = sum(vector[j - 1] * zernike_polynomial(j, rho, theta)
                    for j in range(1, len(vector) + 1))
    return 2 * math.pi * wavefront
