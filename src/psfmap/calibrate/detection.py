"""Bead detection: Laplacian of Gaussian at the PSF scale, robust threshold, local maxima.

A sub-resolution bead imaged by the microscope is a bright blob of the PSF's size. Filtering
the image with the negated, scale-normalised Laplacian of Gaussian

    L(x) = -σ² (∇² G_σ ⋆ f)(x)

turns every bead into a peak and flattens smooth background. Peaks are kept where

    L(x) > median(L) + k · 1.4826 · MAD(L)

(a robust z-score: the median and the median absolute deviation are insensitive to the few
bead pixels), where ``x`` is a local maximum of ``L`` in a window of the PSF size, and where
``x`` lies at least ``margin`` pixels inside the image. Beads that touch the saturation level
are flagged: their PSF is clipped and must not enter the calibration.

Reference: Debarnot, Mangeat, Weiss, "Learning low-dimensional models of microscopes",
IEEE Trans. Computational Imaging 7 (2021), Section II-B (data pre-processing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from psfmap._validation import check_positive, describe

MAD_TO_SIGMA = 1.4826


@dataclass
class BeadDetection:
    """Detected bead candidates of one image.

    Attributes
    ----------
    positions : ndarray (N, 2)
        Integer (row, col) of the LoG maxima above threshold, inside the margin.
    strengths : ndarray (N,)
        LoG response at each position.
    saturated : ndarray (N,) of bool
        True where a pixel near the bead reaches the saturation level.
    threshold : float
        The LoG threshold ``median + k · 1.4826 · MAD`` that was used.
    """

    positions: np.ndarray
    strengths: np.ndarray
    saturated: np.ndarray
    threshold: float

    @property
    def good(self) -> np.ndarray:
        """Positions (M, 2) of the beads that are not saturated."""
        return self.positions[~self.saturated]


def as_image(image, name: str = "image") -> np.ndarray:
    """Return a 2-D float64 NumPy copy of a NumPy array or torch tensor (checked finite)."""
    try:
        import torch

        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or torch tensor, got {describe(image)}")
    if image.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image (H, W), got shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == np.bool_) or np.iscomplexobj(
        image
    ):
        raise TypeError(f"{name} must be real numeric, got dtype {image.dtype}")
    array = image.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; expected finite numbers")
    return array


def default_saturation(image) -> float | None:
    """Saturation level of an integer image: its dtype's maximum; None for float images."""
    dtype = getattr(image, "dtype", None)
    if dtype is None:
        return None
    try:
        np_dtype = np.dtype(str(dtype).replace("torch.", ""))
    except TypeError:
        return None
    if np.issubdtype(np_dtype, np.integer):
        return float(np.iinfo(np_dtype).max)
    return None


def log_response(image: np.ndarray, sigma: float) -> np.ndarray:
    """Negated scale-normalised Laplacian of Gaussian ``-σ² ∇²(G_σ ⋆ f)``: beads become peaks."""
    # float32 halves the cost on large images; the response only ranks and thresholds peaks
    response = ndi.gaussian_laplace(image.astype(np.float32, copy=False), sigma, mode="reflect")
    return np.float32(-(sigma**2)) * response


