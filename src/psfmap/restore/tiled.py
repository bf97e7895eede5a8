"""Tiled restoration: restore a large field piece by piece, the operator restricted to each.

The field ``H × W`` is cut into cores of at most ``tile × tile`` pixels; each core is grown by
``overlap`` pixels of context on every side, restored on its own with the whole-field operator
*restricted* to that box (the PSF at every pixel of the box is the whole field's), and only its
core is kept. Memory then depends on the tile size, not on the field size; the result differs
from a one-piece restoration only through what lies beyond the context border (for plain
Richardson–Lucy with 64 px of context, below the float32 precision of the PSFs;
``benchmarks/RESULTS.md``).

Restriction of each operator kind to a box ``(top, bottom, left, right)``:

* a PSF grid (``PSFMap``, a ``(gy, gx, h, w)`` array, or a ``ProductConvolution`` built by
  ``from_psf_grid`` for the whole field): ``from_psf_grid(psfs, (H, W), region=box)``, which
  keeps only the cells whose weights reach the box;
* a ``Convolution`` (or a PSF ``(h, w)``): unchanged, it is the same everywhere;
* any other ``ProductConvolution`` (compressed, calibrated, dense weights): the same kernels
  with the weights cropped to the box, ``Σ_i k_i ⋆ (w_i|box · f)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from psfmap._validation import as_tensor, check_int, check_psf, describe

# smaller tiles would spend most of their time in the overlap (tile 1: one solve per pixel)
MIN_TILE = 32
DEFAULT_OVERLAP = 64

Region = tuple[int, int, int, int]  # top, bottom, left, right


def tile_bounds(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(start, stop, outer_start, outer_stop)`` of the tiles along one axis.

    Cores of at most ``tile`` px, of (nearly) equal length, cover ``[0, length)``; each is
    grown by ``overlap`` px on both sides, clipped to the field.
    """
    count = -(-length // tile)
    edges = [round(k * length / count) for k in range(count + 1)]  # even cores
    return [(a, b, max(0, a - overlap), min(length, b + overlap))
            for a, b in zip(edges[:-1], edges[1:])]


def check_tiling(tile: Any, overlap: Any) -> tuple[int | None, int]:
    """Check ``tile`` (None, or an integer >= ``MIN_TILE``) and ``overlap`` (None: the
    default 64, or an integer >= 0); return them as ints."""
    if tile is not None:
        tile = check_int(tile, "tile (px; None: one piece)", minimum=MIN_TILE)
    overlap = DEFAULT_OVERLAP if overlap is None else check_int(overlap, "overlap (px)",
                                                                 minimum=0)
    return tile, overlap


class _Restrictor:
    """Prepares an operator once (PSFs rendered, grid recognised) and restricts it to boxes."""

    def __init__(self, operator: Any, image_shape: tuple[int, int],
                 dtype: torch.dtype | None = None):
        from psfmap.operators import Convolution, ProductConvolution
        from psfmap.operators.psf_map import PSFMap

        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        self.psfs: torch.Tensor | None = None  # (gy, gx, h, w) of a PSF grid
        self.operator: Any = None
        if isinstance(operator, PSFMap):
            operator.check_covers(self.image_shape, "operator")
            self.psfs = operator.psfs(dtype=dtype)
        elif isinstance(operator, (np.ndarray, torch.Tensor)):
            array = as_tensor(operator, "operator", dtype=dtype)
            if array.ndim == 4:
                self.psfs = check_psf(array, "operator")
            elif array.ndim == 2:
                self.operator = Convolution(check_psf(array, "operator") / array.sum())
            else:
                raise ValueError(
                    f"operator given as an array must be a PSF (h, w) or a PSF grid "
                    f"(gy, gx, h, w), got shape {tuple(array.shape)}"
                )
        elif isinstance(operator, Convolution):
            self.operator = operator
        elif isinstance(operator, ProductConvolution):
            self.psfs = _grid_psfs(operator)
            self.operator = operator if self.psfs is None else None
            if self.operator is not None and tuple(operator.image_shape) != self.image_shape:
                raise ValueError(
                    f"operator acts on images of shape {tuple(operator.image_shape)}, got an "
                    f"image of shape {self.image_shape}; build the operator for this image size"
                )
        else:
            raise TypeError(
                f"operator of type {type(operator).__name__} cannot be restricted to a tile; "
                "expected a PSF, a PSF grid, a PSFMap, a Convolution or a ProductConvolution "
                "(or pass tile=None to restore in one piece)"
            )

    @property
    def kernel_shape(self) -> tuple[int, int]:
        if self.psfs is not None:
            return int(self.psfs.shape[-2]), int(self.psfs.shape[-1])
        return tuple(int(v) for v in self.operator.kernel_shape)

    def __call__(self, region: Region) -> Any:
        """The operator restricted to ``region`` = (top, bottom, left, right)."""
        from psfmap.operators import Convolution, ProductConvolution, from_psf_grid

        if self.psfs is not None:
            return from_psf_grid(self.psfs, self.image_shape, region)
        if isinstance(self.operator, Convolution):
            return self.operator
        top, bottom, left, right = region
        weights = self.operator.weights[:, top:bottom, left:right]
        # terms whose weight vanishes on the box contribute nothing there
        keep = weights.detach().abs().flatten(1).amax(dim=1) > 0
        if not bool(keep.any()):
            keep[0] = True
        restricted = ProductConvolution(self.operator.kernels[keep], weights[keep],
                                        {**self.operator.metadata,
                                         "region": [top, bottom, left, right]})
        restricted.compression_error = getattr(self.operator, "compression_error", None)
        return restricted


def _grid_psfs(operator: Any) -> torch.Tensor | None:
    """The ``(gy, gx, h, w)`` PSFs of an operator made by ``from_psf_grid`` for a whole field
    (its metadata names the grid and no region, and it holds one kernel per cell); else None."""
    grid = operator.metadata.get("grid")
    if grid is None or "region" in operator.metadata or "compressed_from" in operator.metadata \
            or "extended_margin" in operator.metadata:
        return None
    gy, gx = (int(v) for v in grid)
    if operator.n_kernels != gy * gx:
        return None
    return operator.kernels.reshape(gy, gx, *operator.kernel_shape)


def restore_tiled(
    image: torch.Tensor,
    operator: Any,
    solve: Callable[[torch.Tensor, Any, Region], Any],
    tile: int | None,
    overlap: int | None = None,
) -> torch.Tensor:
    """Restore ``image`` (..., H, W) tile by tile with ``operator`` restricted to each tile.

    Parameters
    ----------
    image : Tensor (..., H, W)
        The image; leading axes (frames) are restored together, tile by tile.
    operator : PSFMap, PSF grid (gy, gx, h, w), PSF (h, w), Convolution or ProductConvolution
        The whole-field blur; it is restricted to every tile with its context (module
        docstring). Any other operator kind raises ``TypeError``.
    solve : callable
        ``solve(piece, restricted_operator, region)`` restores the piece (..., h, w) cut from
        ``image`` at ``region = (top, bottom, left, right)`` and returns an array or tensor of
        the piece's shape; ``region`` lets it cut matching parts of other per-pixel inputs
        (a background map).
    tile : int or None
        Largest core side in pixels (>= 32); None, or a frame no larger than ``tile × tile``:
        one piece.
    overlap : int, optional
        Context around each core in pixels (default 64). With its overlap, every tile must
        span at least a PSF (else ``ValueError``).

    Returns
    -------
    Tensor (..., H, W)
        The cores of the restored tiles put together, in ``image``'s dtype and device.
    """
    if not isinstance(image, torch.Tensor) or image.ndim < 2:
        raise TypeError(f"image must be a tensor of shape (..., H, W), got {describe(image)}")
    if not callable(solve):
        raise TypeError(f"solve must be callable, got {describe(solve)}")
    tile, overlap = check_tiling(tile, overlap)
    height, width = (int(v) for v in image.shape[-2:])
    dtype = torch.float64 if image.dtype == torch.float64 else None
    restrict = _Restrictor(operator, (height, width), dtype)
    # one piece: a single tile of the frame's size (its region is the whole field)
    boxes = [(rows, cols) for rows in tile_bounds(height, tile or height, overlap)
             for cols in tile_bounds(width, tile or width, overlap)]
    kernel = max(restrict.kernel_shape)
    smallest = min(min(rows[3] - rows[2], cols[3] - cols[2]) for rows, cols in boxes)
    if len(boxes) > 1 and smallest < kernel:
        raise ValueError(
            f"a tile with its overlap spans {smallest} px, less than the PSF ({kernel} px): "
            "use a larger tile or overlap"
        )
    restored = torch.empty_like(image)
    for (top, bottom, outer_top, outer_bottom), (left, right, outer_left, outer_right) in boxes:
        region = (outer_top, outer_bottom, outer_left, outer_right)
        piece = image[..., outer_top:outer_bottom, outer_left:outer_right]
        result = torch.as_tensor(solve(piece, restrict(region), region))
        restored[..., top:bottom, left:right] = result[
            ..., top - outer_top : bottom - outer_top, left - outer_left : right - outer_left
        ].to(dtype=image.dtype, device=image.device)
    return restored
