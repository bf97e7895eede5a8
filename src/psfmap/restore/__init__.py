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

from psfmap._chunks import is_dask
from psfmap._validation import ArrayKind, as_tensor, describe
from psfmap.restore._domain import as_operator, warn_out_of_range
from psfmap.restore.richardson_lucy import (
    MAX_ITERATIONS,
    _check_background,
    _check_image,
    richardson_lucy,
)
from psfmap.restore.sparse_smooth import (
    SparseSmoothResult,
    laplacian,
    sparse_smooth,
    spike_centroids,
)
from psfmap.restore.tiled import check_tiling, restore_tiled
from psfmap.restore.tv import divergence, gradient, total_variation, tv_curvature
from psfmap.restore.volume import as_volume_operator, is_volume_operator, richardson_lucy_volume

METHODS = ("rl", "rl-tv", "sparse-smooth")
# λ_TV for method "rl-tv". The CNN papers quote λ = 0.1, but their code regularises with the
# divergence of the L1-normalised image (numerically ~0); with the TV term of Dey et al. 0.1
# over-smooths (Table V protocol: +0.5 dB vs +2.2 to +3.9 dB at 0.01, benchmarks/RESULTS.md).
DEFAULT_TV = 0.01

__all__ = [
    "DEFAULT_TV",
    "MAX_ITERATIONS",
    "METHODS",
    "SparseSmoothResult",
    "deconvolve",
    "divergence",
    "gradient",
    "laplacian",
    "restore_tiled",
    "richardson_lucy",
    "sparse_smooth",
    "spike_centroids",
    "richardson_lucy_volume",
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
    tile: int | None = None,
    overlap: int | None = None,
    callback: Callable[..., Any] | None = None,
    **options: Any,
) -> Any:
    """Deconvolve ``image`` with a known blur ``operator``.

    Parameters
    ----------
    image : ndarray or Tensor (..., H, W), or a nested list / array-like
        Non-negative image; leading axes (T, Z, ...) are independent frames. Lists and other
        array-likes (anything ``numpy.asarray`` reads) are taken as NumPy arrays, and the
        result is then a NumPy array.
    operator : linear operator, PSF (h, w), PSF grid (gy, gx, h, w) or PSFMap
        A 3D operator, a 3D PSF ``(d, h, w)`` or a grid of 3D PSFs ``(gz, gy, gx, d, h, w)``
        restores ``(..., D, H, W)`` as volumes (methods "rl" and "rl-tv"; option
        ``accelerate=True`` for Biggs–Andrews).
        Anything with ``forward``/``adjoint``; a PSF array becomes ``Convolution(psf)``, a PSF
        grid ``from_psf_grid(psfs, image.shape[-2:])``, a ``PSFMap`` (e.g. from
        ``psfmap.estimate``) its ``.operator()``. A PSF map whose parameters lie outside its
        family's range gives a ``UserWarning`` naming the fraction of cells and the range.
        Richardson–Lucy refuses an operator that does not keep images non-negative
        (:func:`richardson_lucy`).
    method : {"rl", "rl-tv", "sparse-smooth"}
        ``"rl"``: :func:`richardson_lucy` with ``tv=0``; ``"rl-tv"``: with ``tv`` (default 0.01);
        ``"sparse-smooth"``: :func:`sparse_smooth`, returning ``smooth + sparse``.
    iterations : int, optional
        Default 20 for RL, 200 for sparse-smooth; at most ``MAX_ITERATIONS`` (100 000).
    tv : float, optional
        TV weight for ``"rl-tv"`` (default ``DEFAULT_TV`` = 0.01); must be 0 or omitted for
        the other methods.
    tile : int, optional
        Restore frames larger than ``tile × tile`` pixels (``tile`` >= 32) in tiles of at most
        that size, each with ``overlap`` pixels of context on every side (together at least a
        PSF wide), with the operator restricted to each tile
        (:func:`psfmap.restore.tiled.restore_tiled`): memory then depends on the tile, not on
        the frame. Works for every method and for PSFs, PSF grids, PSF maps, ``Convolution``
        and ``ProductConvolution`` operators. Every tile's TV and positivity floor are relative
        to its whole frame's maximum, as in one piece; plain RL in tiles equals the one-piece
        result to float precision, RL-TV within its own sensitivity to rounding. Default None:
        one piece (as ``psfmap.deblur(tile=None)``).
    overlap : int, optional
        Context around each tile in pixels (>= 0, default 64); used with ``tile``, and as the
        halo of a dask array's chunks.

    A ``dask.array.Array`` image gives a lazy dask array of the same shape and chunks: every
    chunk is restored with a halo of its neighbours (default
    :func:`psfmap.restore.chunked.default_halo`, or ``overlap``) and the operator restricted
    to it, relative to its frame's maximum (:mod:`psfmap.restore.chunked`); ``tile`` does
    not apply (the chunks are the tiles).
    callback : callable, optional
        Passed to the solver (``callback(iteration, change)`` for RL, ``callback(iteration)``
        for sparse-smooth); with tiles it is called for every tile's iterations.
    **options
        Further keywords of the solver (``background``, ``tol``, ``smooth``, ``sparse`` ...).

    Returns
    -------
    ndarray or Tensor (..., H, W), or dask.array.Array
        The restored image, same kind, dtype and device as ``image`` (NumPy for a list; a
        lazy dask array, float32 or float64, for a dask array).
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    halo = overlap  # None: the chunked default, sized from the PSF and the iterations
    tile, overlap = check_tiling(tile, overlap)
    chunked = is_dask(image)
    if chunked and tile is not None:
        raise ValueError(f"tile applies to in-memory images; a dask array is restored chunk by "
                         f"chunk (rechunk it instead of tile={tile})")
    if not chunked and not isinstance(image, (np.ndarray, torch.Tensor)):
        # lists and array-likes are NumPy arrays here, as in richardson_lucy and deblur
        # (None or another type: TypeError naming the argument)
        image = as_tensor(image, "image").numpy()
    shape = image.shape
    if len(shape) < 2:
        raise ValueError(f"image must be an array of shape (..., H, W), got {describe(image)}")
    if method == "sparse-smooth":
        if tv not in (None, 0, 0.0):
            raise ValueError(f"tv applies to methods rl-tv only, got tv={tv!r} with {method!r}")
        iterations = 200 if iterations is None else iterations
    else:
        if method == "rl":
            if tv not in (None, 0, 0.0):
                raise ValueError(f"method 'rl' has no TV term, got tv={tv!r}; use method='rl-tv'")
            tv = 0.0
        elif tv is None:
            tv = DEFAULT_TV
        iterations = 20 if iterations is None else iterations
    if _is_volume_request(operator):
        return _deconvolve_volume(image, operator, method, iterations, tv, tile, chunked,
                                  callback, dict(options, halo=halo))
    warn_out_of_range(operator)
    if chunked:
        from psfmap.restore.chunked import deconvolve_chunked

        return deconvolve_chunked(image, operator, method, iterations, tv, halo=halo,
                                  callback=callback, options=options)
    if tile is not None and max(int(shape[-2]), int(shape[-1])) > tile:
        return _deconvolve_tiled(image, operator, method, iterations, tv, tile, overlap,
                                 callback, options)
    dtype = torch.float64 if getattr(image, "dtype", None) in (np.float64, torch.float64) else None
    operator = as_operator(operator, tuple(shape[-2:]), dtype=dtype)
    if method == "sparse-smooth":
        return sparse_smooth(image, operator, iterations=iterations, callback=callback,
                             **options).restored
    return richardson_lucy(image, operator, iterations=iterations, tv=tv, callback=callback,
                           **options)


def _is_volume_request(operator: Any) -> bool:
    """A 3D operator, a 3D PSF (d, h, w) or a grid of 3D PSFs (gz, gy, gx, d, h, w)."""
    if isinstance(operator, (np.ndarray, torch.Tensor)):
        return operator.ndim in (3, 6)
    return is_volume_operator(operator)


def _deconvolve_volume(image: Any, operator: Any, method: str, iterations: int, tv: float,
                       tile: int | None, chunked: bool, callback: Any,
                       options: dict[str, Any]) -> Any:
    """``deconvolve`` of ``(..., D, H, W)`` stacks as volumes with a 3D operator."""
    if method == "sparse-smooth":
        raise ValueError("method 'sparse-smooth' restores 2D images; with a 3D operator use "
                         "method 'rl' or 'rl-tv'")
    if tile is not None:
        raise ValueError("a 3D operator restores in-memory volumes in one piece; tile= applies "
                         "to 2D restoration (a dask volume is restored chunk by chunk)")
    if len(image.shape) < 3:
        raise ValueError(f"image must be a volume (..., D, H, W) for a 3D operator, got shape "
                         f"{tuple(image.shape)}")
    halo = options.pop("halo", None)
    if chunked:  # lazily, chunk by chunk with a halo (psfmap.restore.chunked)
        from psfmap.restore.chunked import deconvolve_volume_chunked

        return deconvolve_volume_chunked(image, operator, iterations, tv, halo=halo,
                                         callback=callback, options=options)
    return richardson_lucy_volume(image, as_volume_operator(operator, tuple(image.shape[-3:])),
                                  iterations, tv, callback=callback, **options)


def _deconvolve_tiled(
    image: Any, operator: Any, method: str, iterations: Any, tv: float, tile: int,
    overlap: int, callback: Callable[..., Any] | None, options: dict[str, Any],
) -> Any:
    """``deconvolve`` tile by tile, frame by frame: each frame's tiles are restored relative
    to the frame's maximum (``intensity_scale``), as the frame would be in one piece."""
    kind = ArrayKind(image)
    y = _check_image(image)
    options = dict(options)
    b = None
    if method != "sparse-smooth":  # (sparse_smooth has no background: it refuses the keyword)
        b = _check_background(options.pop("background", 0.0), y).expand_as(y)
    given_scale = options.pop("intensity_scale", None)
    frames = y.reshape(-1, *y.shape[-2:])
    backgrounds = b.reshape(frames.shape) if b is not None else None
    restored = torch.empty_like(frames)
    for index, frame in enumerate(frames):
        scale = given_scale if given_scale is not None else float(frame.max())
        if scale <= 0:  # an all-zero frame stays zero
            restored[index] = 0
            continue

        def solve(piece: torch.Tensor, restricted: Any, region: tuple[int, int, int, int],
                  index: int = index, scale: float = scale) -> Any:
            if method == "sparse-smooth":
                return sparse_smooth(piece, restricted, iterations=iterations,
                                     callback=callback, intensity_scale=scale,
                                     **options).restored
            top, bottom, left, right = region
            return richardson_lucy(piece, restricted, iterations=iterations, tv=tv,
                                   background=backgrounds[index, top:bottom, left:right],
                                   callback=callback, intensity_scale=scale, **options)

        restored[index] = restore_tiled(frame, operator, solve, tile, overlap)
    return kind.restore(restored.reshape(y.shape))
