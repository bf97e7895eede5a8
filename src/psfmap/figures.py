"""Figures (matplotlib, Agg backend): local PSFs drawn over the image, atomic saving.

Nothing here runs when psfmap is imported; matplotlib is loaded on first use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psfmap._container import atomic_write
from psfmap._validation import describe

FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".tif", ".tiff")


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (loaded on first use)."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Save a matplotlib figure atomically (temporary file + rename); the format follows the
    extension (``.png``, ``.pdf``, ``.svg`` ...)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FIGURE_SUFFIXES:
        raise ValueError(
            f"cannot save a figure as {str(path)!r}: expected one of {', '.join(FIGURE_SUFFIXES)}"
        )
    fmt = {".jpg": "jpeg", ".tif": "tiff"}.get(suffix, suffix.lstrip("."))

    def write(tmp: Path) -> None:
        figure.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")

    return atomic_write(path, write)


def _local_psfs(source: Any, grid: tuple[int, int] | None, image_shape: tuple[int, int]):
    """Positions ``(n, 2)``, PSFs ``(n, h, w)``, validity ``(n,)`` and the cell size."""
    from psfmap.operators.grid import cell_centres
    from psfmap.operators.psf_map import PSFMap

    if isinstance(source, PSFMap):
        if tuple(source.image_shape) != tuple(image_shape):
            raise ValueError(
                f"psf_map covers an image of shape {source.image_shape}, got an image of shape "
                f"{image_shape}"
            )
        gy, gx = source.grid
        psfs = source.psfs(dtype=torch.float64)
        psfs = psfs.reshape(gy * gx, *psfs.shape[-2:])
        positions = source.positions.reshape(-1, 2)
        return positions, psfs.numpy(), source.validity.reshape(-1), (gy, gx)
    if not callable(getattr(source, "psf_at", None)):
        raise TypeError(
            f"psf_map must be a PSFMap or an operator with psf_at, got {describe(source)}"
        )
    operator_shape = getattr(source, "image_shape", None)
    if operator_shape is not None and tuple(operator_shape) != tuple(image_shape):
        raise ValueError(
            f"the operator applies to images of shape {tuple(operator_shape)}, got an image of "
            f"shape {image_shape}"
        )
    if grid is None:
        grid = tuple(getattr(source, "metadata", {}).get("grid", (4, 4)))
    gy, gx = (int(v) for v in grid)
    rows = cell_centres(gy, image_shape[0])
    cols = cell_centres(gx, image_shape[1])
    positions = np.array([(r, c) for r in rows for c in cols])
    psfs = np.stack([
        source.psf_at(int(r), int(c)).detach().cpu().to(torch.float64).numpy()
        for r, c in positions
    ])
    return positions, psfs, np.ones(len(positions)), (gy, gx)


def plot_psf_map(
    image: Any,
    psf_map: Any,
    path: str | os.PathLike | None = None,
    *,
    grid: tuple[int, int] | None = None,
    fill: float = 0.7,
    title: str | None = None,
    cmap: str = "gray",
    psf_cmap: str = "magma",
    gamma: float = 0.5,
    figsize: float = 6.0,
    parameters: bool = False,
):
    """Draw the local PSFs of a PSF map or operator over the image, at their cell centres.

    Each PSF is normalised to its maximum, shown with ``psf_cmap`` after a display gamma
    (``gamma < 1`` brings out the faint rings), transparent where it is dark, and magnified to
    ``fill`` of its grid cell; a white frame marks its window and cells of a
    :class:`~psfmap.operators.psf_map.PSFMap` with low validity are drawn faded.

    Parameters
    ----------
    image : array or tensor, shape (H, W)
        Background image (shown with ``cmap``, 1–99.5 percentile contrast).
    psf_map : PSFMap or operator with ``psf_at`` (ProductConvolution, Convolution)
        Source of the local PSFs; an operator is sampled at the centres of ``grid`` (default:
        its own PSF grid when it came from one, else 4 × 4).
    path : str or path, optional
        Save the figure there (atomically); the format follows the extension.
    grid : (int, int), optional
        Sampling grid for operators.
    parameters : bool
        For a :class:`~psfmap.operators.psf_map.PSFMap`, add one panel per parameter: its
        value in every cell over the image's extent, with a colour bar in the parameter's
        unit; cells of validity < 0.5 (filled from their neighbours) are drawn faded. A
        fine grid's PSFs are too small to read; these panels show the map at a glance.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from psfmap.operators.psf_map import PSFMap

    plt = pyplot()
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"image must be a non-empty 2-D array (H, W), got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError("image contains NaN or infinite values; expected finite numbers")
    if not 0 < fill <= 1:
        raise ValueError(f"fill must be in (0, 1], got {fill!r}")
    positions, psfs, validity, (gy, gx) = _local_psfs(psf_map, grid, image.shape)
    height, width = image.shape
    cell_h, cell_w = height / gy, width / gx
    side = fill * min(cell_h, cell_w)

    colormap = plt.get_cmap(psf_cmap)
    aspect = height / width
    names = psf_map.names if parameters and isinstance(psf_map, PSFMap) else ()
    figure, panels = plt.subplots(1, 1 + len(names), squeeze=False, figsize=(
        figsize * (1 + 1.2 * len(names)), figsize * aspect),
        layout="constrained" if names else None)  # colour bars: no gap left beside the image
    axes = panels[0, 0]
    low, high = np.percentile(image, [1.0, 99.5])
    axes.imshow(image, cmap=cmap, vmin=low, vmax=high if high > low else low + 1,
                extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    for (row, col), psf, valid in zip(positions, psfs, validity):
        peak = psf.max()
        shown = (np.clip(psf, 0, None) / peak) ** gamma if peak > 0 else psf
        extent = (col - side / 2, col + side / 2, row + side / 2, row - side / 2)
        alpha = 0.35 + 0.65 * float(valid)
        colours = colormap(shown)
        colours[..., 3] = np.clip(2.0 * shown, 0.0, 1.0) * alpha  # dark PSF pixels see-through
        axes.imshow(colours, extent=extent, interpolation="nearest")
        axes.add_patch(plt.Rectangle((extent[0], extent[3]), side, side, fill=False,
                                     edgecolor="white", linewidth=0.6, alpha=alpha))
    axes.set_xlim(-0.5, width - 0.5)
    axes.set_ylim(height - 0.5, -0.5)
    axes.set_xticks([])
    axes.set_yticks([])
    kernel = psfs.shape[-1]
    axes.set_title(title or f"local PSFs ({gy}×{gx} grid, {kernel}×{kernel} px windows, "
                   f"magnified ×{side / kernel:.1f})", fontsize=9)
    for k, name in enumerate(names):
        _draw_parameter(figure, panels[0, 1 + k], psf_map, k, name, (height, width))
    if not names:
        figure.tight_layout()
    if path is not None:
        save_figure(figure, path)
    return figure


def _draw_parameter(figure: Any, axes: Any, psf_map: Any, k: int, name: str,
                    shape: tuple[int, int]) -> None:
    """Parameter ``k`` of a PSF map as an image over the image's extent (cells of validity
    < 0.5 faded), with a colour bar in its unit."""
    height, width = shape
    family = psf_map.family
    low, high = float(family.low[k]), float(family.high[k])
    periodic = any(k == axis for _, axis in family.periodic)
    shown = axes.imshow(psf_map.params[..., k], cmap="twilight" if periodic else "viridis",
                        vmin=low, vmax=high, extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                        interpolation="nearest")
    faded = np.where(psf_map.validity < 0.5, 0.6, 0.0)  # a white veil over filled cells
    overlay = np.zeros((*faded.shape, 4))
    overlay[..., :3], overlay[..., 3] = 1.0, faded
    axes.imshow(overlay, extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                interpolation="nearest")
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04,
                    label=f"{name} ({family.units[k]})")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(name + (" (faded: low validity)" if faded.any() else ""), fontsize=9)


