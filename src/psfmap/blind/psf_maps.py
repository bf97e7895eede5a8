"""Sliding-window PSF map: a CNN parameter estimate per overlapping window of one image.

Shajkofci & Liebling, "Spatially-variant CNN-based point spread function estimation for
blind deconvolution and depth estimation in optical microscopy", IEEE TIP 2020, Sec. III-D:
the image is cut into overlapping windows, the network regresses the PSF parameters and the
validity ``a0`` of each window in batches, windows judged textureless (``a0 < ½``) are filled
from their valid neighbours by inverse-distance weighting, and the parameter grid is
optionally median filtered. The result is a :class:`~psfmap.operators.psf_map.PSFMap` whose
cell ``(r, c)`` is centred at ``((r + ½) H / gy, (c + ½) W / gx)``, the grid convention of
:func:`psfmap.operators.from_psf_grid`, so ``psf_map.operator()`` is the overlap-add blur.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from psfmap._validation import as_tensor, check_finite, check_pair, describe

# a window whose standard deviation is below this fraction of the image's dynamic range is
# flat: no texture, hence no blur information, whatever the network says
FLAT_TOLERANCE = 1e-6
VALIDITY_THRESHOLD = 0.5


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def window_starts(length: int, window: int, n_cells: int) -> np.ndarray:
    """Top-left offsets of ``n_cells`` windows of side ``window`` along an axis of ``length``.

    Window ``k`` is centred on the grid cell centre ``(k + ½) length / n_cells`` and shifted
    inwards where it would cross the border, so the windows follow the cell convention of
    :func:`psfmap.operators.from_psf_grid`.
    """
    centres = (np.arange(n_cells) + 0.5) * length / n_cells
    return np.clip(np.round(centres - window / 2), 0, length - window).astype(np.int64)


def grid_size(length: int, window: int, stride: int) -> int:
    """Number of cells a window sliding by ``stride`` needs to cover ``length`` pixels."""
    return max(1, math.ceil((length - window) / stride) + 1)


def fill_invalid(params: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill invalid cells of a parameter grid by inverse-distance-weighted averaging.

    Each pass looks, from every unknown cell, along its row and column (the four
    directions) for the nearest known cell and sets the cell to

        p(r, c) = Σ_k p_k / d_k  /  Σ_k 1 / d_k,     k over the (at most 4) cells found,

    ``d_k`` their distances in cells. Cells filled in one pass count as known in the next;
    passes repeat until every cell is known (at most two passes on a connected grid).

    Parameters
    ----------
    params : ndarray (gy, gx, N)
    valid : bool ndarray (gy, gx)

    Returns
    -------
    ndarray (gy, gx, N), a filled copy.

    Raises
    ------
    ValueError
        If no cell is valid.
    """
    params = np.array(params, dtype=np.float64, copy=True)
    known = np.array(valid, dtype=bool, copy=True)
    if params.shape[:2] != known.shape:
        raise ValueError(f"valid must have shape {params.shape[:2]}, got {known.shape}")
    if not known.any():
        raise ValueError("no valid cell to fill the PSF map from")
    gy, gx = known.shape
    while not known.all():
        total = np.zeros_like(params)
        weight = np.zeros((gy, gx))
        for axis in (0, 1):
            for step in (-1, 1):
                # distance to the nearest known cell walking in direction (axis, step)
                nearest = _nearest_known(known, axis, step)
                found = nearest >= 0
                if axis == 0:
                    rows = np.where(found, nearest, 0)
                    cols = np.broadcast_to(np.arange(gx), (gy, gx))
                    distance = np.abs(rows - np.arange(gy)[:, None])
                else:
                    cols = np.where(found, nearest, 0)
                    rows = np.broadcast_to(np.arange(gy)[:, None], (gy, gx))
                    distance = np.abs(cols - np.arange(gx)[None, :])
                inverse = np.where(found & ~known, 1.0 / np.maximum(distance, 1), 0.0)
                total += inverse[..., None] * params[rows, cols]
                weight += inverse
        newly = (weight > 0) & ~known
        params[newly] = total[newly] / weight[newly][:, None]
        known |= newly
    return params


