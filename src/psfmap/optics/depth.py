"""Depth by focal-stack matching: compare an image with a simulated through-focus stack.

For each observed image ``o`` and candidate focus offsets ``z_1 < … < z_D``, the microscope
simulates ``s_d`` (its PSF at ``z_d``, convolved with the object when one is given); after the
closed-form affine match of exposure and background (:func:`psfmap.optics.fit.affine_match`)
the depth is the candidate of least NMSE, refined by a parabola through the NMSE at the
minimum and its two neighbours (WaveBlocks, Page Vizcaíno et al., ICASSP 2020, Fig. 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from psfmap._validation import as_tensor, check_finite, describe
from psfmap.optics.fit import affine_match, nmse
from psfmap.optics.microscope import Microscope


@dataclass
class DepthEstimate:
    """``depths (N,)`` µm, the ``errors (N, D)`` NMSE curve of each image over the
    ``candidates (D,)``."""

    depths: torch.Tensor
    errors: torch.Tensor
    candidates: torch.Tensor


def estimate_depth(
    images: Any,
    microscope: Microscope,
    candidates: Any,
    *,
    objects: Any = None,
    refine: bool = True,
) -> DepthEstimate:
    """Focus offset of each image by matching it against the microscope's focal stack.

    Parameters
    ----------
    images : array or tensor (N, h, w) or (h, w)
        Observed images (bead crops the size of the camera PSF, or object images).
    microscope : Microscope
    candidates : sequence of float
        Focus offsets to simulate (µm), increasing.
    objects : array or tensor (h, w), optional
        The object imaged (default: a point, the images are PSFs).
    refine : bool
        Refine the best candidate by a parabola through its neighbours.
    """
    if not isinstance(microscope, Microscope):
        raise TypeError(f"microscope must be a psfmap.optics.Microscope, got "
                        f"{describe(microscope)}")
    parameter = next(microscope.parameters())
    dtype, device = parameter.dtype, parameter.device
    images = check_finite(as_tensor(images, "images", dtype=dtype, device=device), "images")
    single = images.ndim == 2
    if images.ndim not in (2, 3):
        raise ValueError(f"images must be (N, h, w) or (h, w), got {describe(images)}")
    images = images[None] if single else images
    grid = as_tensor(candidates, "candidates", dtype=dtype, device=device).reshape(-1)
    if len(grid) < 3 or not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError(f"candidates must be at least 3 increasing focus offsets (µm), got "
                         f"{describe(candidates)}")
    with torch.no_grad():
        stack = microscope.psf_stack(grid)
        if objects is not None:
            obj = as_tensor(objects, "objects", dtype=dtype, device=device)
            stack = microscope.camera.image(stack, obj)
        if stack.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"the microscope simulates {tuple(stack.shape[-2:])} images but "
                             f"images are {tuple(images.shape[-2:])}")
        observed = images[:, None]
        errors = nmse(affine_match(stack[None], observed), observed)  # (N, D)
        best = errors.argmin(dim=1)
        depths = grid[best].clone()
        if refine:
            inner = (best > 0) & (best < len(grid) - 1)
            for n in torch.nonzero(inner).flatten().tolist():
                i = int(best[n])
                e0, e1, e2 = (float(errors[n, k]) for k in (i - 1, i, i + 1))
                curvature = e0 - 2 * e1 + e2
                if curvature > 0:
                    # vertex of the parabola through three points, spacing taken locally
                    step = float(grid[i + 1] - grid[i - 1]) / 2
                    depths[n] = grid[i] + step * 0.5 * (e0 - e2) / curvature
    return DepthEstimate(depths=depths[0] if single else depths, errors=errors, candidates=grid)


def crop_bead(stack: Any, size: int, center: tuple[int, int] | None = None) -> torch.Tensor:
    """A ``(Z, size, size)`` crop of a bead z-stack, background removed.

    ``center`` (row, col) defaults to the brightest pixel of the maximum projection near the
    maximum of its 3 × 3 mean (a lone hot pixel does not outweigh a bead); the background
    (median of the stack) is subtracted and negative values clipped.
    """
    stack = check_finite(as_tensor(stack, "stack", dtype=torch.float64), "stack")
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"stack must be (Z, H, W) or (H, W), got {describe(stack)}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 3:
        raise ValueError(f"size must be an integer >= 3, got {size!r}")
    height, width = stack.shape[-2:]
    if size > min(height, width):
        raise ValueError(f"size={size} exceeds the stack's {height}x{width} planes")
    if center is None:
        projection = stack.amax(dim=0)[None, None]
        smooth = torch.nn.functional.avg_pool2d(projection, 3, stride=1, padding=1)[0, 0]
        index = int(torch.argmax(smooth))
        row, col = index // width, index % width
        # the smoothed maximum finds the bead; its brightest pixel centres the crop
        top, left = max(row - 2, 0), max(col - 2, 0)
        near = projection[0, 0, top:row + 3, left:col + 3]
        best = int(torch.argmax(near))
        center = (top + best // near.shape[1], left + best % near.shape[1])
    row, col = (int(c) for c in center)
    top = min(max(row - size // 2, 0), height - size)
    left = min(max(col - size // 2, 0), width - size)
    crop = stack[:, top:top + size, left:left + size]
    return (crop - stack.median()).clamp(min=0)