def _unwrap_periodic(cells: np.ndarray, periodic: list) -> np.ndarray:
    """``cells (n, N)`` with each periodic axis column (period π) unwrapped to within ±π/2 of
    its circular mean (angles doubled, weighted by the astigmatism power), so that cells at
    0.05 and π − 0.05 rad — the same axis — are summarised as near 0, not as 1.57."""
    cells = np.array(cells, dtype=np.float64, copy=True)
    for power, axis in periodic:
        weights = np.abs(cells[:, power]) + 1e-12
        centre = np.angle(np.sum(weights * np.exp(2j * cells[:, axis]))) / 2
        cells[:, axis] = centre + (cells[:, axis] - centre + np.pi / 2) % np.pi - np.pi / 2
    return cells


def plot_psf_map_stack(
    maps: Any,
    path: str | os.PathLike | None = None,
    *,
    title: str | None = None,
    xlabel: str = "frame",
    figsize: float = 6.0,
):
    """Draw how the PSF parameters of a stack's maps change from frame to frame.

    One panel per parameter of the family: the median over each frame's valid cells
    (validity ≥ 0.5; all cells where none is valid) with the 10–90 % range across those
    cells, i.e. the blur of the plane and how much it varies over the field. Through a
    z-stack the width of a Gaussian map is smallest at the focal plane. A periodic
    astigmatism axis (0 ≡ π) is summarised around its circular mean, so its curve may leave
    ``[0, π)`` by up to π/2 rather than jump across the wrap.

    Parameters
    ----------
    maps : sequence of PSFMap
        One map per frame, all of the same family (e.g. ``psfmap.estimate(stack)``).
    path : str or path, optional
        Save the figure there (atomically); the format follows the extension.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from psfmap.operators.psf_map import psf_map_list

    maps = psf_map_list(maps, "draw")
    for index, psf_map in enumerate(maps):
        if psf_map.family.names != maps[0].family.names:
            raise ValueError(f"maps[{index}] is a {psf_map.family.name} map, maps[0] a "
                             f"{maps[0].family.name} one")
    plt = pyplot()
    names = maps[0].names
    periodic = maps[0].family.periodic
    # (frames, 3 quantiles, N): 10th percentile, median, 90th percentile over valid cells
    summary = np.stack([
        np.percentile(
            _unwrap_periodic(psf_map.params[psf_map.validity >= 0.5]
                             if (psf_map.validity >= 0.5).any()
                             else psf_map.params.reshape(-1, len(names)), periodic),
            [10, 50, 90], axis=0,
        )
        for psf_map in maps
    ])
    frames = np.arange(len(maps))
    figure, axes = plt.subplots(
        len(names), 1, figsize=(figsize, 2.2 * len(names) + 0.6), sharex=True, squeeze=False
    )
    units = maps[0].family.units
    for k, (axis, name) in enumerate(zip(axes[:, 0], names)):
        axis.fill_between(frames, summary[:, 0, k], summary[:, 2, k], alpha=0.3,
                          label="10–90 % of the cells")
        axis.plot(frames, summary[:, 1, k], "o-", markersize=3, label="median")
        axis.set_ylabel(f"{name} ({units[k]})")
        axis.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    axes[-1, 0].set_xlabel(xlabel)
    gy, gx = maps[0].grid
    axes[0, 0].set_title(title or f"{maps[0].family.name} PSF maps of {len(maps)} frames "
                         f"({gy}×{gx} cells each)", fontsize=9)
    figure.tight_layout()
    if path is not None:
        save_figure(figure, path)
    return figure