def _nearest_known(known: np.ndarray, axis: int, step: int) -> np.ndarray:
    """Index (along ``axis``) of the nearest known cell in direction ``step``; -1 if none."""
    moved = np.moveaxis(known, axis, 0)
    n = moved.shape[0]
    nearest = np.full(moved.shape, -1, dtype=np.int64)
    last = np.full(moved.shape[1:], -1, dtype=np.int64)
    order = range(n - 1, -1, -1) if step > 0 else range(n)
    for index in order:
        # nearest known strictly beyond ``index`` in direction ``step``
        nearest[index] = last
        last = np.where(moved[index], index, last)
    return np.moveaxis(nearest, 0, axis)


def subpatch_offsets(window: int, patch: int) -> np.ndarray:
    """Offsets along one axis of the ``k = ⌈window / patch⌉`` patches that tile a window.

    Evenly spread from 0 to ``window − patch`` (overlapping when ``window`` is not a
    multiple of ``patch``); ``[0]`` when the window is one patch.
    """
    k = math.ceil(window / patch)
    if k == 1:
        return np.zeros(1, dtype=np.int64)
    return np.round(np.linspace(0, window - patch, k)).astype(np.int64)


def pool_patches(
    linear: np.ndarray, validity: np.ndarray, sigma: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Pool the patches of each window: ``(..., m, N)``, ``(..., m)`` -> ``(..., N)``, ``(...)``.

    ``θ = Σ_j w_j θ_j / Σ_j w_j`` over the window's ``m`` patches (parameters in the
    family's linear coordinates, :meth:`~psfmap.psf.PSFFamily.to_linear`) with weights
    ``w_j = v_j`` (validity), and the mean validity ``v = mean_j v_j``. Given the predicted
    standard deviations ``sigma (..., m, N)`` of the patches' estimates (normalised units),
    the weights become ``w_j = v_j / mean_k σ_jk²`` (validity times precision) and the pooled
    estimate's ``σ = √(Σ_j w_j² σ_j²) / Σ_j w_j`` is returned as well (patches' errors taken
    as independent); otherwise the third output is ``None``.
    """
    weights = validity if sigma is None else validity / np.mean(sigma**2, axis=-1)
    weights = weights + 1e-12
    total = weights.sum(-1)[..., None]
    pooled = (weights[..., None] * linear).sum(-2) / total
    pooled_sigma = None
    if sigma is not None:
        pooled_sigma = np.sqrt((weights[..., None] ** 2 * sigma**2).sum(-2)) / total
    return pooled, validity.mean(-1), pooled_sigma


def median_filter_grid(params: np.ndarray, size: int) -> np.ndarray:
    """Median filter each parameter plane of a ``(gy, gx, N)`` grid (edges reflected)."""
    if size <= 1:
        return params
    # scipy.ndimage.median_filter(params, (size, size, 1), mode="nearest") element for element,
    # in NumPy: loading scipy.ndimage costs the command line 0.2-0.5 s
    before, after = size // 2, size - 1 - size // 2
    padded = np.pad(params, ((before, after), (before, after), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(0, 1))
    windows = windows.reshape(*params.shape, size * size)
    return np.partition(windows, size * size // 2, axis=-1)[..., size * size // 2]


def deviation_at_most(
    patches: torch.Tensor, threshold: Any, *, unbiased: bool, dtype: torch.dtype
) -> torch.Tensor:
    """Whether the standard deviation of each patch ``(B, n)`` is at most ``threshold``.

    Equal to ``patches.to(dtype).std(1, unbiased=unbiased) <= threshold`` (``threshold`` a
    number or a ``(B,)`` tensor), but the standard deviation is only computed for the patches
    whose range ``R = max − min`` allows it: the population standard deviation of ``n``
    values is at least ``R / √(2n)`` (the two extreme values alone give
    ``((x_max − x̄)² + (x_min − x̄)²) / n ≥ R² / (2n)``), so a patch with
    ``R > 2 √(2n) · threshold`` (a factor 2 for rounding) is above it. On images that are not
    flat, no standard deviation is computed at all: one ``aminmax`` pass.
    """
    n = patches.shape[1]
    threshold = torch.as_tensor(threshold, dtype=torch.float64).expand(patches.shape[0])
    low, high = patches.amin(1), patches.amax(1)  # (aminmax with dim is slower on CPU)
    candidates = torch.nonzero((high.double() - low.double())
                               <= 2 * math.sqrt(2 * n) * threshold).flatten()
    out = torch.zeros(patches.shape[0], dtype=torch.bool)
    if len(candidates):
        deviation = patches[candidates].to(dtype).std(1, unbiased=unbiased)
        out[candidates] = deviation.double() <= threshold[candidates]
    return out


def _is_estimator(value: Any) -> bool:
    return all(hasattr(value, name) for name in ("family", "patch_size", "predict"))


def estimate_psf_map(
    image: Any,
    estimator: Any,
    window: int | None = None,
    stride: int | None = None,
    *,
    grid: tuple[int, int] | None = None,
    median: int = 0,
    batch_size: int = 256,
    threshold: float = VALIDITY_THRESHOLD,
):
    r"""Estimate a PSF map of ``image`` with a PSF-parameter estimator on sliding windows.

    The image is covered by a ``gy × gx`` grid of overlapping windows; cell ``(r, c)`` is
    centred at ``((r + ½) H / gy, (c + ½) W / gx)`` (the :func:`~psfmap.operators.from_psf_grid`
    convention). Each window is cut into ``k × k`` patches of the estimator's ``patch_size``
    (``k = ⌈window / p⌉``, one patch when ``window = p``), all patches of the image go
    through ``estimator.predict`` in batches, and per window

        θ = Σ_j v_j θ_j / Σ_j v_j,    v = mean_j v_j

    (validity-weighted parameters ``θ_j``, mean validity ``v_j``; with an estimator that
    predicts its own error the weights are validity × precision, :func:`pool_patches`; an
    astigmatism axis is averaged, filled and filtered through its Noll coefficients, see
    :meth:`~psfmap.psf.PSFFamily.to_linear`, since it is periodic). Cells with
    ``v < threshold``, and flat windows, are invalid and filled by :func:`fill_invalid`
    (inverse-distance weighted four-neighbour averaging, Shajkofci & Liebling, IEEE TIP
    2020); a ``median`` filter of the parameter grid follows when asked.

    Parameters
    ----------
    image : ndarray or Tensor (H, W)
        Image to analyse (any intensity scale).
    estimator : PSFEstimator or compatible
        Needs ``.family`` (a ``psfmap.psf.model`` family), ``.patch_size`` and
        ``.predict(patches (B, p, p)) -> (params (B, N), validity (B,))``. The order
        ``(image, estimator)`` is that of every verb (``estimate(image, model)``); the old
        order ``(estimator, image)`` still works for one release, with a DeprecationWarning.
    window : int, optional
        Window side in pixels, ``>= estimator.patch_size``; default ``patch_size``.
    stride : int, optional
        Step between windows in pixels (``<= window`` so the windows cover the image);
        default ``window // 2``. The grid has ``⌈(H - window) / stride⌉ + 1`` rows.
    grid : (int, int), optional
        Number of windows ``(gy, gx)`` instead of a stride, e.g. ``(13, 13)``.
    median : int
        Side of the median filter applied to each parameter plane (0 or 1: none).
    batch_size : int
        Patches per network call.
    threshold : float
        Validity below which a window is replaced by its neighbours.

    Returns
    -------
    PSFMap
        Parameter grid ``(gy, gx, N)``, validity ``(gy, gx)`` (the network's score; flat
        windows get 0) and ``metadata`` with ``window``, ``stride``, ``grid``, ``model``,
        ``window_rows``/``window_cols`` (top-left offsets), ``centres_y``/``centres_x``,
        ``n_valid``; with an estimator that predicts its own error (``has_uncertainty``),
        ``std (gy, gx, N)``: the predicted standard deviation of each window's own estimate
        (before filling and median filtering), in the family's units.

    Raises
    ------
    ValueError
        If the image is smaller than a window, or no window holds texture (e.g. a constant
        image).
    """
    from psfmap.operators.psf_map import PSFMap

    if _is_estimator(image) and not _is_estimator(estimator):
        warnings.warn("estimate_psf_map(estimator, image) is deprecated; call "
                      "estimate_psf_map(image, estimator)", DeprecationWarning, stacklevel=2)
        image, estimator = estimator, image
    for attribute in ("family", "patch_size", "predict"):
        if not hasattr(estimator, attribute):
            raise TypeError(
                f"estimator must be a PSFEstimator (with .family, .patch_size, .predict), "
                f"got {describe(estimator)}"
            )
    tensor = check_finite(as_tensor(image, "image"), "image")
    if tensor.ndim != 2:
        raise ValueError(f"image must be a 2-D array (H, W), got shape {tuple(tensor.shape)}")
    height, width = (int(s) for s in tensor.shape)
    patch = int(estimator.patch_size)
    window = patch if window is None else _positive_int(window, "window")
    if window < patch:
        raise ValueError(
            f"window must be at least the estimator's patch size {patch} px, got {window}"
        )
    if height < window or width < window:
        raise ValueError(
            f"image of shape {(height, width)} is smaller than one {window}x{window} window; "
            f"expected an image of at least {window}x{window} pixels"
        )
    if grid is not None:
        if stride is not None:
            raise ValueError("give either stride or grid, not both")
        gy, gx = check_pair(grid, "grid", "(gy, gx)", square=True)
        if gy > height or gx > width:
            raise ValueError(f"grid {grid!r} has more cells than the image {height}x{width}")
    else:
        stride = max(1, window // 2) if stride is None else _positive_int(stride, "stride")
        if stride > window:
            raise ValueError(
                f"stride must be at most the window ({window} px) so the windows cover the "
                f"image, got {stride}"
            )
        gy, gx = grid_size(height, window, stride), grid_size(width, window, stride)
    median = int(median)
    if median < 0:
        raise ValueError(f"median must be >= 0, got {median}")
    batch_size = _positive_int(batch_size, "batch_size")

    rows = window_starts(height, window, gy)
    cols = window_starts(width, window, gx)
    # sub-patches of side p inside each window (k x k of them, evenly spread)
    offsets = subpatch_offsets(window, patch)
    k = len(offsets)
    work = tensor.detach().to(dtype=torch.float32, device="cpu")
    # top-left corner of every sub-patch, in (gy, gx, k, k) order; the patches are cut batch
    # by batch (all the windows of an 8192² image at once would take GBs)
    shape = (gy, gx, k, k)
    corner_y = np.broadcast_to(rows[:, None, None, None] + offsets[:, None], shape)
    corner_x = np.broadcast_to(cols[None, :, None, None] + offsets, shape)
    corner_y = torch.from_numpy(corner_y.reshape(-1).copy())
    corner_x = torch.from_numpy(corner_x.reshape(-1).copy())
    # every p x p patch of the image as a view (H - p + 1, W - p + 1, p, p), no copy
    all_patches = work.unfold(0, patch, 1).unfold(1, patch, 1)
    flat_threshold = FLAT_TOLERANCE * max(float(work.max() - work.min()), 1e-30)

    n_params = int(estimator.family.n_params)
    with_std = bool(getattr(estimator, "has_uncertainty", False))
    family = estimator.family
    param_span = np.asarray(family.high, dtype=np.float64) - np.asarray(family.low,
                                                                        dtype=np.float64)
    raw_span, param_span = param_span, np.where(param_span > 0, param_span, 1.0)
    # a PSFEstimator's inner path takes the checked float32 patches as they are: no second
    # finiteness check, no dtype round trip, σ kept normalised (same values up to rounding)
    direct = getattr(estimator, "_predict_patches", None)
    single = np.zeros(1, dtype=np.int64)
    params_list, validity_list, std_list, deviation_list = [], [], [], []
    with torch.inference_mode():
        for start in range(0, corner_y.shape[0], batch_size):
            patches = all_patches[corner_y[start:start + batch_size],
                                  corner_x[start:start + batch_size]]
            if direct is not None:
                estimates = direct(patches, single, with_std, batch_size)
            else:
                estimates = (estimator.predict(patches, return_std=True) if with_std
                             else estimator.predict(patches))
            params_list.append(torch.as_tensor(estimates[0], dtype=torch.float64)
                               .reshape(-1, n_params))
            validity_list.append(torch.as_tensor(estimates[1], dtype=torch.float64).reshape(-1))
            if with_std:
                std = torch.as_tensor(estimates[2], dtype=torch.float64).reshape(-1, n_params)
                std_list.append(std * torch.from_numpy((raw_span > 0).astype(np.float64))
                                if direct is not None else std / torch.from_numpy(param_span))
            deviation_list.append(deviation_at_most(
                patches.flatten(1), flat_threshold, unbiased=True, dtype=torch.float64))
    params = torch.cat(params_list).numpy().reshape(gy, gx, k * k, n_params)
    validity = torch.cat(validity_list).numpy().reshape(gy, gx, k * k)
    sigma = (torch.cat(std_list).numpy().reshape(gy, gx, k * k, n_params)
             if with_std else None)
    if not (np.all(np.isfinite(params)) and np.all(np.isfinite(validity))
            and (sigma is None or np.all(np.isfinite(sigma)))):
        raise ValueError("the estimator returned NaN or infinite values")

    # flat patches (standard deviation at most FLAT_TOLERANCE x the image's range) carry no
    # blur information: invalid whatever the network says
    flat = torch.cat(deviation_list).numpy().reshape(gy, gx, k * k)
    validity = np.where(flat, 0.0, validity)
    # pooled, filled and filtered as Noll coefficients (PSFFamily.to_linear): an astigmatism
    # axis is periodic and would average wrongly as a number
    cell_params, cell_validity, cell_sigma = pool_patches(family.to_linear(params), validity,
                                                          sigma)
    valid = cell_validity >= threshold
    if not valid.any():
        raise ValueError(
            "the image has no texture to estimate a PSF from: every window was judged invalid "
            f"(largest validity {cell_validity.max():.2f} < {threshold}); a constant or "
            "empty image cannot be analysed"
        )
    filled = family.from_linear(median_filter_grid(fill_invalid(cell_params, valid), median))
    filled = np.clip(filled, family.low, family.high)

    spacing_y, spacing_x = height / gy, width / gx
    metadata = {
        "model": str(getattr(family, "name", "unknown")),
        "window": int(window),
        "stride": [float(spacing_y), float(spacing_x)],
        "grid": [int(gy), int(gx)],
        "patch_size": int(patch),
        "median": int(median),
        "threshold": float(threshold),
        "window_rows": rows.tolist(),
        "window_cols": cols.tolist(),
        "centres_y": ((np.arange(gy) + 0.5) * spacing_y).tolist(),
        "centres_x": ((np.arange(gx) + 0.5) * spacing_x).tolist(),
        "n_valid": int(valid.sum()),
    }
    return PSFMap(
        family,
        filled,
        (height, width),
        validity=cell_validity,
        metadata=metadata,
        std=None if cell_sigma is None else cell_sigma * param_span,
    )


def resample_params(psf_map, grid: tuple[int, int]) -> np.ndarray:
    """Parameters of ``psf_map`` at the cell centres of a ``grid`` over the same image.

    Bilinear between the map's cell centres and constant beyond the outer ones (the weights
    of :func:`psfmap.operators.from_psf_grid`; astigmatism through its Noll coefficients,
    :meth:`~psfmap.psf.PSFFamily.to_linear`), so a true map can be compared cell by cell
    with an estimated one on another grid. Returns ``(gy, gx, N)``.
    """
    height, width = psf_map.image_shape
    gy, gx = (int(v) for v in grid)
    rows, cols = psf_map.centres
    new_rows = (np.arange(gy) + 0.5) * height / gy
    new_cols = (np.arange(gx) + 0.5) * width / gx
    params = psf_map.family.to_linear(psf_map.params)
    along_rows = np.stack(
        [[np.interp(new_rows, rows, params[:, c, k]) for c in range(params.shape[1])]
         for k in range(params.shape[2])]
    )  # (N, gx_old, gy)
    out = np.stack(
        [[np.interp(new_cols, cols, along_rows[k, :, r]) for r in range(gy)]
         for k in range(params.shape[2])]
    )  # (N, gy, gx)
    return psf_map.family.from_linear(np.moveaxis(out, 0, -1))
