"""Chunked restoration of dask arrays: every chunk with a halo, the operator restricted to it.

``deconvolve(dask_array, operator, ...)`` lands here and returns a lazy dask array of the same
shape and chunks. Each chunk is grown by a halo of its neighbours' pixels
(:func:`psfmap._chunks.map_with_halo`, built on ``dask.array.overlap`` and ``map_blocks``),
restored on its own with the whole-field operator restricted to the grown box (the same
restriction as tiled restoration, :mod:`psfmap.restore.tiled`), and only its core is kept.
Frames (leading axes) are independent: a time-lapse chunked one frame per chunk runs its
frames in parallel, each exactly as in memory.

Every chunk's TV term and positivity floor are relative to its *frame's* maximum
(``intensity_scale``), computed lazily as a first reduction over the array, so that a chunk
runs the iterations its frame would run in one piece.

Halo. Richardson–Lucy spreads information by one PSF width per forward/adjoint pair, but the
influence of pixels beyond a few PSF widths decays fast. The default halo is
``max(64, 2 · PSF side) · sqrt(max(1, iterations / 20))`` px (:func:`default_halo`): for the
20 iterations of RL-TV and PSFs up to 32 px, 64 px, which keeps the chunked result within
0.5 % relative L2 of the one-piece result with no visible seam
(``docs/_incoming/large-data-results.md``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from psfmap._chunks import map_with_halo
from psfmap.restore.tiled import DEFAULT_OVERLAP, _Restrictor

# iterations the default halo is sized for; more iterations reach further (≈ sqrt, as a
# diffusion: the k-th RL update mixes k forward/adjoint pairs whose weights decay fast)
HALO_ITERATIONS = 20


def default_halo(kernel_side: int, iterations: int) -> int:
    """The default halo in pixels: ``max(64, 2 · kernel_side) · sqrt(max(1, iterations / 20))``
    rounded up."""
    base = max(DEFAULT_OVERLAP, 2 * int(kernel_side))
    return int(math.ceil(base * math.sqrt(max(1.0, iterations / HALO_ITERATIONS))))


def _background_piece(background: Any, region: tuple[int, int, int, int],
                      lead: tuple[slice, ...]) -> Any:
    """The part of a per-pixel background under ``region`` (a scalar passes as it is)."""
    if background is None or np.ndim(background) == 0:
        return background if background is None else float(background)
    top, bottom, left, right = region
    array = np.asarray(background)
    if array.ndim > 2:
        array = array[lead[len(lead) - (array.ndim - 2):]] if lead else array
    return array[..., top:bottom, left:right]


def _as_float(image: Any) -> tuple[Any, type]:
    """The dask array in the solvers' float type: float64 stays, anything else is float32."""
    dtype = np.float64 if image.dtype == np.float64 else np.float32
    return (image if image.dtype == dtype else image.astype(dtype)), dtype


def deconvolve_chunked(
    image: Any,
    operator: Any,
    method: str,
    iterations: int,
    tv: float,
    *,
    halo: int | None = None,
    callback: Any = None,
    options: dict[str, Any] | None = None,
) -> Any:
    """Lazy chunk-by-chunk ``deconvolve`` of a dask array (see the module docstring).

    Parameters
    ----------
    image : dask.array.Array (..., H, W)
        Non-negative image; leading axes are frames.
    operator : PSF (h, w), PSF grid (gy, gx, h, w), PSFMap, Convolution or ProductConvolution
        The whole-field blur, restricted to every chunk with its halo.
    method, iterations, tv
        As :func:`psfmap.restore.deconvolve` (already checked there).
    halo : int, optional
        Context in pixels borrowed from the neighbouring chunks (default
        :func:`default_halo`). Chunks narrower than the halo are rechunked, with a warning.
    callback : callable, optional
        Passed to the solver of every chunk (it runs where the chunk runs: a worker thread or
        process).
    options : dict
        Further solver keywords: ``background`` (a scalar, or an array (H, W) or
        (..., H, W) sliced to every chunk), ``intensity_scale`` (default: each frame's
        maximum), ``tol``, ``smooth``, ``sparse`` ...

    Returns
    -------
    dask.array.Array
        Same shape and chunks as ``image``; float64 for a float64 image, else float32.
    """
    from psfmap.restore.richardson_lucy import richardson_lucy
    from psfmap.restore.sparse_smooth import sparse_smooth

    options = dict(options or {})
    if image.ndim < 2:
        raise ValueError(f"image must be a dask array of shape (..., H, W), got shape "
                         f"{image.shape}")
    image, dtype = _as_float(image)
    height, width = (int(v) for v in image.shape[-2:])
    restrict = _Restrictor(operator, (height, width),
                           torch.float64 if dtype == np.float64 else None)
    if halo is None:
        halo = default_halo(max(restrict.kernel_shape), iterations)
    background = options.pop("background", 0.0)
    if isinstance(background, torch.Tensor):
        background = background.detach().cpu().numpy()
    if np.ndim(background) and np.shape(background)[-2:] != (height, width):
        raise ValueError(f"background must be a number or an array (..., {height}, {width}) "
                         f"matching the image, got shape {np.shape(background)}")
    if method == "sparse-smooth" and np.ndim(background) == 0 and background == 0.0:
        background = None  # sparse_smooth has no background keyword
    given_scale = options.pop("intensity_scale", None)
    # each frame's maximum, a lazy reduction passed whole to every chunk
    scales = image.max(axis=(-2, -1)) if given_scale is None else None

    def solve(block: np.ndarray, region: tuple[int, int, int, int], lead: tuple[slice, ...],
              scales: Any = None) -> np.ndarray:
        restricted = restrict(region)
        frames = block.reshape(-1, *block.shape[-2:])
        maxima = (np.full(len(frames), float(given_scale)) if scales is None
                  else np.asarray(scales)[lead].reshape(-1))
        piece_background = _background_piece(background, region, lead)
        out = np.zeros_like(frames)
        for index, (frame, scale) in enumerate(zip(frames, maxima)):
            if not scale > 0:  # an all-zero frame stays zero, as in tiled restoration
                continue
            frame_background = (piece_background if np.ndim(piece_background) < 3 else
                                np.asarray(piece_background).reshape(-1, *frame.shape)[index])
            if method == "sparse-smooth":
                if frame_background is not None:
                    raise ValueError("method 'sparse-smooth' takes no background")
                out[index] = sparse_smooth(frame, restricted, iterations=iterations,
                                           callback=callback, intensity_scale=float(scale),
                                           **options).restored
            else:
                out[index] = richardson_lucy(frame, restricted, iterations=iterations, tv=tv,
                                             background=frame_background, callback=callback,
                                             intensity_scale=float(scale), **options)
        return out.reshape(block.shape)

    shared = {} if scales is None else {"scales": scales}
    return map_with_halo(image, solve, halo, dtype=dtype, **shared)


