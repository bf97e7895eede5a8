"""Synthetic bead data from a known smooth family of Zernike PSF fields (for validation).

Condition ``t = (focus, astigmatism)`` and field position ``(u, v) ∈ [-1, 1]²`` (row, col)
define the Noll coefficients (RMS waves)

    a_4 = focus + tilt (0.6 u + 0.8 v)                      (tilted focal plane)
    a_5 = 2 field_astigmatism u v + 0.5 astigmatism
    a_6 = field_astigmatism (u² − v²) + astigmatism

so every condition's PSF varies smoothly across the field, and the conditions form a
two-parameter family — the situation of Debarnot, Mangeat & Weiss, IEEE TCI 2021, Section IV.
Beads are placed at sub-pixel positions by adding tip/tilt (``a_2, a_3``) to the pupil, which
shifts the band-limited PSF exactly, then imaged with Poisson noise.

The PSFs of this microscope have a compact support of ``psf_size`` pixels (the pupil PSF
computed on, and normalised within, that window), so that an operator with kernels of that
size or larger can represent the family exactly and the calibration error is measurable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from psfmap._validation import check_seed
from psfmap.psf.zernike import zernike


@dataclass
class ZernikeFieldFamily:
    """A known family of spatially-variant Zernike PSF fields.

    Attributes
    ----------
    image_shape : (H, W)
    psf_size : int
        Side of the PSF support (odd); the PSFs are zero outside it.
    na, wavelength, pixel_size : float
        Optics (µm).
    tilt, field_astigmatism : float
        Strength of the field variation (RMS waves at the field corners).
    """

    image_shape: tuple[int, int] = (256, 256)
    psf_size: int = 17
    na: float = 1.2
    wavelength: float = 0.6
    pixel_size: float = 0.08
    tilt: float = 0.06
    field_astigmatism: float = 0.03
    immersion_index: float = 1.515

    @property
    def optics(self) -> dict:
        return {
            "na": self.na, "wavelength": self.wavelength, "pixel_size": self.pixel_size,
            "immersion_index": self.immersion_index,
        }

    def coefficients(self, condition, positions: np.ndarray) -> np.ndarray:
        """Noll coefficients ``(N, 6)`` (j = 1..6) at ``positions (N, 2)`` (pixels)."""
        focus, astigmatism = float(condition[0]), float(condition[1])
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
        height, width = self.image_shape
        u = 2 * positions[:, 0] / max(height - 1, 1) - 1
        v = 2 * positions[:, 1] / max(width - 1, 1) - 1
        out = np.zeros((len(positions), 6))
        out[:, 3] = focus + self.tilt * (0.6 * u + 0.8 * v)
        out[:, 4] = 2 * self.field_astigmatism * u * v + 0.5 * astigmatism
        out[:, 5] = self.field_astigmatism * (u**2 - v**2) + astigmatism
        return out

    def psfs(
        self,
        condition,
        positions: np.ndarray,
        size: int | None = None,
        shifts: np.ndarray | None = None,
    ) -> np.ndarray:
        """PSFs ``(N, size, size)`` at ``positions``, optionally shifted by ``shifts (N, 2)`` px.

        PSFs are computed on the ``psf_size`` support (normalised there) and zero-padded to
        ``size``. A shift ``(dr, dc)`` moves the PSF centre to
        ``(size//2 + dr, size//2 + dc)``: tilt ``a_3 = -dr c / 2`` and tip ``a_2 = -dc c / 2``
        with ``c = pixel_size NA / λ``.
        """
        size = size or self.psf_size
        support = min(size, self.psf_size)
        coefficients = self.coefficients(condition, positions)
        if shifts is not None:
            cutoff = self.pixel_size * self.na / self.wavelength
            shifts = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
            coefficients[:, 1] = -shifts[:, 1] * cutoff / 2
            coefficients[:, 2] = -shifts[:, 0] * cutoff / 2
        if len(coefficients) == 0:
            return np.zeros((0, size, size))
        psf = zernike(
            support, torch.from_numpy(coefficients), na=self.na, wavelength=self.wavelength,
            pixel_size=self.pixel_size, immersion_index=self.immersion_index,
        ).numpy()
        pad = (size - support) // 2
        return np.pad(psf, ((0, 0), (pad, pad), (pad, pad)))

    def random_positions(
        self, n_beads: int, min_distance: float, margin: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Up to ``n_beads`` sub-pixel positions at least ``min_distance`` apart (Chebyshev)."""
        height, width = self.image_shape
        chosen: list[np.ndarray] = []
        for _ in range(50 * n_beads):
            if len(chosen) == n_beads:
                break
            point = rng.uniform([margin, margin], [height - 1 - margin, width - 1 - margin])
            if all(np.abs(point - other).max() >= min_distance for other in chosen):
                chosen.append(point)
        return np.array(chosen).reshape(-1, 2)

    def bead_image(
        self,
        condition,
        n_beads: int,
        *,
        photons: float = 20000.0,
        background: float = 10.0,
        min_distance: float | None = None,
        positions: np.ndarray | None = None,
        seed: int | np.random.Generator | None = 0,
        noise: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A bead image (Poisson counts, float64) and the bead centres ``(N, 2)``.

        Bead brightness varies by ±25 % around ``photons``.
        """
        seed = check_seed(seed)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        render = self.psf_size + 8 + (self.psf_size + 8 + 1) % 2
        half = render // 2
        if positions is None:
            min_distance = min_distance or 1.6 * self.psf_size
            positions = self.random_positions(n_beads, min_distance, half + 1, rng)
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
        integer = np.round(positions).astype(np.int64)
        psfs = self.psfs(condition, positions, render, positions - integer)
        flux = photons * rng.uniform(0.75, 1.25, len(positions))
        height, width = self.image_shape
        canvas = np.zeros((height + 2 * half, width + 2 * half))
        for (row, col), psf, amount in zip(integer, psfs, flux, strict=True):
            canvas[row : row + render, col : col + render] += amount * psf
        clean = canvas[half : half + height, half : half + width] + background
        image = rng.poisson(clean).astype(np.float64) if noise else clean
        return image, positions

    def field_psfs(self, condition, grid: int = 8, size: int | None = None):
        """Reference PSFs ``(grid², size, size)`` on a regular grid and their positions."""
        height, width = self.image_shape
        rows = (np.arange(grid) + 0.5) * height / grid
        cols = (np.arange(grid) + 0.5) * width / grid
        rr, cc = np.meshgrid(np.floor(rows), np.floor(cols), indexing="ij")
        positions = np.column_stack([rr.ravel(), cc.ravel()])
        return self.psfs(condition, positions, size), positions.astype(np.int64)


def field_error(operator, reference_psfs: np.ndarray, positions: np.ndarray) -> float:
    """Relative operator error on sampled columns: ``√(Σ_y ‖h(y) − h*(y)‖² / Σ_y ‖h*(y)‖²)``.

    ``h(y)`` is ``operator.psf_at(y)`` (cropped or zero-padded to the reference size); the sum
    over a regular grid of positions ``y`` approximates the Hilbert–Schmidt norm of the
    difference of the operators, ``‖H − H*‖_HS / ‖H*‖_HS``.
    """
    reference = np.asarray(reference_psfs, dtype=np.float64)
    size = reference.shape[-1]
    total = 0.0
    for psf_ref, (row, col) in zip(reference, positions, strict=True):
        estimate = operator.psf_at(int(row), int(col)).detach().cpu().double().numpy()
        estimate = _fit_window(estimate, size)
        total += float(((estimate - psf_ref) ** 2).sum())
    return float(np.sqrt(total / (reference**2).sum()))


def _fit_window(psf: np.ndarray, size: int) -> np.ndarray:
    """Crop or zero-pad a centred kernel to ``size × size`` keeping the centre index."""
    h, w = psf.shape
    out = np.zeros((size, size))
    half = size // 2
    r0, c0 = h // 2 - half, w // 2 - half
    r_start, r_stop = max(0, -r0), min(size, h - r0)
    c_start, c_stop = max(0, -c0), min(size, w - c0)
    out[r_start:r_stop, c_start:c_stop] = psf[
        r0 + r_start : r0 + r_stop, c0 + c_start : c0 + c_stop
    ]
    return out


def conditions_grid(n_conditions: int, focus: float = 0.1, astigmatism: float = 0.03):
    """``n_conditions`` conditions ``(focus, astigmatism)``: focus swept over ``[-focus, focus]``,
    astigmatism alternating in ``[-astigmatism, astigmatism]`` (a 2-parameter family)."""
    foci = np.linspace(-focus, focus, n_conditions)
    astig = astigmatism * np.cos(np.arange(n_conditions) * 2.4)
    return [(float(f), float(a)) for f, a in zip(foci, astig, strict=True)]


def synthetic_calibration_set(
    n_conditions: int = 5,
    image_shape: tuple[int, int] = (256, 256),
    n_beads: int = 60,
    *,
    psf_size: int = 17,
    photons: float = 20000.0,
    seed: int = 0,
    focus: float = 0.1,
    astigmatism: float = 0.03,
    tilt: float = 0.06,
    field_astigmatism: float = 0.03,
):
    """A known family, its conditions and one Poisson bead image per condition.

    ``focus`` and ``astigmatism`` are the ranges of :func:`conditions_grid`, ``tilt`` and
    ``field_astigmatism`` the field variation of :class:`ZernikeFieldFamily` (RMS waves).
    Returns ``(model, conditions, images, positions)`` where ``model`` is a
    :class:`ZernikeFieldFamily`.
    """
    model = ZernikeFieldFamily(image_shape=tuple(image_shape), psf_size=psf_size, tilt=tilt,
                               field_astigmatism=field_astigmatism)
    conditions = conditions_grid(n_conditions, focus, astigmatism)
    # beads spaced so that about n_beads fit: area per bead ~ (1.6 × spacing)²
    spacing = max(1.3 * psf_size, 0.8 * np.sqrt(image_shape[0] * image_shape[1] / n_beads))
    images, positions = [], []
    rng = np.random.default_rng(check_seed(seed))
    for condition in conditions:
        image, where = model.bead_image(
            condition, n_beads, photons=photons, min_distance=spacing, seed=rng
        )
        images.append(image)
        positions.append(where)
    return model, conditions, images, positions
