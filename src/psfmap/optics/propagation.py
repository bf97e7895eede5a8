"""Free-space propagation of a scalar field: angular spectrum and Rayleigh–Sommerfeld.

Angular spectrum (Goodman, *Introduction to Fourier Optics*, §3.10):

    U(x, y; z) = F⁻¹{ F{U(·; 0)} · H_z },
    H_z(fx, fy) = exp(i 2π z √(1/λ² − fx² − fy²))   for fx² + fy² < 1/λ²,  0 otherwise

(the evanescent components, which decay within a wavelength, are dropped). Rayleigh–Sommerfeld
(first solution, Goodman eq. 3-41) convolves with the impulse response

    h_z(x, y) = z / (2π r²) · (1/r − i k) · exp(i k r),   r = √(x² + y² + z²),  k = 2π/λ,

sampled on the grid and weighted by the pixel area. Both are exact solutions of the Helmholtz
equation; they differ in how they are sampled. WaveBlocks (Page Vizcaíno et al., ICASSP 2020)
uses both as its propagation blocks.

Sampling. The product with ``H_z`` is a *linear* convolution only on a zero-padded grid, and
``H_z`` is a chirp whose phase varies faster with z: sampled on a grid of side ``P = M · dx``
it aliases beyond ``fℓ = 1 / (λ √((2z/P)² + 1))`` (Matsushima & Shimobaba, Opt. Express 17,
2009: the band-limited angular spectrum), i.e. for the directions whose lateral walk over z,
``z tan θ``, exceeds ``P / 2``. With ``padding="auto"`` the grid grows with the distance until
the directions that carry the field's energy (all but a ``1e-6`` fraction) are sampled, and
the remaining tail is band-limited; a grid larger than memory allows is refused.
"""

from __future__ import annotations

import math

import torch

from psfmap.optics._common import (
    centred_coordinates,
    check_field,
    check_memory,
    crop_centred,
    frequencies,
    pad_centred,
    physical,
    scalar,
)

METHODS = ("angular-spectrum", "rayleigh-sommerfeld")
PADDINGS = ("auto", "band-limit", "none")
# fraction of the field's energy allowed in directions the padded grid cannot sample
ENERGY_TAIL = 1e-6


def propagate(
    field: torch.Tensor,
    distance: float | torch.Tensor,
    *,
    wavelength: float | torch.Tensor,
    pixel_size: float | torch.Tensor,
    method: str = "angular-spectrum",
    padding: str | int = "auto",
) -> torch.Tensor:
    """Propagate a field over ``distance`` µm of free space (negative: backwards).

    Parameters
    ----------
    field : complex tensor, shape (..., H, W)
        Complex amplitude sampled every ``pixel_size`` µm (complex64 or complex128).
    distance : float or tensor
        Propagation distance in µm (negative allowed; a tensor may hold one value per leading
        index of ``field``). Differentiable.
    wavelength : float or tensor
        Wavelength in the medium, µm (vacuum wavelength divided by the refractive index).
    pixel_size : float or tensor
        Sampling pitch of the field, µm.
    method : {"angular-spectrum", "rayleigh-sommerfeld"}
        Transfer function (angular spectrum) or sampled impulse response (Rayleigh–Sommerfeld,
        accurate for long distances; it refuses a distance whose impulse response the grid
        cannot sample and suggests the angular spectrum).
    padding : {"auto", "band-limit", "none"} or int
        ``"auto"``: zero-pad to at least twice the field and as much more as the distance
        needs (see the module notes); ``"band-limit"``: pad twice and drop the directions the
        grid cannot sample (constant memory for any distance); ``"none"``: periodic field
        (circular convolution, exactly unitary on the propagating band); an int: pad to that
        grid side and band-limit.

    Returns
    -------
    complex tensor, shape (..., H, W)
        The propagated field on the same grid.

    Notes
    -----
    Energy (``Σ|U|² dx²``) is conserved up to the evanescent part and the light that leaves
    the window; ``propagate(propagate(U, z), -z)`` returns ``U`` for a field inside the window.
    """
    field = check_field(field)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not (padding in PADDINGS or (isinstance(padding, int) and not isinstance(padding, bool))):
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)} or a grid side (int), "
                         f"got {padding!r}")
    z = physical(distance, "distance", field, positive=False)
    wl = physical(wavelength, "wavelength", field)
    dx = physical(pixel_size, "pixel_size", field)
    if not z.requires_grad and not bool((z != 0).any()):
        return field.clone()
    if method == "rayleigh-sommerfeld":
        return _rayleigh_sommerfeld(field, z, wl, dx)
    return _angular_spectrum(field, z, wl, dx, padding)


