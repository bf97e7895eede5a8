"""A thin lens as a Fraunhofer (scaled Fourier) transform, with an optional circular pupil.

For a field ``U`` a distance ``d`` in front of a thin lens of focal length ``f``, the field in
the back focal plane is (Goodman, *Introduction to Fourier Optics*, eq. 5-19)

    U_f(u, v) = 1/(i λ f) · exp(i π (1 − d/f) (u² + v²) / (λ f))
                · ∬ P(x, y) U(x, y) exp(−i 2π (x u + y v) / (λ f)) dx dy,

a Fourier transform evaluated at the frequencies ``u / (λ f)``: on an ``N × N`` grid of pitch
``dx`` the output pitch is ``λ f / (N dx)``. With ``d = f`` (front focal plane, the default)
the quadratic phase vanishes: the exact Fourier relation of a 4f system. The constant phase
``exp(i k (d + f))`` is left out: it changes no intensity, and ``k f`` for a focal length of
centimetres cannot be represented in float32. ``P`` is the pupil: a disk of diameter
``aperture`` µm, its edge anti-aliased (each sample weighted by the fraction of its pixel
inside the disk) so that the diameter stays differentiable. The discrete transform is scaled
by ``dx² / (λ f)`` so that energy ``Σ |U|² dx²`` is conserved (Parseval).
"""

from __future__ import annotations

import math

import torch

from psfmap.optics._common import centred_coordinates, check_field, physical, scalar

# fewest samples across the pupil diameter for its disk to be a disk
MIN_APERTURE_SAMPLES = 4


def circular_pupil(
    shape: tuple[int, int],
    diameter: torch.Tensor,
    pixel_size: torch.Tensor,
) -> torch.Tensor:
    """Disk of ``diameter`` µm centred at ``(H // 2, W // 2)``, edges anti-aliased: each
    sample is ``clip(½ + (D/2 − r) / dx, 0, 1)``. Arguments are ``(..., 1, 1)`` tensors."""
    dtype, device = pixel_size.dtype, pixel_size.device
    y = centred_coordinates(shape[0], pixel_size, dtype, device)[..., :, None]
    x = centred_coordinates(shape[1], pixel_size, dtype, device)[..., None, :]
    radius = torch.sqrt(x**2 + y**2)
    return (0.5 + (diameter / 2 - radius) / pixel_size).clamp(0.0, 1.0)


def lens(
    field: torch.Tensor,
    focal_length: float | torch.Tensor,
    *,
    wavelength: float | torch.Tensor,
    pixel_size: float | torch.Tensor,
    aperture: float | torch.Tensor | None = None,
    distance: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, float | torch.Tensor]:
    """Field in the back focal plane of a thin lens, and its sampling pitch.

    Parameters
    ----------
    field : complex tensor, shape (..., N, N)
        Field in the plane ``distance`` µm in front of the lens (square grid).
    focal_length : float or tensor
        Focal length in µm (> 0). Differentiable.
    wavelength : float or tensor
        Wavelength in the medium, µm.
    pixel_size : float or tensor
        Sampling pitch of ``field``, µm.
    aperture : float or tensor, optional
        Diameter of the circular pupil in µm (none: the whole grid passes). Differentiable.
    distance : float or tensor, optional
        Distance from ``field`` to the lens, µm; default ``focal_length`` (no quadratic phase).

    Returns
    -------
    (field, output_pixel_size)
        The back-focal-plane field ``(..., N, N)`` sampled every
        ``wavelength · focal_length / (N · pixel_size)`` µm (a float when every argument is a
        number, else a tensor of the leading shape).
    """
    field = check_field(field)
    if field.shape[-1] != field.shape[-2]:
        raise ValueError(f"field must be square (..., N, N) for lens, got shape "
                         f"{tuple(field.shape)}; the output pitch λf/(N·dx) is per axis")
    size = field.shape[-1]
    f = physical(focal_length, "focal_length", field)
    wl = physical(wavelength, "wavelength", field)
    dx = physical(pixel_size, "pixel_size", field)
    if aperture is not None:
        diameter = physical(aperture, "aperture", field)
        if float(diameter.detach().min()) < MIN_APERTURE_SAMPLES * scalar(dx):
            raise ValueError(
                f"pixel_size={scalar(dx):g} µm cannot sample the aperture="
                f"{float(diameter.detach().min()):g} µm (fewer than {MIN_APERTURE_SAMPLES} "
                f"samples across); expected pixel_size <= aperture / {MIN_APERTURE_SAMPLES}"
            )
        field = field * circular_pupil((size, size), diameter, dx)
    spectrum = torch.fft.fftshift(
        torch.fft.fft2(torch.fft.ifftshift(field, dim=(-2, -1))), dim=(-2, -1)
    )
    out_pitch = wl * f / (size * dx)
    scale = dx**2 / (wl * f)  # 1/(i λ f) · dx², the 1/i applied below
    out = spectrum * torch.complex(torch.zeros_like(scale), -scale)
    if distance is not None:
        d = physical(distance, "distance", field, positive=False)
        u = centred_coordinates(size, out_pitch, f.dtype, field.device)
        radial = u[..., :, None] ** 2 + u[..., None, :] ** 2
        phase = math.pi * (1 - d / f) * radial / (wl * f)
        out = out * torch.polar(torch.ones_like(phase), phase)
    numbers = all(not isinstance(v, torch.Tensor) for v in (focal_length, wavelength,
                                                            pixel_size))
    pitch = float(out_pitch.reshape(-1)[0]) if numbers else out_pitch[..., 0, 0]
    return out, pitch
