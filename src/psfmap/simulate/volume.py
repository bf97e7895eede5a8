"""Simulated z-stacks: a sharp volume blurred by a 3-D PSF or a depth- and field-variant 3-D
operator, with camera noise.

.. math:: g = \\mathcal{P}(η s\\, H f) + \\mathcal{N}(0, σ_r^2) + b, \\qquad
          H f = \\sum_i k_i ⋆ (w_i · f)

in three dimensions (one PSF everywhere: ``H f = h ⋆ f``), the linear (not circular)
convolution of :mod:`psfmap.operators.volume`; the noise is that of
:func:`psfmap.simulate.noise.poisson_gaussian` (Shajkofci & Liebling, IEEE TIP 2020, eq. 10),
returned in the units of the sharp volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from psfmap._validation import ArrayKind, as_tensor, check_finite, check_seed, describe
from psfmap.simulate.noise import NoiseModel, poisson_gaussian

__all__ = ["VolumeSimulation", "simulate_volume"]


@dataclass
class VolumeSimulation:
    """Result of :func:`simulate_volume`: ``blurred`` (noisy), ``clean`` (``H f``), the
    ``operator``, the ``noise`` model (None without noise) and the ``seed`` used."""

    blurred: Any
    clean: Any
    operator: Any
    noise: NoiseModel | None = None
    seed: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def simulate_volume(
    sharp: Any,
    blur: Any,
    *,
    photons: float | None = None,
    quantum_efficiency: float = 1.0,
    read_noise: float = 0.0,
    offset: float = 0.0,
    seed: int | torch.Generator | np.random.Generator | None = None,
) -> VolumeSimulation:
    """Blur a sharp z-stack ``(D, H, W)`` as a volume and add camera noise.

    Parameters
    ----------
    sharp : array or tensor (D, H, W)
        Non-negative sharp volume.
    blur : 3-D PSF (d, h, w) (array or tensor), or a 3-D operator
        One PSF for the whole volume (normalised to sum 1), or an operator acting on
        ``(D, H, W)`` volumes (e.g. a calibrated :class:`VolumeProductConvolution`).
    photons : float, optional
        Expected photons at the brightest voxel of ``H f``; None adds no noise.
    quantum_efficiency, read_noise, offset, seed :
        As :func:`psfmap.simulate.simulate` (a seed is drawn and recorded when omitted).

    Examples
    --------
    >>> import numpy as np
    >>> from psfmap.psf import gaussian
    >>> psf = np.stack([gaussian(9, s).numpy() for s in (2.0, 1.2, 2.0)])
    >>> result = simulate_volume(np.ones((8, 32, 32)), psf, photons=100, seed=0)
    >>> result.blurred.shape, result.seed
    ((8, 32, 32), 0)
    """
    kind = ArrayKind(sharp)
    volume = check_finite(as_tensor(sharp, "sharp"), "sharp")
    if volume.ndim != 3:
        raise ValueError(f"sharp must be a z-stack (D, H, W), got {describe(sharp)}")
    if bool((volume < 0).any()):
        raise ValueError("sharp has negative values; expected a non-negative intensity volume")
    seed = check_seed(np.random.SeedSequence() if seed is None else seed, draw=True)
    if callable(getattr(blur, "forward", None)):
        operator = blur
        if getattr(operator, "ndim", 3) != 3:
            raise ValueError(f"blur must be a 3-D operator for a z-stack, got {describe(blur)}")
        shape = getattr(operator, "image_shape", None)
        if shape is not None and tuple(shape) != tuple(volume.shape):
            raise ValueError(f"blur acts on volumes of shape {tuple(shape)}, but sharp has "
                             f"shape {tuple(volume.shape)}")
    else:
        from psfmap.operators import Convolution

        psf = check_finite(as_tensor(blur, "blur", dtype=volume.dtype), "blur")
        if psf.ndim != 3:
            raise ValueError(f"blur must be a 3-D PSF (d, h, w) or a 3-D operator, got "
                             f"{describe(blur)}")
        if bool((psf < 0).any()) or not float(psf.sum()) > 0:
            raise ValueError("blur must be a non-negative 3-D PSF with a positive sum")
        if psf.shape[0] > 2 * volume.shape[0] + 1:
            raise ValueError(f"blur has {psf.shape[0]} planes, more than twice the "
                             f"{volume.shape[0]} planes of sharp; crop the PSF in z")
        operator = Convolution(psf / psf.sum())
    with torch.no_grad():
        clean = operator.forward(volume.to(operator.dtype)).to(volume.dtype).clamp_min(0)
    noise, blurred = None, clean
    if photons is not None:
        noise = NoiseModel(photons, quantum_efficiency, read_noise, offset)
        blurred = poisson_gaussian(clean, photons, quantum_efficiency=quantum_efficiency,
                                   read_noise=read_noise, offset=offset, seed=seed)
    return VolumeSimulation(kind.restore(blurred), kind.restore(clean), operator, noise, seed,
                            {"photons": photons, "seed": seed})
