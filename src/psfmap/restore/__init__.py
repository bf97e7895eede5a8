"""Restoration with any blur operator: Richardson–Lucy (+TV) and sparse + smooth splitting.

``deconvolve(image, operator, method=...)`` is the one verb; ``richardson_lucy`` and
``sparse_smooth`` are the solvers behind it, ``spike_centroids`` locates the spikes found by
``sparse_smooth``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from psfmap._validation import describe
from psfmap.restore._domain import as_operator
from psfmap.restore.richardson_lucy import richardson_lucy
from psfmap.restore.sparse_smooth import (
    SparseSmoothResult,
    laplacian,
    sparse_smooth,
    spike_centroids,
)
from psfmap.restore.tv import divergence, gradient, total_variation, tv_curvature

METHODS = ("rl", "rl-tv", "sparse-smooth")
# λ_TV for method "rl-tv". The CNN papers quote λ = 0.1, but their code regularises with the
# divergence of the L1-normalised image (numerically ~0); with the TV term of Dey et al. 0.1
# over-smooths (Table V protocol: +0.5 dB vs +2.2 to +3.9 dB at 0.01, benchmarks/RESULTS.md).
DEFAULT_TV = 0.01

__all__ = [
    "DEFAULT_TV",
    "METHODS",
    "SparseSmoothResult",
    "deconvolve",
    "divergence",
    "gradient",
    "laplacian",
    "richardson_lucy",
    "sparse_smooth",
    "spike_centroids",
    "total_variation",
    "tv_curvature",
]


def deconvolve(
    image: Any,
    operator: Any,
    method: str = "rl-tv",
    iterations: int | None = None,
    tv: float | None = None,
    *,
    callback: Callable[..., Any] | None = None,
    **options: Any,
) -> Any:
    """Deconvolve ``image`` with a known blur ``operator``.

    Parameters
    ----------
    image : ndarray or Tensor (..., H, W)
        Non-negative image; leading axes (T, Z, ...) are independent frames.
    operator : linear operator, PSF (h, w), PSF grid (gy, gx, h, w) or PSFMap
        Anything with ``forward``/``adjoint``; a PSF array becomes ``Convolution(psf)``, a PSF
        grid ``from_psf_grid(psfs, image.shape[-2:])``, a ``PSFMap`` (e.g. from
        ``psfmap.estimate``) its ``.operator()``.
    method : {"rl", "rl-tv", "sparse-smooth"}
        ``"rl"``: :func:`richardson_lucy` with ``tv=0``; ``"rl-tv"``: with ``tv`` (default 0.01);
        ``"sparse-smooth"``: :func:`sparse_smooth`, returning ``smooth + sparse``.
    iterations : int, optional
        Default 20 for RL, 200 for sparse-smooth.
    tv : float, optional
        TV weight for ``"rl-tv"`` (default ``DEFAULT_TV`` = 0.01); must be 0 or omitted for
        the other methods.
    callback : callable, optional
        Passed to the solver (``callback(iteration, change)`` for RL, ``callback(iteration)``
        for sparse-smooth).
    **options
        Further keywords of the solver (``background``, ``tol``, ``smooth``, ``sparse`` ...).

    Returns
    -------
    ndarray or Tensor (..., H, W)
        The restored image, same kind, dtype and device as ``image``.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    shape = getattr(image, "shape", None)
    if shape is None or len(shape) < 2:
        raise ValueError(f"image must be an array of shape (..., H, W), got {describe(image)}")
    dtype = torch.float64 if getattr(image, "dtype", None) in (np.float64, torch.float64) else None
    operator = as_operator(operator, tuple(shape[-2:]), dtype=dtype)
    if method == "sparse-smooth":
        if tv not in (None, 0, 0.0):
            raise ValueError(f"tv applies to methods rl-tv only, got tv={tv!r} with {method!r}")
        result = sparse_smooth(
            image,
            operator,
            iterations=200 if iterations is None else iterations,
            callback=callback,
            **options,
        )
        return result.restored
    if method == "rl":
        if tv not in (None, 0, 0.0):
            raise ValueError(f"method 'rl' has no TV term, got tv={tv!r}; use method='rl-tv'")
        tv = 0.0
    elif tv is None:
        tv = DEFAULT_TV
    return richardson_lucy(
        image,
        operator,
        iterations=20 if iterations is None else iterations,
        tv=tv,
        callback=callback,
        **options,
    )
