"""Calibration figure: eigen-PSFs, spatial maps, spectra and PSFs across the field.

Laid out like Fig. 2 of Debarnot, Mangeat & Weiss (IEEE TCI 2021): the eigen-PSFs ``u_i`` in
one row, the spatial maps ``v_j`` in the next, then the singular-value spectra of the patch
matrix and of the stacked coefficient maps, and a mosaic of the PSFs of one calibrated
condition drawn at a grid of positions across the field.
"""

from __future__ import annotations

import os

import numpy as np

from psfmap.calibrate.family import OperatorFamily
from psfmap.figures import pyplot, save_figure


def psf_mosaic(family: OperatorFamily, condition: int = 0, grid: int = 5) -> np.ndarray:
    """Mosaic ``(grid h, grid w)`` of the PSFs of condition ``condition`` at a grid of positions.

    Each tile is scaled to its own maximum so shape changes are visible.
    """
    height, width = family.image_shape
    h, w = family.kernel_shape
    rows = (np.arange(grid) + 0.5) * height / grid
    cols = (np.arange(grid) + 0.5) * width / grid
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    psfs = family.psfs_at(family._gammas[condition], np.column_stack([rr.ravel(), cc.ravel()]))
    psfs = psfs / np.maximum(psfs.max(axis=(1, 2), keepdims=True), 1e-30)
    return psfs.reshape(grid, grid, h, w).transpose(0, 2, 1, 3).reshape(grid * h, grid * w)


def plot_family(
    family: OperatorFamily,
    path: str | os.PathLike | None = None,
    *,
    condition: int = 0,
    max_columns: int = 8,
    dpi: int = 110,
):
    """Draw the calibration figure; save it atomically to ``path`` (PNG/PDF...) when given.

    Returns the matplotlib ``Figure``.
    """
    plt = pyplot()
    if not 0 <= condition < family.n_conditions:
        raise ValueError(
            f"condition must be in [0, {family.n_conditions - 1}], got {condition!r}"
        )
    n_eigen = min(family.n_eigen_psfs, max_columns)
    n_spatial = min(family.n_spatial, max_columns)
    columns = max(n_eigen, n_spatial, 5)
    figure = plt.figure(figsize=(1.9 * columns, 6.6), constrained_layout=True)
    grid = figure.add_gridspec(3, columns, height_ratios=[1, 1, 1.35])
    eigen = family._eigen
    for index in range(n_eigen):
        axis = figure.add_subplot(grid[0, index])
        limit = np.abs(eigen[index]).max()
        axis.imshow(eigen[index], cmap="RdBu_r", vmin=-limit, vmax=limit)
        axis.set_title(f"$u_{{{index + 1}}}$", fontsize=9)
        axis.set_axis_off()
    basis = family._basis
    for index in range(n_spatial):
        axis = figure.add_subplot(grid[1, index])
        axis.imshow(basis[index], cmap="viridis")
        axis.set_title(f"$v_{{{index + 1}}}$", fontsize=9)
        axis.set_axis_off()
    report = family.metadata.get("calibration", {})
    spectra = [
        ("bead patches", report.get("eigen_singular_values"), family.n_eigen_psfs),
        ("coefficient maps", report.get("spatial_singular_values"), family.n_spatial),
    ]
    bottom = grid[2, :].subgridspec(1, 3, wspace=0.3)
    for slot, (title, values, chosen) in enumerate(spectra):
        axis = figure.add_subplot(bottom[0, slot])
        if values:
            values = np.asarray(values, dtype=float)
            values = values / values[0]
            ranks = np.arange(1, len(values) + 1)
            axis.semilogy(ranks, np.maximum(values, 1e-12), "o-", ms=3)
            axis.axvline(chosen + 0.5, color="tab:red", lw=1, ls="--", label=f"kept {chosen}")
            axis.legend(fontsize=7)
        axis.set_title(f"singular values: {title}", fontsize=9)
        axis.set_xlabel("rank", fontsize=8)
        axis.tick_params(labelsize=7)
    axis = figure.add_subplot(bottom[0, 2])
    axis.imshow(psf_mosaic(family, condition), cmap="magma")
    axis.set_title(f"PSFs across the field (condition {condition})", fontsize=9)
    axis.set_axis_off()
    figure.suptitle(
        f"operator family: I={family.n_eigen_psfs} eigen-PSFs, J={family.n_spatial} spatial "
        f"maps, K={family.n_conditions} conditions", fontsize=10,
    )
    if path is not None:
        save_figure(figure, path, dpi=dpi)
        plt.close(figure)
    return figure
