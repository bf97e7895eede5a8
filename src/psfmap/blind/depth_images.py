"""Depth maps and depth calibrations from images: the blind ``zernike3`` PSF map of each image
read through the depth formulas of :mod:`psfmap.blind.depth` (Shajkofci & Liebling, IEEE TIP
2020, Sec. V-D).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from psfmap._validation import ArrayKind, as_tensor, describe
from psfmap.blind.depth import (
    VALIDITY_THRESHOLD,
    DepthCalibration,
    astigmatic_depth,
    best_axis_offset,
    check_formula,
    depth_images_needed,
    fit_depth,
)


def _image_params(psf_map) -> np.ndarray:
    """Median parameters of a map's valid cells -> (3,), taken over the Noll coefficients
    (:meth:`~psfmap.psf.PSFFamily.to_linear`: the astigmatism axis is periodic)."""
    family = psf_map.family
    linear = family.to_linear(psf_map.params).reshape(-1, 3)
    validity = psf_map.validity
    if validity is not None:
        linear = linear[np.asarray(validity, dtype=np.float64).reshape(-1) >= VALIDITY_THRESHOLD]
    if not len(linear):
        return np.full(3, np.nan)
    return family.from_linear(np.median(linear, axis=0))


def calibrate_depth(
    images: Any,
    z_um: Any,
    *,
    model: Any = "zernike3",
    window: int | None = None,
    stride: int | None = None,
    axis_offset: float | None = None,
    median: int = 0,
    formula: str = "paper",
) -> DepthCalibration:
    """Fit the affine map from raw astigmatic depth to micrometres on images at known depths.

    Each image (e.g. a slice of a bead z-stack) gets a PSF map (:func:`psfmap.estimate`);
    the median parameters of its valid cells give one raw depth
    ``z = a1 (2 a3 / π − 1)`` (Shajkofci & Liebling, IEEE TIP 2020), and a least-squares
    fit ``z_µm ≈ slope · z + intercept`` over the images gives the calibration. Images with
    no valid cell (far out of focus, empty) are skipped. ``formula="twin-invariant"`` fits
    the alternative of the module docstring instead.

    Parameters
    ----------
    images : sequence of 2-D arrays, or array (Z, H, W)
    z_um : 1-D array (Z,)
        Known depth of each image in micrometres.
    model : str or PSFEstimator
        Z-3 estimator (shipped ``zernike3`` by default).
    window, stride : int, optional
        Sliding-window settings of the PSF map.
    axis_offset : float, optional
        Axis rotation (radians); ``None`` searches ``[0, π)`` for the best affine fit.
    median : int
        Median filter of each map's parameter grid.
    formula : str
        ``"paper"`` or ``"twin-invariant"``.

    Returns
    -------
    DepthCalibration
    """
    from psfmap.blind.verbs import estimate, get_estimator

    check_formula(formula)
    estimator = get_estimator(model)
    if tuple(estimator.family.names) != ("focus", "cylinder", "axis"):
        raise ValueError(
            f"depth needs a zernike3 model (focus, cylinder, axis), got the "
            f"{estimator.family.name!r} model with parameters {estimator.family.names}"
        )
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim != 3:
            raise ValueError(f"images must be a stack (Z, H, W), got shape {tuple(images.shape)}")
        stack: Sequence[Any] = list(images)
    elif isinstance(images, Sequence):
        stack = list(images)
    else:
        raise TypeError(f"images must be a stack or a list of 2-D images, got {describe(images)}")
    if not stack:
        raise ValueError("images is empty; expected a z-stack of images at known depths")
    z = np.asarray(z_um, dtype=np.float64).reshape(-1)
    if z.size != len(stack):
        raise ValueError(f"z_um must give one depth per image ({len(stack)}), got {z.size}")
    if not np.all(np.isfinite(z)) or np.ptp(z) == 0:
        raise ValueError("z_um must be finite and not all equal: a calibration needs images at "
                         "several known depths")
    params = []
    for image in stack:
        try:
            psf_map = estimate(image, estimator, window, stride, median=median)
        except ValueError as error:
            if "no texture" in str(error):
                params.append(np.full(3, np.nan))
                continue
            raise
        params.append(_image_params(psf_map))
    params_array = np.asarray(params)
    usable = np.all(np.isfinite(params_array), axis=1)
    needed = depth_images_needed(formula, axis_offset is None)
    if usable.sum() < needed:
        where = ("" if usable.all() else
                 f" ({int(usable.sum())} of {len(stack)} hold texture to estimate a PSF from)")
        raise ValueError(
            f"this calibration fits {needed - 1} numbers and needs at least {needed} images"
            f"{where}; with fewer the fit is exact and its error says nothing"
        )
    params_array, z = params_array[usable], z[usable]
    if axis_offset is None:
        axis_offset = best_axis_offset(params_array, z, formula=formula)
    name = str(getattr(estimator.family, "name", "zernike3"))
    calibration = fit_depth(params_array, z, axis_offset=axis_offset, formula=formula,
                            model=name)
    calibration.metadata.update({"n_images": len(stack), "n_used": int(usable.sum())})
    return calibration


def depth_map(
    image: Any,
    model: Any = "zernike3",
    window: int | None = None,
    stride: int | None = None,
    *,
    grid: tuple[int, int] | None = None,
    median: int = 3,
    calibration: DepthCalibration | None = None,
    full_size: bool = False,
) -> Any:
    """Depth of every cell of the blind PSF map of ``image``.

    ``z = a1 (2 a3 / π − 1)`` per cell from the Z-3 parameters (focus ``a1``, axis ``a3``)
    estimated by the CNN on sliding windows (Shajkofci & Liebling, IEEE TIP 2020), in
    micrometres when a :class:`DepthCalibration` is given (which also sets the axis offset
    and the formula).

    Parameters
    ----------
    image : ndarray or Tensor (H, W)
    model : str or PSFEstimator
        A ``zernike3`` estimator.
    window, stride, grid, median
        Sliding-window settings (see :func:`psfmap.estimate`).
    calibration : DepthCalibration or path, optional
        Converts raw depth to micrometres (a path is read with ``DepthCalibration.load``).
    full_size : bool
        Interpolate the cell grid to the image size (bilinear, same weights as the blur
        operator) instead of returning ``(gy, gx)``.

    Returns
    -------
    Same kind as ``image``: depth per cell ``(gy, gx)`` or per pixel ``(H, W)``.
    """
    from psfmap.blind.verbs import estimate, get_estimator
    from psfmap.operators.grid import hat_profiles

    kind = ArrayKind(image)
    estimator = get_estimator(model)
    if tuple(estimator.family.names) != ("focus", "cylinder", "axis"):
        raise ValueError(
            f"depth needs a zernike3 model (focus, cylinder, axis), got the "
            f"{estimator.family.name!r} model"
        )
    tensor = as_tensor(image, "image")
    if tensor.ndim != 2:
        raise ValueError(f"image must be one 2-D image (H, W), got shape {tuple(tensor.shape)}; "
                         "map a stack plane by plane")
    if isinstance(calibration, (str, os.PathLike)):
        calibration = DepthCalibration.load(calibration)
    elif calibration is not None and not isinstance(calibration, DepthCalibration):
        raise TypeError(f"calibration must be a DepthCalibration or its file, got "
                        f"{describe(calibration)}")
    psf_map = estimate(tensor, estimator, window, stride, grid=grid, median=median)
    params = np.asarray(psf_map.params, dtype=np.float64)
    depth = (astigmatic_depth(params) if calibration is None
             else np.asarray(calibration.depth(params), dtype=np.float64))
    if full_size:
        height, width = tensor.shape[-2:]
        rows = hat_profiles(depth.shape[0], int(height))
        cols = hat_profiles(depth.shape[1], int(width))
        depth = rows.T @ depth @ cols
    return kind.restore(torch.from_numpy(np.ascontiguousarray(depth)).to(tensor.dtype))
