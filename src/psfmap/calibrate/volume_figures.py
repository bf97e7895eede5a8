"""Orthogonal views (XY, XZ, YZ) of a calibrated 3-D operator's PSFs at several depths and
field positions (:func:`psfmap.orthoviews.save_orthogonal_views`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["psf_positions", "plot_volume_psfs"]


def psf_positions(operator: Any, depths: int = 3) -> list[tuple[int, int, int]]:
    """Voxels at which to show the PSFs: the field's centre at ``depths`` planes across the
    calibrated beads' range (one plane when the operator does not vary in depth), then two
    opposite corners of the field (a fifth of it in from the edges) at the middle plane."""
    depth, height, width = operator.image_shape
    report = operator.metadata.get("calibration", {})
    low, high = report.get("bead_planes", (0, depth - 1))
    middle = int(round(0.5 * (low + high)))
    planes = ([int(round(z)) for z in np.linspace(low, high, depths)]
              if report.get("depth_variant", True) else [middle])
    corners = [(middle, height // 5, width // 5),
               (middle, height - 1 - height // 5, width - 1 - width // 5)]
    return [(z, height // 2, width // 2) for z in planes] + corners


def plot_volume_psfs(operator: Any, path: str | os.PathLike, *,
                     positions: Sequence[tuple[int, int, int]] | None = None,
                     gamma: float = 0.5) -> Path:
    """Write XY/XZ/YZ views (through the PSF centre, drawn with the voxel aspect) of
    ``operator.psf_at`` at ``positions`` (default :func:`psf_positions`) to a PNG."""
    from psfmap.orthoviews import save_orthogonal_views

    positions = list(positions) if positions is not None else psf_positions(operator)
    volumes = [np.clip(operator.psf_at(*p).detach().cpu().numpy(), 0, None)
               for p in positions]
    centre = tuple(n // 2 for n in operator.kernel_shape)
    z_step = operator.metadata.get("z_step") or 1.0
    pixel_size = operator.metadata.get("pixel_size") or z_step
    titles = [f"z={z} y={y} x={x}" for z, y, x in positions]
    return save_orthogonal_views(path, volumes, titles, z_step=z_step, pixel_size=pixel_size,
                                 at=centre, gamma=gamma)