def local_maxima(
    response: np.ndarray, threshold: float, half_window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels above ``threshold`` that are the maximum of their ``(2 half_window + 1)²`` window.

    Same result as comparing with ``scipy.ndimage.maximum_filter`` (edge-replicated), but only
    the few pixels above the threshold are examined, so the cost does not grow with the
    window on large sparse bead images.
    """
    rows, cols = np.nonzero(response > threshold)
    if rows.size == 0:
        return rows, cols
    if rows.size > response.size // 20:  # dense: the filter is cheaper
        peak = ndi.maximum_filter(response, size=2 * half_window + 1, mode="nearest")
        keep = peak[rows, cols] == response[rows, cols]
        return rows[keep], cols[keep]
    padded = np.pad(response, half_window, mode="edge")
    offsets = np.arange(2 * half_window + 1)
    keep = np.ones(rows.size, dtype=bool)
    values = response[rows, cols]
    for chunk in range(0, rows.size, 4096):
        r = rows[chunk : chunk + 4096, None, None] + offsets[None, :, None]
        c = cols[chunk : chunk + 4096, None, None] + offsets[None, None, :]
        window_max = padded[r, c].reshape(len(r), -1).max(axis=1)
        keep[chunk : chunk + 4096] = window_max <= values[chunk : chunk + 4096]
    return rows[keep], cols[keep]


def detect_beads(
    image,
    psf_sigma: float = 2.0,
    *,
    k: float = 6.0,
    margin: int | None = None,
    min_distance: int | None = None,
    saturation: float | None = None,
    min_relative_strength: float = 0.0,
) -> BeadDetection:
    """Detect bead candidates in one image.

    Parameters
    ----------
    image : ndarray or Tensor (H, W)
        Bead image (any real dtype).
    psf_sigma : float
        Scale of the PSF in pixels (standard deviation of a Gaussian of the same width); the
        LoG filter is evaluated at this scale.
    k : float
        Robust threshold: a candidate's LoG response must exceed ``median + k · 1.4826 · MAD``.
    margin : int, optional
        Candidates closer than ``margin`` pixels to the border are dropped (default
        ``ceil(3 psf_sigma)``). Calibration passes half the patch size.
    min_distance : int, optional
        Half-size of the local-maximum window (default ``max(2, ceil(3 psf_sigma))``, which
        also suppresses the side lobes and rings of a bead).
    saturation : float, optional
        Saturation level; beads with a pixel ``>= saturation`` within ``2 psf_sigma`` are
        flagged. Default: the dtype maximum for integer images, none for float images.
    min_relative_strength : float
        Also drop candidates weaker than this fraction of the strongest one.

    Returns
    -------
    BeadDetection
        Positions, LoG strengths, saturation flags and threshold, sorted by decreasing strength.
    """
    if saturation is None:
        saturation = default_saturation(image)
    array = as_image(image)
    psf_sigma = check_positive(psf_sigma, "psf_sigma (px)")
    k = check_positive(k, "k (threshold factor)")
    if margin is None:
        margin = int(np.ceil(3 * psf_sigma))
    if min_distance is None:
        min_distance = max(2, int(np.ceil(3 * psf_sigma)))
    height, width = array.shape
    if height <= 2 * margin or width <= 2 * margin:
        raise ValueError(
            f"image of shape {array.shape} is too small for a border margin of {margin} px"
        )
    response = log_response(array, psf_sigma)
    # robust statistics on a 2×2-subsampled response: as accurate for millions of pixels, 4×
    # cheaper
    sample = response[::2, ::2] if response.size > 65536 else response
    median = float(np.median(sample))
    mad = float(np.median(np.abs(sample - median)))
    if mad == 0:
        # flat background (e.g. noiseless or clipped images): fall back to the spread of the
        # non-median values so that a constant image still yields no detection
        spread = np.abs(response - median)
        mad = float(np.median(spread[spread > 0])) if np.any(spread > 0) else 0.0
    threshold = median + k * MAD_TO_SIGMA * mad
    rows, cols = local_maxima(response, threshold, min_distance) if mad > 0 else (
        np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    )
    inside = (rows >= margin) & (rows < height - margin) & (cols >= margin) & (
        cols < width - margin
    )
    rows, cols = rows[inside], cols[inside]
    strengths = response[rows, cols].astype(np.float64)
    if rows.size and min_relative_strength > 0:
        keep = strengths >= min_relative_strength * strengths.max()
        rows, cols, strengths = rows[keep], cols[keep], strengths[keep]
    order = np.argsort(-strengths, kind="stable")
    positions = np.stack([rows[order], cols[order]], axis=1).astype(np.int64)
    strengths = strengths[order]
    saturated = np.zeros(len(positions), dtype=bool)
    if saturation is not None and len(positions):
        reach = max(1, int(np.ceil(2 * psf_sigma)))
        padded = np.pad(array, reach, mode="edge")
        offsets = np.arange(2 * reach + 1)
        rows = positions[:, 0, None, None] + offsets[None, :, None]
        cols = positions[:, 1, None, None] + offsets[None, None, :]
        saturated = padded[rows, cols].reshape(len(positions), -1).max(axis=1) >= saturation
    return BeadDetection(positions, strengths, saturated, float(threshold))
