"""Chunk-with-halo evaluation of dask arrays: the one place that knows dask's block layout.

``map_with_halo(array, function, halo)`` applies ``function`` to every chunk of a dask array
``(..., H, W)`` grown by ``halo`` pixels of its neighbours on every side (clipped at the
field's border: nothing is padded), and keeps the chunk's core. The halo is shared through
``dask.array.overlap.overlap`` and the blocks mapped with ``dask.array.map_blocks``: dask's
schedulers (threads, processes, ``distributed``) run it, rerun a lost task, and never hold
more than the chunks in flight. dask is imported only here and where a dask array is given.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

Region = tuple[int, int, int, int]  # top, bottom, left, right (of the block with its halo)


def is_dask(array: Any) -> bool:
    """Whether ``array`` is a ``dask.array.Array`` (without importing dask when it is not)."""
    module = type(array).__module__
    if not module.startswith("dask"):
        return False
    import dask.array as da

    return isinstance(array, da.Array)


def _axis_chunks(chunks: tuple[int, ...], halo: int) -> tuple[int, ...] | None:
    """Chunks along one axis, each at least ``halo`` px (a halo comes from the neighbouring
    chunk only), or None when they already are. Regular chunks of the common size grown to
    ``halo``; a remainder smaller than ``halo`` joins the chunk before it."""
    if len(chunks) == 1 or min(chunks) >= halo:
        return None
    length = sum(chunks)
    size = max(halo, max(chunks))
    sizes = [size] * (length // size)
    rest = length - sum(sizes)
    if rest:
        if rest < halo and sizes:
            sizes[-1] += rest
        else:
            sizes.append(rest)
    return tuple(sizes)


_AXIS_NAMES = {3: ("planes", "rows", "columns"), 2: ("rows", "columns")}


def _halos(halo: int | tuple[int, ...], spatial: int) -> tuple[int, ...]:
    """``halo`` as one int per spatial axis (an int: the same on every axis), each >= 0."""
    halos = (halo,) * spatial if np.ndim(halo) == 0 else tuple(halo)
    if len(halos) != spatial or any(int(h) < 0 for h in halos):
        raise ValueError(f"halo must be >= 0 pixels (one number or {spatial}), got {halo}")
    return tuple(int(h) for h in halos)


def fit_chunks(array: Any, halo: int | tuple[int, ...], what: str = "image",
               spatial: int = 2) -> Any:
    """``array`` rechunked so that every chunk along the last ``spatial`` axes (2: Y, X;
    3: Z, Y, X) spans at least the halo of that axis, with a ``UserWarning`` saying so;
    unchanged when they do."""
    halos = _halos(halo, spatial)
    new = list(array.chunks)
    notes = []
    for offset, (name, size) in enumerate(zip(_AXIS_NAMES[spatial], halos)):
        axis = array.ndim - spatial + offset
        fitted = _axis_chunks(array.chunks[axis], size) if size else None
        if fitted is not None:
            notes.append(f"{min(array.chunks[axis])} {name}")
            new[axis] = fitted
    if not notes:
        return array
    shown = "x".join(str(max(c)) for c in new[array.ndim - spatial:])
    warnings.warn(
        f"{what} has chunks of {' and '.join(notes)}, smaller than the halo of "
        f"{'x'.join(str(h) for h in halos) if len(set(halos)) > 1 else halos[0]} px "
        f"that each chunk borrows from its neighbours; rechunked to {shown} px chunks "
        "(store the image with larger chunks to avoid the copy)",
        UserWarning, stacklevel=5,
    )
    return array.rechunk(tuple(new))


def _starts(chunks: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(chunks)]).astype(int)


def map_with_halo(
    array: Any,
    function: Callable[..., np.ndarray],
    halo: int | tuple[int, ...],
    *,
    dtype: Any = None,
    what: str = "image",
    spatial: int = 2,
    **shared: Any,
) -> Any:
    """Apply ``function`` to every chunk of ``array`` with ``halo`` px of context; lazy.

    Parameters
    ----------
    array : dask.array.Array (..., H, W) or (..., D, H, W)
        The field; chunks narrower than the halo along a spatial axis are rechunked first
        (:func:`fit_chunks`, with a warning).
    function : callable
        ``function(block, region, lead, **shared)`` gets the NumPy block with its halo, its
        ``region`` in the field (``(top, bottom, left, right)``; with ``spatial=3``,
        ``(z0, z1, top, bottom, left, right)``), and ``lead``, the tuple of slices of the
        block along the leading (frame) axes; it returns an array of the block's shape. Only
        the block's core is kept.
    halo : int or tuple of int
        Context in pixels on every side (>= 0), one number for all spatial axes or one per
        axis, clipped at the field's border.
    dtype : dtype, optional
        The result's dtype (default ``array.dtype``).
    spatial : {2, 3}
        Number of trailing spatial axes: 2 for images, 3 for volumes (leading axes are
        frames: they get no halo).
    **shared
        Keyword arguments passed to every call; dask arrays among them are computed once and
        passed whole (e.g. per-frame maxima).

    Returns
    -------
    dask.array.Array
        Same shape and chunks as ``array`` (its chunks before any rechunking).
    """
    import dask.array as da

    if spatial not in (2, 3) or array.ndim < spatial:
        raise ValueError(f"array must have at least {spatial} spatial axes, got shape "
                         f"{array.shape}")
    halos = _halos(halo, spatial)
    dtype = np.dtype(dtype or array.dtype)
    original = array.chunks
    array = fit_chunks(array, halos, what, spatial) if any(halos) else array
    ndim = array.ndim
    first = ndim - spatial
    sizes = array.shape[first:]
    starts = [_starts(c) for c in array.chunks]
    # an axis in one chunk borrows nothing (the whole field is there)
    used = tuple(h if len(array.chunks[first + k]) > 1 else 0 for k, h in enumerate(halos))
    grown = (da.overlap.overlap(array, depth={first + k: h for k, h in enumerate(used)},
                                boundary="none") if any(used) else array)

    def block(piece: np.ndarray, block_info: dict | None = None, **kwargs: Any) -> np.ndarray:
        location = block_info[None]["chunk-location"]
        lead = tuple(slice(int(s[i]), int(s[i + 1])) for s, i in
                     zip(starts[:first], location))
        core, region = [], []
        for k in range(spatial):
            edges, index = starts[first + k], location[first + k]
            low, high = int(edges[index]), int(edges[index + 1])
            core.append((low, high))
            region += [max(0, low - used[k]), min(int(sizes[k]), high + used[k])]
        region = tuple(region)
        if piece.shape[first:] != tuple(region[2 * k + 1] - region[2 * k]
                                        for k in range(spatial)):
            raise RuntimeError(f"block {location} has shape {piece.shape}, not the one of its "
                               f"region {region}: dask's overlap layout changed")
        out = np.asarray(function(piece, region, lead, **kwargs))
        keep = tuple(slice(low - region[2 * k], high - region[2 * k])
                     for k, (low, high) in enumerate(core))
        return out[(Ellipsis,) + keep].astype(dtype, copy=False)

    result = da.map_blocks(block, grown, chunks=array.chunks, dtype=dtype,
                           meta=np.empty((0,) * ndim, dtype), **shared)
    return result if result.chunks == original else result.rechunk(original)
