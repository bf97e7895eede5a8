"""Product-convolution operator from a grid of local PSFs (the overlap-add model).

Cell ``(r, c)`` of a ``gy × gx`` grid over an ``H × W`` image has its centre at
``((r + ½) H / gy, (c + ½) W / gx)``. The weights are bilinear hat functions between centres,
constant beyond the outer centres, and sum to 1 at every pixel:

    w_rc(y, x) = a_r(y) b_c(x),   a_r = piecewise-linear interpolation of the unit vector e_r
                                  at the row centres (constant extrapolation)

so a point source exactly at a cell centre is blurred by that cell's PSF alone, and the
operator is the "PSF interpolation" / overlap-add model of Nagy & O'Leary (1998) used by the
CNN papers (Shajkofci & Liebling, IEEE TIP 2020).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from psfmap._validation import as_tensor, check_ndim, check_pair, check_psf
from psfmap.operators.product_convolution import ProductConvolution


def cell_centres(n_cells: int, length: int) -> np.ndarray:
    """Centres ``(k + ½) · length / n_cells`` of the grid cells along one axis, in pixels."""
    return (np.arange(n_cells) + 0.5) * length / n_cells


def hat_profiles(n_cells: int, length: int) -> np.ndarray:
    """``(n_cells, length)`` bilinear partition of unity centred on the cells."""
    if n_cells == 1:
        return np.ones((1, length))
    centres = cell_centres(n_cells, length)
    positions = np.arange(length, dtype=np.float64)
    return np.stack([np.interp(positions, centres, np.eye(n_cells)[k]) for k in range(n_cells)])


def _image_shape(image_shape: Any) -> tuple[int, int]:
    # the last two entries, so that ``image.shape`` of a stack works
    if isinstance(image_shape, str) or not hasattr(image_shape, "__len__") \
            or len(image_shape) < 2:
        raise ValueError(f"image_shape must be (H, W), got {image_shape!r}")
    return check_pair(tuple(image_shape)[-2:], "image_shape")


def _region(region: Any, height: int, width: int) -> tuple[int, int, int, int]:
    """Check ``(top, bottom, left, right)``: a non-empty pixel box inside ``height × width``."""
    try:
        top, bottom, left, right = (int(v) for v in region)
    except (TypeError, ValueError):
        raise ValueError(f"region must be (top, bottom, left, right), got {region!r}") from None
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(
            f"region {(top, bottom, left, right)} is not a non-empty box inside the image "
            f"{height}x{width}"
        )
    return top, bottom, left, right


def from_psf_grid(psfs: Any, image_shape: Any, region: Any = None) -> ProductConvolution:
    """Space-variant blur interpolating a ``gy × gx`` grid of local PSFs bilinearly.

    Parameters
    ----------
    psfs : array or tensor, shape (gy, gx, h, w)
        Local PSF of each cell (non-negative, centred at ``(h // 2, w // 2)``). A grid of 3D
        PSFs ``(gz, gy, gx, d, h, w)`` with ``image_shape = (D, H, W)`` gives the depth- and
        field-variant volume operator of :func:`psfmap.operators.volume.from_psf_grid_3d`.
    image_shape : (int, int)
        ``(H, W)`` of the images the operator applies to (extra leading entries are ignored,
        so ``image.shape`` of a stack works).
    region : (top, bottom, left, right), optional
        Restrict the operator to this box of the ``H × W`` field: it then applies to
        ``(bottom - top) × (right - left)`` images and blurs them exactly as the whole-field
        operator blurs that part of the field (its PSF at every pixel is the same); only the
        cells whose weights reach the box are kept. Used to restore a large field tile by
        tile.

    Returns
    -------
    ProductConvolution
        ``I ≤ gy · gx`` kernels with factored (outer products of hat profiles), compactly
        supported weights: each pixel is touched by at most four cells, which the tiled
        evaluation exploits, and compression keeps the weights factored.
    """
    psfs = as_tensor(psfs, "psfs")
    if psfs.ndim == 6:  # a (gz, gy, gx, d, h, w) grid of 3D PSFs
        from psfmap.operators.volume import from_psf_grid_3d

        return from_psf_grid_3d(psfs, image_shape)
    check_ndim(psfs, "psfs", 4, "(gy, gx, h, w)")
    check_psf(psfs, "psfs")
    height, width = _image_shape(image_shape)
    gy, gx, h, w = psfs.shape
    if gy > height or gx > width:
        raise ValueError(
            f"a {gy}x{gx} PSF grid needs an image of at least that many pixels, "
            f"got image_shape {(height, width)}"
        )
    rows, cols = hat_profiles(gy, height), hat_profiles(gx, width)
    metadata: dict[str, Any] = {"grid": [int(gy), int(gx)]}
    if region is not None:
        top, bottom, left, right = _region(region, height, width)
        rows, cols = rows[:, top:bottom], cols[:, left:right]
        metadata["region"] = [top, bottom, left, right]
    used_rows = np.flatnonzero(rows.any(axis=1))
    used_cols = np.flatnonzero(cols.any(axis=1))
    kernels = psfs[torch.from_numpy(used_rows)][:, torch.from_numpy(used_cols)]
    n_rows, n_cols = len(used_rows), len(used_cols)
    # term (r, c) has weight a_r(y) b_c(x): core_rc = e_r e_cᵀ on the shared hat profiles,
    # given by its single entries (the dense core would hold (gy gx)² numbers)
    device = psfs.device
    terms = (
        torch.arange(n_rows, device=device).repeat_interleave(n_cols),
        torch.arange(n_cols, device=device).repeat(n_rows),
        torch.ones(n_rows * n_cols, dtype=psfs.dtype, device=device),
        torch.ones(n_rows * n_cols, dtype=torch.bool, device=device),
    )
    return ProductConvolution._factored(
        kernels.reshape(n_rows * n_cols, h, w),
        torch.from_numpy(rows[used_rows]).to(dtype=psfs.dtype, device=device),
        None,
        torch.from_numpy(cols[used_cols]).to(dtype=psfs.dtype, device=device),
        metadata,
        terms,
    )