def default_axial_halo(kernel_depth: int, iterations: int) -> int:
    """The default halo along z for a volume chunked in z: ``2 · d · sqrt(max(1,
    iterations / 20))`` planes for a PSF ``d`` planes deep (the lateral halo is
    :func:`default_halo`)."""
    base = 2 * int(kernel_depth)
    return int(math.ceil(base * math.sqrt(max(1.0, iterations / HALO_ITERATIONS))))


def deconvolve_volume_chunked(
    image: Any,
    operator: Any,
    iterations: int,
    tv: float,
    *,
    halo: int | None = None,
    callback: Any = None,
    options: dict[str, Any] | None = None,
) -> Any:
    """Lazy chunk-by-chunk 3D Richardson–Lucy (+TV) of a dask volume ``(..., D, H, W)``.

    Every chunk is grown by a halo of its neighbours along y and x (and along z when the
    volume is chunked in z; a chunk holding every plane borrows nothing in z), restored by
    :func:`psfmap.restore.volume.richardson_lucy_volume` with the whole-volume operator
    restricted to the grown box (:func:`psfmap.operators.volume_region.restrict_volume`),
    relative to its whole volume's maximum (``intensity_scale``), and only its core is kept.
    Leading axes (time points, positions) are independent volumes.

    Parameters
    ----------
    image : dask.array.Array (..., D, H, W)
        Non-negative stack.
    operator : 3D operator, PSF (d, h, w) or PSF grid (gz, gy, gx, d, h, w)
        The whole-volume blur.
    iterations, tv
        As :func:`psfmap.restore.deconvolve` (already checked there).
    halo : int, optional
        Context in voxels on every side along every axis (default: :func:`default_halo`
        along y and x, :func:`default_axial_halo` along z).
    callback : callable, optional
        Passed to the solver of every chunk.
    options : dict
        Further keywords of the solver: ``background`` (a number), ``intensity_scale``
        (default: each volume's maximum), ``tol``, ``tv_epsilon``, ``extend``,
        ``accelerate``.

    Returns
    -------
    dask.array.Array
        Same shape and chunks as ``image``; float64 for a float64 stack, else float32.
    """
    from psfmap.operators.volume_region import restrict_volume
    from psfmap.restore.volume import as_volume_operator, richardson_lucy_volume

    options = dict(options or {})
    if image.ndim < 3:
        raise ValueError(f"image must be a dask volume (..., D, H, W) for a 3D operator, got "
                         f"shape {image.shape}")
    image, dtype = _as_float(image)
    shape = tuple(int(v) for v in image.shape[-3:])
    whole = as_volume_operator(operator, shape)
    if getattr(whole, "image_shape", None) is not None and tuple(whole.image_shape) != shape:
        raise ValueError(f"operator acts on volumes of shape {tuple(whole.image_shape)}, got a "
                         f"stack of shape {shape}; build the operator for this volume")
    depth, height, width = (int(v) for v in whole.kernel_shape)
    halos = ((default_axial_halo(depth, iterations),
              *(default_halo(max(height, width), iterations),) * 2)
             if halo is None else (int(halo),) * 3)
    background = options.pop("background", 0.0)
    if np.ndim(background) != 0:
        raise ValueError("background must be a number for a volume restored in chunks, got "
                         f"an array of shape {np.shape(background)}")
    given_scale = options.pop("intensity_scale", None)
    scales = image.max(axis=(-3, -2, -1)) if given_scale is None else None

    def solve(block: np.ndarray, region: tuple[int, ...], lead: tuple[slice, ...],
              scales: Any = None) -> np.ndarray:
        restricted = restrict_volume(whole, region)
        volumes = block.reshape(-1, *block.shape[-3:])
        maxima = (np.full(len(volumes), float(given_scale)) if scales is None
                  else np.asarray(scales)[lead].reshape(-1))
        out = np.zeros_like(volumes)
        for index, (volume, scale) in enumerate(zip(volumes, maxima)):
            if not scale > 0:  # an all-zero volume stays zero
                continue
            out[index] = richardson_lucy_volume(volume, restricted, iterations, tv,
                                                float(background), callback=callback,
                                                intensity_scale=float(scale), **options)
        return out.reshape(block.shape)

    shared = {} if scales is None else {"scales": scales}
    return map_with_halo(image, solve, halos, dtype=dtype, what="volume", spatial=3, **shared)
