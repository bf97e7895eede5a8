"""Camera noise: mixed Poisson–Gaussian model of a photon-counting sensor.

Following the image formation model of Shajkofci & Liebling (IEEE TIP 2020, eq. 10), a
noise-free image ``x ≥ 0`` scaled to photons is converted to photo-electrons with quantum
efficiency ``η`` (shot noise, Poisson), then read out with additive Gaussian read noise and a
constant offset:

    y = P(η s x) + N(0, σ_r²) + b

``s`` is the photon scale (photons per unit of ``x``), chosen here so that the brightest pixel
of ``x`` receives ``photons`` photons on average.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from psfmap._validation import ArrayKind, as_tensor, check_finite, check_positive


@dataclass(frozen=True)
class NoiseModel:
    """Parameters of the Poisson–Gaussian camera model ``y = P(η s x) + N(0, σ²) + b``.

    Attributes
    ----------
    photons : float
        Expected photon count at the brightest pixel of the clean image (sets ``s``).
    quantum_efficiency : float
        ``η`` in (0, 1]: fraction of photons converted to electrons.
    read_noise : float
        ``σ_r``, standard deviation of the Gaussian read noise, in electrons.
    offset : float
        ``b``, constant camera offset (baseline), in electrons.
    """

    photons: float
    quantum_efficiency: float = 1.0
    read_noise: float = 0.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        check_positive(self.photons, "photons")
        efficiency = check_positive(self.quantum_efficiency, "quantum_efficiency")
        if efficiency > 1:
            raise ValueError(f"quantum_efficiency must be in (0, 1], got {efficiency!r}")
        check_positive(self.read_noise, "read_noise", allow_zero=True)
        offset = float(self.offset)
        if offset != offset or abs(offset) == float("inf"):
            raise ValueError(f"offset must be a finite number, got {self.offset!r}")


def _generator(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def poisson_gaussian(
    image: Any,
    photons: float,
    *,
    quantum_efficiency: float = 1.0,
    read_noise: float = 0.0,
    offset: float = 0.0,
    rescale: bool = True,
    seed: int | torch.Generator | None = None,
) -> Any:
    """Add Poisson–Gaussian camera noise (Shajkofci & Liebling, IEEE TIP 2020, eq. 10).

    .. math:: y = \\mathcal{P}(η\\, s\\, x) + \\mathcal{N}(0, σ_r^2) + b,
              \\qquad s = \\text{photons} / \\max x

    Parameters
    ----------
    image : array or tensor, shape (..., H, W)
        Noise-free image, non-negative.
    photons : float
        Expected photons at the brightest pixel (lower = noisier).
    quantum_efficiency, read_noise, offset : float
        ``η`` in (0, 1], ``σ_r`` ≥ 0 (electrons), ``b`` (electrons).
    rescale : bool
        If True (default) return ``(y − b) / (η s)``, the noisy image in the units of ``image``
        (unbiased: its mean is ``image``); if False return the camera counts ``y`` in electrons.
    seed : int or torch.Generator, optional
        Seed of the noise (``None``: fresh randomness).

    Returns
    -------
    Same kind (NumPy/torch) and floating dtype as ``image``.
    """
    kind = ArrayKind(image)
    clean = check_finite(as_tensor(image, "image"), "image")
    if clean.numel() == 0:
        raise ValueError("image is empty; expected at least one pixel")
    if bool((clean < 0).any()):
        raise ValueError("image has negative values; the Poisson model needs intensities >= 0")
    model = NoiseModel(photons, quantum_efficiency, read_noise, offset)
    peak = float(clean.max())
    if peak <= 0:
        raise ValueError("image is all zero; cannot scale it to photons")
    generator = _generator(seed)
    scale = model.photons / peak
    rate = (model.quantum_efficiency * scale) * clean.to(torch.float64).cpu()
    electrons = torch.poisson(rate, generator=generator)
    if model.read_noise > 0:
        electrons = electrons + model.read_noise * torch.randn(
            rate.shape, generator=generator, dtype=torch.float64
        )
    counts = electrons + model.offset
    if rescale:
        counts = (counts - model.offset) / (model.quantum_efficiency * scale)
    return kind.restore(counts.to(dtype=clean.dtype, device=clean.device))
