"""Orthogonal views (XY, XZ, YZ) of volumes, to show 3D PSFs, operators and restorations.

Each view is a section through a chosen voxel (default: the brightest) or a maximum
projection, drawn with the true aspect ratio of anisotropic voxels (``z_step`` vs
``pixel_size``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["orthogonal_sections", "save_orthogonal_views"]


def orthogonal_sections(volume: Any, at: Sequence[int] | None = None,
                        projection: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xy (H, W), xz (D, W), yz (D, H))`` sections of a ``(D, H, W)`` volume through voxel
    ``at`` (default: the brightest voxel), or maximum projections along z, y and x."""
    array = np.asarray(volume, dtype=np.float64)
    if array.ndim != 3:
        raise ValueError(f"volume must have shape (D, H, W), got shape {array.shape}")
    if projection:
        return array.max(axis=0), array.max(axis=1), array.max(axis=2)
    if at is None:
        at = np.unravel_index(int(np.argmax(array)), array.shape)
    z, y, x = (int(v) for v in at)
    if not all(0 <= v < n for v, n in zip((z, y, x), array.shape)):
        raise ValueError(f"at={(z, y, x)} is outside the volume {array.shape}")
    return array[z], array[:, y, :], array[:, :, x]


def save_orthogonal_views(
    path: str | os.PathLike,
    volumes: Sequence[Any],
    titles: Sequence[str],
    *,
    z_step: float = 1.0,
    pixel_size: float = 1.0,
    at: Sequence[int] | None = None,
    projection: bool = False,
    gamma: float = 1.0,
) -> Path:
    """One row per volume: XY, XZ and YZ views side by side (PNG, atomic write).

    All volumes are cut through the same voxel ``at`` (default: the first volume's brightest)
    and shown with the voxel aspect ``z_step / pixel_size``; each row is scaled to its own
    maximum (``gamma`` < 1 lifts dim structures, e.g. 0.5 for PSFs).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from psfmap._container import atomic_write

    if len(volumes) != len(titles) or not volumes:
        raise ValueError(f"volumes and titles must have the same non-zero length, got "
                         f"{len(volumes)} volumes and {len(titles)} titles")
    first = np.asarray(volumes[0], dtype=np.float64)
    if at is None and not projection:
        at = np.unravel_index(int(np.argmax(first)), first.shape)
    aspect = float(z_step) / float(pixel_size)
    figure, axes = plt.subplots(len(volumes), 3, figsize=(11, 3.2 * len(volumes)),
                                squeeze=False, gridspec_kw={"width_ratios": [1, 1, 0.6]})
    for row, (volume, title) in enumerate(zip(volumes, titles)):
        sections = orthogonal_sections(volume, at, projection)
        top = max(float(max(s.max() for s in sections)), 1e-30)
        for column, (section, name) in enumerate(zip(sections, ("XY", "XZ", "YZ"))):
            ax = axes[row, column]
            ax.imshow(np.clip(section / top, 0, 1) ** gamma, cmap="magma",
                      aspect=1.0 if column == 0 else aspect, interpolation="nearest")
            ax.set_title(f"{title}: {name}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    figure.tight_layout()
    path = Path(path)

    def write(tmp: Path) -> None:
        figure.savefig(tmp, dpi=110, format="png")

    try:
        return atomic_write(path, write)
    finally:
        plt.close(figure)
