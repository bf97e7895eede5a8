"""Simulate spatially-variant blur: sharp samples, varying PSF-parameter fields, camera noise.

``simulate(sharp, model="zernike3", field="tilt", grid=(4, 4), photons=1000, seed=0)`` evaluates
the PSF family on the field's parameter grid, builds the true operator
``PSFMap(...).operator()`` (overlap-add of the local PSFs, :func:`psfmap.operators.from_psf_grid`),
blurs the sharp image with it and adds Poisson–Gaussian noise (Shajkofci & Liebling, IEEE TIP
2020, eqs. 9–10).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from psfmap._callable_module import make_callable
from psfmap._validation import (
    ArrayKind,
    as_tensor,
    check_finite,
    check_ndim,
    check_pair,
    check_seed,
    describe,
)
from psfmap.operators.product_convolution import ProductConvolution
from psfmap.operators.psf_map import PSFMap
from psfmap.simulate.fields import FIELDS, parameter_field
from psfmap.simulate.noise import NoiseModel, poisson_gaussian
from psfmap.simulate.samples import (
    Beads,
    beads,
    bundled_image,
    bundled_sample,
    cells,
    random_points,
    texture,
)
from psfmap.simulate.scenes import SCENE_KINDS, scene, scenes

__all__ = [
    "FIELDS",
    "Beads",
    "NoiseModel",
    "Simulation",
    "beads",
    "bundled_image",
    "bundled_sample",
    "cells",
    "parameter_field",
    "poisson_gaussian",
    "random_points",
    "SCENE_KINDS",
    "scene",
    "scenes",
    "simulate",
    "texture",
]


@dataclass
class Simulation:
    """Result of :func:`simulate`.

    Attributes
    ----------
    blurred : array or tensor (H, W)
        Blurred image with noise, in the units of ``sharp`` (same kind and dtype as ``sharp``).
    clean : array or tensor (H, W)
        Blurred image before noise, ``H sharp`` (FFT round-off below 0 clipped to 0).
    operator : ProductConvolution
        The true blur operator.
    psf_map : PSFMap
        The true PSF map (family, parameters per cell); ``psf_map.operator()`` rebuilds
        ``operator``.
    params : np.ndarray (gy, gx, N)
        The parameters of the cells (same as ``psf_map.params``).
    noise : NoiseModel or None
        The camera noise model used (``None``: no noise).
    seed : int
        The seed of the random field and of the noise (drawn when none was given).
    settings : dict
        ``model``, ``field``, ``grid`` and ``seed`` (JSON-able, stored in the PSF map).
    """

    blurred: Any
    clean: Any
    operator: ProductConvolution
    psf_map: PSFMap
    params: np.ndarray
    noise: NoiseModel | None = None
    seed: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def simulate(
    sharp: Any,
    model: Any = "zernike3",
    field: Any = "tilt",
    grid: Any = (4, 4),
    *,
    photons: float | None = None,
    quantum_efficiency: float = 1.0,
    read_noise: float = 0.0,
    offset: float = 0.0,
    seed: int | torch.Generator | np.random.Generator | None = None,
    low: Any = None,
    high: Any = None,
    angle: float = 0.0,
    size: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> Simulation:
    """Blur a sharp image with a spatially varying PSF and add camera noise.

    .. math:: g = \\mathcal{P}(η s\\, H f) + \\mathcal{N}(0, σ_r^2) + b, \\qquad
              H f = \\sum_{r,c} h_{θ_{rc}} ⋆ (w_{rc} · f)

    where ``h_θ`` is the PSF family evaluated at the parameters ``θ_rc`` of grid cell
    ``(r, c)`` and ``w_rc`` the bilinear weights of :func:`psfmap.operators.from_psf_grid`
    (Shajkofci & Liebling, IEEE TIP 2020, eqs. 9–10). The result is returned in the units of
    ``sharp``: ``(g − b) / (η s)``.

    Parameters
    ----------
    sharp : array or tensor, shape (H, W), or dask.array.Array
        Non-negative sharp image. A dask array gives lazy ``blurred`` and ``clean`` dask
        arrays of its chunks and ``operator=None`` (:mod:`psfmap.simulate.chunked`).
    model : str or PSFFamily
        PSF family (``gaussian1``, ``gaussian2``, ``zernike1``, ``zernike2``, ``zernike3``).
    field : str or array
        How the parameters vary: ``constant``, ``tilt``, ``radial``, ``smooth_random``
        (see :mod:`psfmap.simulate.fields`), or explicit parameters ``(gy, gx, N)``.
    grid : (int, int) or int
        ``(gy, gx)`` PSF cells (ignored when ``field`` is an array).
    photons : float, optional
        Expected photons at the brightest pixel of ``H f``; ``None`` (default) adds no noise.
    quantum_efficiency, read_noise, offset : float
        Camera model (see :func:`psfmap.simulate.noise.poisson_gaussian`).
    seed : int, torch.Generator or numpy.random.Generator, optional
        Seeds the random field (``smooth_random``) and the noise; a generator draws an integer
        seed, and without one a fresh seed is drawn; either is recorded
        (``Simulation.seed``), so every run can be replayed.
    low, high : sequence of float, optional
        Parameter range covered by the field (default: the family's range).
    angle : float
        Direction of a ``tilt`` field, radians.
    size : int, optional
        PSF window side (odd), when ``model`` is a name.
    metadata : dict, optional
        Stored in the PSF map and operator (pixel size, provenance).

    Returns
    -------
    Simulation
        ``blurred``, ``clean``, ``operator``, ``psf_map``, ``params``, ``noise``, ``seed``.

    Examples
    --------
    >>> from psfmap.simulate import cells, simulate
    >>> result = simulate(cells((64, 64), seed=0), "gaussian1", "radial", (2, 2), photons=500,
    ...                   seed=0)
    >>> result.blurred.shape, result.psf_map.grid
    ((64, 64), (2, 2))
    """
    from psfmap._chunks import is_dask
    from psfmap.psf import PSFFamily
    from psfmap.psf import model as psf_model

    lazy = is_dask(sharp)
    if lazy:  # a dask array: blurred and noised chunk by chunk (psfmap.simulate.chunked)
        from psfmap.simulate.chunked import check_lazy_sharp

        image = check_lazy_sharp(sharp)
    else:
        kind = ArrayKind(sharp)
        image = check_finite(as_tensor(sharp, "sharp"), "sharp")
        check_ndim(image, "sharp", 2, "(H, W)")
        if image.numel() == 0:
            raise ValueError(f"sharp is empty, got {describe(sharp)}")
        if bool((image < 0).any()):
            raise ValueError("sharp has negative values; expected a non-negative intensity "
                             "image")
    # an integer, recorded in the result so that the run can be replayed: a generator draws
    # one, and without a seed a fresh one is drawn
    seed = check_seed(np.random.SeedSequence() if seed is None else seed, draw=True)
    if isinstance(model, PSFFamily):
        family = model
    elif isinstance(model, str):
        family = psf_model(model, size=size)
    else:
        raise TypeError(f"model must be a model name or a PSFFamily, got {describe(model)}")
    if isinstance(field, str):
        cells = check_pair(grid, "grid", "(gy, gx)", square=True)
        params = parameter_field(family, field, cells, low=low, high=high, angle=angle,
                                 seed=seed)
        field_name = field
    else:
        params = check_finite(as_tensor(field, "field", dtype=torch.float64), "field").numpy()
        field_name = "explicit"
    settings = {"model": family.name, "field": field_name, "grid": list(params.shape[:2]),
                "seed": seed}
    psf_map = PSFMap(family, params, image.shape, metadata={**(metadata or {}),
                                                            "simulation": settings})
    if lazy:
        from psfmap.simulate.chunked import simulate_chunked

        blurred, clean, noise = simulate_chunked(
            image, psf_map, photons, {"quantum_efficiency": quantum_efficiency,
                                      "read_noise": read_noise, "offset": offset}, seed)
        return Simulation(blurred=blurred, clean=clean, operator=None, psf_map=psf_map,
                          params=psf_map.params, noise=noise, seed=seed, settings=settings)
    operator = psf_map.operator(dtype=image.dtype, device=image.device)
    with torch.no_grad():
        clean = operator.forward(image).clamp_min(0)
    noise = None
    blurred = clean
    if photons is not None:
        noise = NoiseModel(photons, quantum_efficiency, read_noise, offset)
        blurred = poisson_gaussian(
            clean,
            photons,
            quantum_efficiency=quantum_efficiency,
            read_noise=read_noise,
            offset=offset,
            seed=seed,
        )
    return Simulation(
        blurred=kind.restore(blurred),
        clean=kind.restore(clean),
        operator=operator,
        psf_map=psf_map,
        params=psf_map.params,
        noise=noise,
        seed=seed,
        settings=settings,
    )


make_callable(__name__, simulate)
