"""``torch.nn.Module`` blocks, one per optical element, chained from source to camera.

Each block holds its physical parameters as named ``nn.Parameter`` tensors (``distance``,
``focal_length``, ``phase``, ``zernike``...), trainable or frozen (``requires_grad``), and maps
a :class:`Wave` (a field with its sampling pitch and wavelength) to the next one. The camera
ends the chain: it turns the last wave into a PSF and images objects with it. This is the
design of WaveBlocks (Page Vizcaíno, Wang, Lasser, Favaro, ICASSP 2020), with the source built
from psfmap's Zernike pupil (:func:`psfmap.psf.zernike_polynomial`) or from a measured PSF.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from psfmap._validation import as_tensor, check_positive, check_psf, describe
from psfmap.optics.camera import convolve, integrate_pixels, intensity
from psfmap.optics.lens import lens
from psfmap.optics.masks import phase_mask
from psfmap.optics.propagation import METHODS, propagate
from psfmap.psf.zernike import coefficient_vector, zernike_polynomial


@dataclass
class Wave:
    """A complex field ``(..., N, N)`` sampled every ``pixel_size`` µm at ``wavelength`` µm."""

    field: torch.Tensor
    pixel_size: float | torch.Tensor
    wavelength: float | torch.Tensor


class Block(nn.Module):
    """Base of the optical blocks: named parameters, trainable or frozen.

    ``trainable`` lists the parameter names that receive gradients (``True``: all of them);
    the others are frozen. :func:`psfmap.optics.fit` can change the choice.
    """

    kind = "block"
    focusable = False  # takes a defocus offset (the through-focus axis of a Microscope)

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self.name = name or self.kind

    def _parameter(self, name: str, value: Any, trainable: Iterable[str] | bool) -> None:
        tensor = torch.as_tensor(value, dtype=torch.get_default_dtype()).clone()
        wanted = trainable if isinstance(trainable, bool) else name in set(trainable)
        self.register_parameter(name, nn.Parameter(tensor, requires_grad=bool(wanted)))

    @staticmethod
    def _check_trainable(trainable: Iterable[str] | bool, names: Sequence[str], kind: str):
        if isinstance(trainable, bool):
            return trainable
        if isinstance(trainable, str):
            trainable = (trainable,)
        unknown = sorted(set(trainable) - set(names))
        if unknown:
            raise ValueError(f"trainable names {unknown} that {kind} does not have; "
                             f"expected some of {list(names)}")
        return tuple(trainable)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def _offset_field(field: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """Give ``field`` a leading axis for a batch of defocus offsets ``(D,)``."""
    if offset is None or offset.ndim == 0 or field.ndim > 2:
        return field
    return field.expand(offset.shape[0], *field.shape[-2:])


class ZernikeSource(Block):
    """Field of a point source in the focal plane of a pupil with Zernike aberrations.

    ``U = F⁻¹{ P(f) · exp(i 2π Σ_j a_j Z_j(|f| λ/NA, ∠f)) · exp(i 2π z √((n/λ)² − |f|²))
    · exp(−i 2π f·s) }``: the disk ``P`` of radius ``NA/λ`` (anti-aliased edge), Noll-indexed
    RMS waves ``a_j`` (``zernike``), a defocus ``z`` µm in the immersion medium of index ``n``
    (``depth``, exact rather than the paraxial Zernike defocus), and a lateral offset ``s``
    µm (``shift``, (y, x)). Normalised to ``Σ |U|² = 1``.

    Parameters
    ----------
    size : int
        Side of the field grid (samples).
    na, wavelength, pixel_size : float
        Numerical aperture, vacuum wavelength (µm), sampling pitch (µm) of the field.
    zernike : sequence or dict, optional
        Initial coefficients (default zeros); ``n_terms`` Noll terms are kept (default 11).
    depth : float
        Initial defocus in µm; ``shift`` the initial (y, x) offset in µm.
    immersion_index : float
        Refractive index ``n`` of the medium.
    depth_scale : float
        Defocus per unit of focus offset (parameter ``depth_scale``): the offsets a
        :class:`Microscope` passes are stage positions, and a sample whose index differs from
        the immersion's moves the focus by a different amount (the axial focal shift, Hell et
        al., J. Microsc. 169, 1993); the defocus is ``depth + depth_scale · offset``.
    free_terms : sequence of int, optional
        Noll indices that a fit may change (default 5..n_terms: piston changes nothing, and
        tip/tilt and defocus duplicate ``shift`` and ``depth``, which would make the fit
        ambiguous); the other coefficients keep their given values.
    """

    kind = "source"
    focusable = True
    names = ("zernike", "depth", "shift", "depth_scale")

    def __init__(self, size: int, *, na: float, wavelength: float, pixel_size: float,
                 zernike: Any = None, n_terms: int = 11, depth: float = 0.0,
                 shift: Sequence[float] = (0.0, 0.0), immersion_index: float = 1.0,
                 depth_scale: float = 1.0, free_terms: Sequence[int] | None = None,
                 trainable: Iterable[str] | bool = (), name: str | None = None) -> None:
        super().__init__(name)
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ValueError(f"size must be an integer >= 8, got {size!r}")
        self.size = size
        self.na = check_positive(na, "na")
        self.wavelength = check_positive(wavelength, "wavelength")
        self.pixel_size = check_positive(pixel_size, "pixel_size")
        self.immersion_index = check_positive(immersion_index, "immersion_index")
        if self.na > self.immersion_index:
            raise ValueError(f"na={na} exceeds immersion_index={immersion_index}; the NA "
                             "cannot exceed the refractive index of the medium")
        cutoff = self.na / self.wavelength
        if cutoff > 1 / (2 * self.pixel_size):
            raise ValueError(
                f"pixel_size={pixel_size} µm cannot sample the pupil of na={na} at "
                f"wavelength={wavelength} µm: the field needs pixel_size <= "
                f"{self.wavelength / (2 * self.na):.4g} µm (λ / 2NA)"
            )
        if cutoff * size * self.pixel_size < 3:
            raise ValueError(
                f"the pupil spans {cutoff * size * self.pixel_size:.1f} frequency samples: "
                f"size={size} at pixel_size={pixel_size} µm is too small a window; expected "
                f"size >= {math.ceil(3 / (cutoff * self.pixel_size))}"
            )
        vector = torch.zeros(n_terms)
        if zernike is not None:
            given = coefficient_vector(zernike, dtype=torch.float32).reshape(-1)
            if len(given) > n_terms:
                raise ValueError(f"zernike has {len(given)} terms, more than n_terms={n_terms}")
            vector[: len(given)] = given
        trainable = self._check_trainable(trainable, self.names, "ZernikeSource")
        self._parameter("zernike", vector, trainable)
        self._parameter("depth", float(depth), trainable)
        self._parameter("shift", torch.as_tensor(shift, dtype=torch.float32), trainable)
        self._parameter("depth_scale", float(depth_scale), trainable)
        self.n_terms = n_terms
        free = list(range(5, n_terms + 1)) if free_terms is None else [int(j) for j in free_terms]
        if any(not 1 <= j <= n_terms for j in free):
            raise ValueError(f"free_terms must be Noll indices from 1 to n_terms={n_terms}, "
                             f"got {free}")
        self.free_terms = free
        mask = torch.zeros(n_terms)
        mask[[j - 1 for j in free]] = 1.0
        self.register_buffer("_free", mask, persistent=False)

    def _basis(self, dtype: torch.dtype, device: torch.device):
        # the grid and the Zernike basis depend on fixed settings only: computed once per
        # dtype and device (they cost more than the rest of a forward pass)
        key = (dtype, str(device))
        cache = self.__dict__.setdefault("_basis_cache", {})
        if key not in cache:
            cache[key] = self._compute_basis(dtype, device)
        return cache[key]

    def _compute_basis(self, dtype: torch.dtype, device: torch.device):
        pitch = torch.tensor(self.pixel_size, dtype=torch.float64)
        freqs = torch.fft.fftfreq(self.size, d=float(pitch), dtype=torch.float64)
        fy, fx = torch.meshgrid(freqs, freqs, indexing="ij")
        cutoff = self.na / self.wavelength
        radial = torch.sqrt(fx**2 + fy**2)
        rho, theta = radial / cutoff, torch.atan2(fy, fx)
        step = 1 / (self.size * self.pixel_size)
        disk = (0.5 + (cutoff - radial) / step).clamp(0.0, 1.0)
        basis = torch.stack([zernike_polynomial(j, rho.clamp(max=1.0), theta)
                             for j in range(1, self.n_terms + 1)])
        medium = (self.immersion_index / self.wavelength) ** 2 - radial**2
        kz = torch.sqrt(medium.clamp(min=0))
        return [t.to(dtype=dtype, device=device) for t in (disk, basis, kz, fy, fx)]

    def forward(self, offset: torch.Tensor | None = None) -> Wave:
        dtype, device = self.zernike.dtype, self.zernike.device
        disk, basis, kz, fy, fx = self._basis(dtype, device)
        depth = self.depth if offset is None else self.depth + self.depth_scale * offset.to(dtype)
        # the fixed coefficients get no gradient, so no optimiser moves them
        free = self._free.to(dtype)
        coefficients = self.zernike * free + self.zernike.detach() * (1 - free)
        wavefront = torch.einsum("j,jyx->yx", coefficients, basis)
        phase = 2 * math.pi * (wavefront - fy * self.shift[0] - fx * self.shift[1])
        phase = phase + 2 * math.pi * depth[..., None, None] * kz
        pupil = disk * torch.polar(torch.ones_like(phase), phase)
        field = torch.fft.fftshift(torch.fft.ifft2(pupil), dim=(-2, -1))
        energy = (disk**2).sum() / self.size**2  # Parseval: Σ|U|² of the unnormalised field
        return Wave(field / torch.sqrt(energy), self.pixel_size, self.wavelength)


class PSFSource(Block):
    """Field of a given intensity PSF: amplitude ``√psf``, flat phase, optional shift.

    The PSF (``(N, N)``, non-negative) is frozen; ``shift`` ((y, x) µm, applied as a linear
    phase of the spectrum) is its only parameter.
    """

    kind = "source"
    names = ("shift",)

    def __init__(self, psf: Any, *, wavelength: float, pixel_size: float,
                 shift: Sequence[float] = (0.0, 0.0), trainable: Iterable[str] | bool = (),
                 name: str | None = None) -> None:
        super().__init__(name)
        psf = as_tensor(psf, "psf")
        if psf.ndim != 2 or psf.shape[0] != psf.shape[1]:
            raise ValueError(f"psf must be a square (N, N) image, got {describe(psf)}")
        check_psf(psf, "psf")
        self.register_buffer("amplitude", torch.sqrt(psf / psf.sum()).to(
            torch.get_default_dtype()))
        self.wavelength = check_positive(wavelength, "wavelength")
        self.pixel_size = check_positive(pixel_size, "pixel_size")
        trainable = self._check_trainable(trainable, self.names, "PSFSource")
        self._parameter("shift", torch.as_tensor(shift, dtype=torch.float32), trainable)

    def forward(self, offset: torch.Tensor | None = None) -> Wave:
        field = self.amplitude.to(torch.complex128 if self.shift.dtype == torch.float64
                                  else torch.complex64)
        size = field.shape[-1]
        freqs = torch.fft.fftfreq(size, d=self.pixel_size, dtype=self.shift.dtype,
                                  device=self.shift.device)
        phase = -2 * math.pi * (freqs[:, None] * self.shift[0] + freqs[None, :] * self.shift[1])
        spectrum = torch.fft.fft2(torch.fft.ifftshift(field, dim=(-2, -1)))
        field = torch.fft.fftshift(
            torch.fft.ifft2(spectrum * torch.polar(torch.ones_like(phase), phase)), dim=(-2, -1)
        )
        return Wave(field, self.pixel_size, self.wavelength)


class Propagation(Block):
    """Free space over ``distance`` µm (:func:`psfmap.optics.propagate`); the through-focus
    offset of a :class:`Microscope` adds to the distance when this block is its focus."""

    kind = "propagation"
    focusable = True
    names = ("distance",)

    def __init__(self, distance: float, *, method: str = "angular-spectrum",
                 padding: str | int = "auto", trainable: Iterable[str] | bool = (),
                 name: str | None = None) -> None:
        super().__init__(name)
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        self.method, self.padding = method, padding
        trainable = self._check_trainable(trainable, self.names, "Propagation")
        self._parameter("distance", float(distance), trainable)

    def forward(self, wave: Wave, offset: torch.Tensor | None = None) -> Wave:
        distance = self.distance if offset is None else self.distance + offset.to(
            self.distance.dtype)
        field = _offset_field(wave.field, offset)
        out = propagate(field, distance, wavelength=wave.wavelength, pixel_size=wave.pixel_size,
                        method=self.method, padding=self.padding)
        return Wave(out, wave.pixel_size, wave.wavelength)


class Lens(Block):
    """Thin lens, front to back focal plane (:func:`psfmap.optics.lens`); parameters
    ``focal_length`` and, when given, the pupil diameter ``aperture`` (µm)."""

    kind = "lens"
    names = ("focal_length", "aperture")

    def __init__(self, focal_length: float, *, aperture: float | None = None,
                 trainable: Iterable[str] | bool = (), name: str | None = None) -> None:
        super().__init__(name)
        trainable = self._check_trainable(trainable, self.names, "Lens")
        self._parameter("focal_length", check_positive(focal_length, "focal_length"), trainable)
        if aperture is not None:
            self._parameter("aperture", check_positive(aperture, "aperture"), trainable)
        else:
            self.aperture = None

    def forward(self, wave: Wave) -> Wave:
        out, pitch = lens(wave.field, self.focal_length, wavelength=wave.wavelength,
                          pixel_size=wave.pixel_size, aperture=self.aperture)
        return Wave(out, pitch, wave.wavelength)


class PhaseMask(Block):
    """Phase mask / SLM (:func:`psfmap.optics.phase_mask`): a per-sample ``phase`` (radians,
    ``(N, N)``, default flat) and the SLM ``fill_factor``."""

    kind = "mask"
    names = ("phase", "fill_factor")

    def __init__(self, phase: Any = None, *, size: int | None = None, fill_factor: float = 1.0,
                 trainable: Iterable[str] | bool = (), name: str | None = None) -> None:
        super().__init__(name)
        if phase is None:
            if size is None:
                raise ValueError("PhaseMask needs a phase (N, N) or a size for a flat mask")
            phase = torch.zeros(size, size)
        phase = as_tensor(phase, "phase")
        if phase.ndim != 2:
            raise ValueError(f"phase must be (N, N) radians, got {describe(phase)}")
        if not 0 < fill_factor <= 1:
            raise ValueError(f"fill_factor must be in (0, 1], got {fill_factor!r}")
        trainable = self._check_trainable(trainable, self.names, "PhaseMask")
        self._parameter("phase", phase, trainable)
        self._parameter("fill_factor", float(fill_factor), trainable)

    def forward(self, wave: Wave) -> Wave:
        if tuple(self.phase.shape) != tuple(wave.field.shape[-2:]):
            raise ValueError(f"the mask's phase is {tuple(self.phase.shape)} but the field "
                             f"reaching it is {tuple(wave.field.shape[-2:])}")
        fill = self.fill_factor.clamp(1e-6, 1.0)  # an optimiser step may leave (0, 1]
        out = phase_mask(wave.field, self.phase, fill_factor=fill, wrap=True)
        return Wave(out, wave.pixel_size, wave.wavelength)


class Camera(Block):
    """The detector: irradiance integrated over ``binning × binning`` samples per pixel,
    normalised to a PSF that sums to 1, then ``gain · (PSF ⋆ object) + background``.

    ``crop`` keeps the central ``crop × crop`` camera pixels of the PSF (the rest of the
    simulated window is margin that keeps the periodic FFT tails away).
    """

    kind = "camera"
    names = ("gain", "background")

    def __init__(self, *, binning: int = 1, crop: int | None = None, gain: float = 1.0,
                 background: float = 0.0, trainable: Iterable[str] | bool = (),
                 name: str | None = None) -> None:
        super().__init__(name)
        if isinstance(binning, bool) or not isinstance(binning, int) or binning < 1:
            raise ValueError(f"binning must be a positive integer, got {binning!r}")
        if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int)
                                 or crop < 1):
            raise ValueError(f"crop must be a positive integer, got {crop!r}")
        self.binning, self.crop = binning, crop
        trainable = self._check_trainable(trainable, self.names, "Camera")
        self._parameter("gain", float(gain), trainable)
        self._parameter("background", float(background), trainable)

    def psf(self, wave: Wave) -> torch.Tensor:
        """Camera PSF ``(..., h, w)``, centred at ``(h // 2, w // 2)``, summing to 1."""
        irradiance = intensity(wave.field)
        size = irradiance.shape[-1]
        # keep whole camera pixels around the centre sample (the centre pixel holds it)
        pixels = size // self.binning
        start = size // 2 - (pixels // 2) * self.binning - self.binning // 2
        if start < 0:
            pixels -= 1
            start += self.binning
        window = irradiance[..., start:start + pixels * self.binning,
                            start:start + pixels * self.binning]
        psf = integrate_pixels(window, self.binning)
        if self.crop is not None:
            if self.crop > pixels:
                raise ValueError(f"crop={self.crop} exceeds the {pixels} camera pixels the "
                                 "field spans")
            top = pixels // 2 - self.crop // 2
            psf = psf[..., top:top + self.crop, top:top + self.crop]
        return psf / psf.sum(dim=(-2, -1), keepdim=True)

    def image(self, psf: torch.Tensor, objects: torch.Tensor | None) -> torch.Tensor:
        """``gain · (psf ⋆ objects) + background`` (``objects=None``: the PSF itself)."""
        signal = psf if objects is None else convolve(psf, objects)
        return self.gain * signal + self.background

    def pixel_size(self, wave: Wave) -> float | torch.Tensor:
        """Camera pixel pitch (µm) for a wave of this sampling."""
        return wave.pixel_size * self.binning