def transfer_function(
    shape: tuple[int, int],
    distance: torch.Tensor,
    wavelength: torch.Tensor,
    pixel_size: torch.Tensor,
    band_limit: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``H_z`` on an ``shape`` FFT grid (fftfreq order), evanescent waves set to zero.

    ``distance``, ``wavelength``, ``pixel_size`` are ``(..., 1, 1)`` real tensors; with
    ``band_limit`` (the padded grid's sides in samples), directions the grid cannot sample
    (Matsushima & Shimobaba 2009) are dropped too.
    """
    dtype, device = distance.dtype, distance.device
    fy = frequencies(shape[0], pixel_size, dtype, device)[..., :, None]
    fx = frequencies(shape[1], pixel_size, dtype, device)[..., None, :]
    inverse = 1.0 / wavelength
    radial = fx**2 + fy**2
    argument = inverse**2 - radial
    propagating = argument > 0
    # √(1/λ² − f²) − 1/λ = −f² / (1/λ + √(1/λ² − f²)): no cancellation for small f; the safe
    # argument keeps the gradient finite (and zero) on the evanescent samples
    root = torch.sqrt(torch.where(propagating, argument, torch.ones_like(argument)))
    phase = 2 * math.pi * distance * (inverse - radial / (inverse + root))
    keep = propagating
    if band_limit is not None:
        limit_y = inverse / torch.sqrt((2 * distance / (band_limit[0] * pixel_size)) ** 2 + 1)
        limit_x = inverse / torch.sqrt((2 * distance / (band_limit[1] * pixel_size)) ** 2 + 1)
        keep = keep & (fx.abs() <= limit_x) & (fy.abs() <= limit_y)
    unit = torch.polar(torch.ones_like(phase), phase)
    return torch.where(keep, unit, torch.zeros_like(unit))


def _angular_spectrum(field, z, wl, dx, padding) -> torch.Tensor:
    height, width = field.shape[-2:]
    if padding == "none":
        spectrum = torch.fft.fft2(field)
        return torch.fft.ifft2(spectrum * transfer_function((height, width), z, wl, dx))
    if isinstance(padding, int):
        if padding < max(height, width):
            raise ValueError(f"padding={padding} is smaller than the field {height}x{width}; "
                             "expected a grid side at least the field's")
        grid = (padding, padding)
    else:
        grid = (_fast(2 * height), _fast(2 * width))
    if padding == "auto":
        grid = _grid_for(field, grid, z, wl, dx)
    check_memory(grid, field, f"propagating over distance={scalar(z):g} µm")
    padded = pad_centred(field, grid)
    # ifftshift / fftshift put the centred sample at index 0 and back
    spectrum = torch.fft.fft2(torch.fft.ifftshift(padded, dim=(-2, -1)))
    out = torch.fft.ifft2(spectrum * transfer_function(grid, z, wl, dx, band_limit=grid))
    return crop_centred(torch.fft.fftshift(out, dim=(-2, -1)), (height, width))


def _grid_for(field, grid, z, wl, dx) -> tuple[int, int]:
    """Grow the padded grid until the directions carrying all but :data:`ENERGY_TAIL` of the
    field's energy are sampled over ``|z|`` (``P ≥ 2 |z| tan θ``)."""
    with torch.no_grad():
        spectrum = torch.fft.fft2(field.detach())
        power = (spectrum.real**2 + spectrum.imag**2).reshape(-1, *field.shape[-2:]).sum(0)
        pitch, wavelength, distance = scalar(dx), scalar(wl), scalar(z)
        sides = []
        for axis, n in ((0, field.shape[-2]), (1, field.shape[-1])):
            marginal = power.sum(1 - axis)
            freqs = torch.fft.fftfreq(n, d=pitch, dtype=marginal.dtype).abs()
            order = torch.argsort(freqs)
            cumulative = torch.cumsum(marginal[order], 0)
            total = float(cumulative[-1])
            if total <= 0:
                sides.append(grid[axis])
                continue
            index = int(torch.searchsorted(cumulative, (1 - ENERGY_TAIL) * total))
            needed = float(freqs[order][min(index, n - 1)])
            sine = min(wavelength * needed, 1.0)
            if sine >= 1.0:
                raise ValueError(
                    f"distance={distance:g} µm: the field carries energy at grazing angles "
                    f"(pixel_size={pitch:g} µm ≤ wavelength/2), which no finite grid samples; "
                    "use padding='band-limit' or a coarser pixel_size"
                )
            walk = 2 * distance * sine / math.sqrt(1 - sine**2)
            sides.append(max(grid[axis], _fast(math.ceil(walk / pitch))))
    return sides[0], sides[1]


def _fast(n: int) -> int:
    from scipy import fft as scipy_fft  # here, not at import: scipy.fft costs 0.2-0.4 s to load

    n = scipy_fft.next_fast_len(max(int(n), 2), real=False)
    return n + n % 2


def _rayleigh_sommerfeld(field, z, wl, dx) -> torch.Tensor:
    height, width = field.shape[-2:]
    grid = (_fast(2 * height), _fast(2 * width))
    check_memory(grid, field, f"propagating over distance={scalar(z):g} µm")
    # the impulse response's chirp has local frequency x / (λ r): it must stay below the
    # Nyquist frequency 1 / (2 dx) out to the farthest offset the convolution uses
    with torch.no_grad():
        extent = max(height, width) * dx
        local = extent / (wl * torch.sqrt(extent**2 + z**2))
        if bool((local > 1 / (2 * dx)).any()):
            shortest = extent * torch.sqrt(((2 * dx / wl) ** 2 - 1).clamp(min=0))
            raise ValueError(
                f"distance={scalar(z):g} µm is too short for method='rayleigh-sommerfeld' at "
                f"pixel_size={scalar(dx):g} µm: its impulse response is undersampled "
                f"(needs |distance| >= {float(shortest.max()):.4g} µm for this "
                f"{height}x{width} field); use method='angular-spectrum'"
            )
    dtype = z.dtype
    y = centred_coordinates(grid[0], dx, dtype, field.device)[..., :, None]
    x = centred_coordinates(grid[1], dx, dtype, field.device)[..., None, :]
    distance = z.abs()
    r2 = x**2 + y**2 + distance**2
    r = torch.sqrt(r2)
    k = 2 * math.pi / wl
    amplitude = distance / (2 * math.pi * r2) * dx**2
    kernel = torch.complex(amplitude / r, -amplitude * k) * torch.polar(torch.ones_like(r), k * r)
    # backwards: the time-reversed (conjugate) kernel, whose spectrum is H_{-|z|}
    kernel = torch.where(z < 0, kernel.conj(), kernel)
    response = torch.fft.fft2(torch.fft.ifftshift(kernel, dim=(-2, -1)))
    # the sampled kernel's spectrum leaks beyond 1/λ: drop the evanescent part like the
    # angular spectrum does
    fy = frequencies(grid[0], dx, dtype, field.device)[..., :, None]
    fx = frequencies(grid[1], dx, dtype, field.device)[..., None, :]
    response = torch.where(fx**2 + fy**2 < 1 / wl**2, response, torch.zeros_like(response))
    padded = torch.fft.ifftshift(pad_centred(field, grid), dim=(-2, -1))
    out = torch.fft.ifft2(torch.fft.fft2(padded) * response)
    return crop_centred(torch.fft.fftshift(out, dim=(-2, -1)), (height, width))


def fresnel_number(aperture: float, distance: float, wavelength: float) -> float:
    """``N_F = a² / (λ z)`` of an aperture of half-width ``aperture`` µm at ``distance`` µm."""
    return aperture**2 / (wavelength * abs(distance))
