"""Blur operators from a wave-optics microscope (:class:`psfmap.optics.Microscope`).

A fitted optical model becomes a restoration operator: its PSF as a space-invariant
:class:`Convolution`, or a grid of PSFs, each cell at its own focus offset (a tilted or
curved focal plane), as a :class:`ProductConvolution` interpolated by :func:`from_psf_grid`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from psfmap._validation import check_pair, describe

if TYPE_CHECKING:
    from psfmap.operators import Convolution, ProductConvolution
    from psfmap.optics.microscope import Microscope


def from_microscope(
    microscope: Microscope,
    image_shape: Any,
    grid: Any = None,
    *,
    depth: float = 0.0,
    tilt: tuple[float, float] = (0.0, 0.0),
    depths: Any = None,
) -> Convolution | ProductConvolution:
    """The blur operator of ``microscope`` for ``(H, W)`` images.

    Parameters
    ----------
    microscope : psfmap.optics.Microscope
    image_shape : (int, int)
        ``(H, W)`` of the images (extra leading entries ignored).
    grid : (int, int), optional
        ``(gy, gx)`` cells: without it (and without ``tilt`` or ``depths``) the operator is
        one :class:`Convolution` by the PSF at focus offset ``depth``.
    depth : float
        Focus offset (µm) at the image centre.
    tilt : (float, float)
        Focus change in µm per pixel along (rows, cols): the focal plane is tilted, so cell
        ``(r, c)`` centred at ``(y, x)`` is at ``depth + tilt_y (y − H/2) + tilt_x (x − W/2)``.
    depths : array (gy, gx), optional
        Focus offset of each cell, µm (overrides ``depth`` and ``tilt``; sets the grid).

    Returns
    -------
    Convolution or ProductConvolution
        The PSFs are detached (the operator is for restoration, not for fitting).
    """
    # the operator classes through the package's public names (imported here, once the
    # package is initialised: psfmap.operators imports this module)
    from psfmap.operators import Convolution, cell_centres, from_psf_grid

    # imported here: `import psfmap.operators` (every command's start-up) need not load optics
    from psfmap.optics.microscope import Microscope

    if not isinstance(microscope, Microscope):
        raise TypeError(f"microscope must be a psfmap.optics.Microscope, got "
                        f"{describe(microscope)}")
    if isinstance(image_shape, str) or not hasattr(image_shape, "__len__") \
            or len(image_shape) < 2:
        raise ValueError(f"image_shape must be (H, W), got {image_shape!r}")
    height, width = check_pair(tuple(image_shape)[-2:], "image_shape")
    pixel = microscope.pixel_size()
    metadata = {"source": "psfmap.optics", "pixel_size": pixel,
                "optics": microscope.describe()}
    if depths is None and grid is None and tuple(tilt) == (0.0, 0.0):
        with torch.no_grad():
            psf = microscope.psf(float(depth)).detach()
        return Convolution(psf, metadata)
    if depths is None:
        if grid is None:
            raise ValueError("tilt needs a grid (gy, gx) of cells to vary the PSF over")
        gy, gx = (grid, grid) if isinstance(grid, int) else tuple(grid)
        rows = cell_centres(int(gy), height) - height / 2
        cols = cell_centres(int(gx), width) - width / 2
        depths = depth + tilt[0] * rows[:, None] + tilt[1] * cols[None, :]
    depths = np.asarray(depths, dtype=np.float64)
    if depths.ndim != 2:
        raise ValueError(f"depths must be a (gy, gx) grid of focus offsets, got "
                         f"{describe(depths)}")
    if grid is not None:
        expected = (grid, grid) if isinstance(grid, int) else tuple(grid)
        if tuple(depths.shape) != tuple(int(g) for g in expected):
            raise ValueError(f"depths has shape {depths.shape} but grid is {expected}")
    with torch.no_grad():
        psfs = microscope.psf_grid(depths).detach()
    metadata["depths"] = depths.tolist()
    operator = from_psf_grid(psfs, (height, width))
    operator.metadata.update(metadata)
    return operator
