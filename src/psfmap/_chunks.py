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


def fit_chunks(array: Any, halo: int, what: str = "image") -> Any:
    """``array`` rechunked so that every chunk along the last two axes spans at least ``halo``
    px, with a ``UserWarning`` saying so; unchanged when they do."""
    new = list(array.chunks)
    notes = []
    for axis, name in ((-2, "rows"), (-1, "columns")):
        fitted = _axis_chunks(array.chunks[axis], halo)
        if fitted is not None:
            notes.append(f"{min(array.chunks[axis])} {name}")
            new[axis] = fitted
    if not notes:
        return array
    warnings.warn(
        f"{what} has chunks of {' and '.join(notes)}, smaller than the halo of {halo} px "
        f"that each chunk borrows from its neighbours; rechunked to "
        f"{max(new[-2])}x{max(new[-1])} px chunks (store the image with larger chunks to "
        "avoid the copy)",
        UserWarning, stacklevel=5,
    )
    return array.rechunk(tuple(new))


def _starts(chunks: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(chunks)]).astype(int)


def map_with_halo(
    array: Any,
    function: Callable[..., np.ndarray],
    halo: int,
    *,
    dtype: Any = None,
    what: str = "image",
    **shared: Any,
) -> Any:
    """Apply ``function`` to every chunk of ``array`` with ``halo`` px of context; lazy.

    Parameters
    ----------
    array : dask.array.Array (..., H, W)
        The field; chunks narrower than ``halo`` along H or W are rechunked first
        (:func:`fit_chunks`, with a warning).
    function : callable
        ``function(block, region, lead, **shared)`` gets the NumPy block ``(..., h, w)`` with
        its halo, its ``region = (top, bottom, left, right)`` in the field, and ``lead``, the
        tuple of slices of the block along the leading (frame) axes; it returns an array of
        the block's shape. Only the block's core is kept.
    halo : int
        Context in pixels on every side (>= 0), clipped at the field's border.
    dtype : dtype, optional
        The result's dtype (default ``array.dtype``).
    **shared
        Keyword arguments passed to every call; dask arrays among them are computed once and
        passed whole (e.g. per-frame maxima).

    Returns
    -------
    dask.array.Array
        Same shape and chunks as ``array`` (its chunks before any rechunking).
    """
    import dask.array as da

    halo = int(halo)
    if halo < 0:
        raise ValueError(f"halo must be >= 0 pixels, got {halo}")
    dtype = np.dtype(dtype or array.dtype)
    original = array.chunks
    array = fit_chunks(array, halo, what) if halo else array
    ndim = array.ndim
    height, width = array.shape[-2:]
    starts = [_starts(c) for c in array.chunks]
    # an axis in one chunk borrows nothing (the whole field is there)
    rows_halo = halo if len(array.chunks[-2]) > 1 else 0
    cols_halo = halo if len(array.chunks[-1]) > 1 else 0
    grown = (da.overlap.overlap(array, depth={ndim - 2: rows_halo, ndim - 1: cols_halo},
                                boundary="none") if rows_halo or cols_halo else array)

    def block(piece: np.ndarray, block_info: dict | None = None, **kwargs: Any) -> np.ndarray:
        location = block_info[None]["chunk-location"]
        lead = tuple(slice(int(s[i]), int(s[i + 1])) for s, i in zip(starts[:-2], location))
        rows, cols = starts[-2], starts[-1]
        top, bottom = int(rows[location[-2]]), int(rows[location[-2] + 1])
        left, right = int(cols[location[-1]]), int(cols[location[-1] + 1])
        region = (max(0, top - rows_halo), min(height, bottom + rows_halo),
                  max(0, left - cols_halo), min(width, right + cols_halo))
        if piece.shape[-2:] != (region[1] - region[0], region[3] - region[2]):
            raise RuntimeError(f"block {location} has shape {piece.shape}, not the one of its "
                               f"region {region}: dask's overlap layout changed")
        out = np.asarray(function(piece, region, lead, **kwargs))
        return out[..., top - region[0]: bottom - region[0],
                   left - region[2]: right - region[2]].astype(dtype, copy=False)

    result = da.map_blocks(block, grown, chunks=array.chunks, dtype=dtype,
                           meta=np.empty((0,) * ndim, dtype), **shared)
    return result if result.chunks == original else result.rechunk(original)
