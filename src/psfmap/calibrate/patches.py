"""From detected beads to clean PSF patches: isolation, background, centring, outliers.

Every bead kept for calibration goes through the steps of Debarnot, Mangeat & Weiss,
"Learning low-dimensional models of microscopes", IEEE TCI 7 (2021), Section II-B:

1. **Isolation** — no other detected candidate within ``min_separation`` pixels (Chebyshev
   distance) and a single significant maximum in the smoothed patch.
2. **Background** — a polynomial ``b(r, c) = Σ_{p+q≤d} β_pq r^p c^q`` is fitted by least
   squares on the patch border (``border`` pixels wide) and subtracted.
3. **Sub-pixel centring** — a Gaussian ``A exp(-|x - x0|² / 2s²) + b0`` is fitted to the patch
   centre (batched Levenberg–Marquardt); the patch is re-sampled by cubic-spline
   interpolation on the grid shifted by ``x0`` so that every bead sits at ``(h//2, w//2)``.
4. **Outlier rejection** — robust z-tests across the population of one image on the energy,
   the fitted width and the distance to the median PSF:
   ``z = (x - median(x)) / (1.4826 MAD(x))``, rejected where ``|z| > z_max``.
5. **Normalisation** — each patch is divided by its sum (PSFs sum to 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from psfmap.calibrate.detection import MAD_TO_SIGMA


@dataclass
class PatchSet:
    """Clean, centred, normalised bead patches of one or several images.

    Attributes
    ----------
    patches : ndarray (N, h, w)
        PSF patches, background removed, centred at ``(h//2, w//2)``, each summing to 1.
    positions : ndarray (N, 2)
        Sub-pixel (row, col) of each bead in its image.
    image_index : ndarray (N,) of int
        Which image (condition) each patch comes from.
    energy : ndarray (N,)
        Total intensity of the bead after background removal (before normalisation).
    width : ndarray (N,)
        Fitted Gaussian standard deviation in pixels.
    noise : ndarray (N,)
        Standard deviation of the border residual after background removal, divided by
        ``energy``: the per-pixel noise level of the normalised patch.
    rejected : dict
        How many candidates each step removed (``saturated``, ``not_isolated``, ...).
    """

    patches: np.ndarray
    positions: np.ndarray
    image_index: np.ndarray
    energy: np.ndarray
    width: np.ndarray
    noise: np.ndarray
    rejected: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.patches)

    def select(self, mask: np.ndarray) -> PatchSet:
        """The subset of patches where ``mask`` is True."""
        return PatchSet(
            self.patches[mask], self.positions[mask], self.image_index[mask],
            self.energy[mask], self.width[mask], self.noise[mask], dict(self.rejected),
        )

    @staticmethod
    def concatenate(sets: list[PatchSet]) -> PatchSet:
        """Join patch sets (their ``rejected`` counts are summed)."""
        rejected: dict = {}
        for item in sets:
            for key, value in item.rejected.items():
                rejected[key] = rejected.get(key, 0) + value
        return PatchSet(
            np.concatenate([s.patches for s in sets]),
            np.concatenate([s.positions for s in sets]),
            np.concatenate([s.image_index for s in sets]),
            np.concatenate([s.energy for s in sets]),
            np.concatenate([s.width for s in sets]),
            np.concatenate([s.noise for s in sets]),
            rejected,
        )


def extract_patches(image: np.ndarray, positions: np.ndarray, size: int) -> np.ndarray:
    """Square windows ``(N, size, size)`` whose index ``size//2`` lies on each integer position.

    Positions must lie at least ``size//2`` pixels inside the image.
    """
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    half = size // 2
    offsets = np.arange(size) - half
    rows = positions[:, 0, None, None] + offsets[None, :, None]
    cols = positions[:, 1, None, None] + offsets[None, None, :]
    if len(positions) and (
        rows.min() < 0 or cols.min() < 0 or rows.max() >= image.shape[0]
        or cols.max() >= image.shape[1]
    ):
        raise ValueError(
            f"positions must lie at least {half} px inside the image of shape {image.shape} "
            f"to extract {size}x{size} patches"
        )
    return image[rows, cols]


def isolated(
    positions: np.ndarray,
    candidates: np.ndarray,
    min_separation: float,
    strengths: np.ndarray | None = None,
    candidate_strengths: np.ndarray | None = None,
    neighbour_fraction: float = 0.1,
) -> np.ndarray:
    """True where no other candidate lies within ``min_separation`` px (Chebyshev distance).

    With ``strengths`` (of the positions) and ``candidate_strengths``, a neighbour weaker than
    ``neighbour_fraction`` times the bead (e.g. a faint texture peak of the sample) is ignored.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    candidates = np.asarray(candidates, dtype=np.float64).reshape(-1, 2)
    if len(positions) == 0:
        return np.zeros(0, dtype=bool)
    distance = np.abs(positions[:, None, :] - candidates[None, :, :]).max(axis=-1)
    close = (distance < min_separation) & (distance > 0)
    if strengths is not None and candidate_strengths is not None:
        strong = np.asarray(candidate_strengths)[None, :] >= neighbour_fraction * np.asarray(
            strengths
        )[:, None]
        close &= strong
    return ~close.any(axis=1)


def border_mask(size: int, border: int) -> np.ndarray:
    """Boolean ``(size, size)`` mask of the ``border`` outermost rows and columns."""
    mask = np.zeros((size, size), dtype=bool)
    mask[:border] = mask[-border:] = True
    mask[:, :border] = mask[:, -border:] = True
    return mask


def _polynomial_design(size: int, degree: int) -> np.ndarray:
    coords = (np.arange(size) - size // 2) / max(size // 2, 1)
    rr, cc = np.meshgrid(coords, coords, indexing="ij")
    terms = [rr**p * cc**q for p in range(degree + 1) for q in range(degree + 1 - p)]
    return np.stack([t.ravel() for t in terms], axis=1)


def remove_background(
    patches: np.ndarray, degree: int = 1, border: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Subtract a polynomial of total degree ``degree`` fitted on the patch border.

    Solves ``min_β Σ_{x ∈ border} (p(x) - Σ β_pq r^p c^q)²`` for every patch at once.

    Returns
    -------
    cleaned : ndarray (N, h, w)
        Patches minus their fitted background.
    noise : ndarray (N,)
        Standard deviation of the border residual (the noise level of each patch).
    """
    patches = np.asarray(patches, dtype=np.float64)
    n, size, _ = patches.shape
    design = _polynomial_design(size, degree)
    mask = border_mask(size, border).ravel()
    flat = patches.reshape(n, -1)
    beta, *_ = np.linalg.lstsq(design[mask], flat[:, mask].T, rcond=None)
    background = (design @ beta).T
    cleaned = flat - background
    residual = cleaned[:, mask]
    dof = max(int(mask.sum()) - design.shape[1], 1)
    noise = np.sqrt((residual**2).sum(axis=1) / dof)
    return cleaned.reshape(n, size, size), noise


def single_maximum(
    patches: np.ndarray, psf_sigma: float, fraction: float = 0.5
) -> np.ndarray:
    """True where the smoothed patch has no second local maximum above ``fraction`` of the
    central peak farther than ``3 psf_sigma`` from the centre (another bead in the patch)."""
    n, size, _ = patches.shape
    smooth = ndi.gaussian_filter(patches, sigma=(0, psf_sigma / 2, psf_sigma / 2), mode="nearest")
    window = max(3, 2 * int(round(psf_sigma)) + 1)
    peaks = ndi.maximum_filter(smooth, size=(1, window, window), mode="nearest") == smooth
    half = size // 2
    yy, xx = np.mgrid[:size, :size] - half
    far = np.hypot(yy, xx) > 3 * psf_sigma
    # do not count peaks on the outer ring (background gradients) as beads
    inner = ~border_mask(size, 1)
    central = smooth[:, half - 1 : half + 2, half - 1 : half + 2].reshape(n, -1).max(axis=1)
    strong = smooth > fraction * np.maximum(central, 1e-30)[:, None, None]
    second = (peaks & strong & far[None] & inner[None]).reshape(n, -1).any(axis=1)
    return ~second


def fit_gaussian_centres(
    patches: np.ndarray, psf_sigma: float, iterations: int = 20, window: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit ``A exp(-((r-r0)² + (c-c0)²) / 2s²) + b`` to the centre of every patch at once.

    Batched Levenberg–Marquardt on the central ``window × window`` pixels (default
    ``2 ceil(2.5 psf_sigma) + 1``), started from the intensity-weighted centroid.

    Returns
    -------
    offsets : ndarray (N, 2)
        ``(r0, c0)`` relative to the patch centre ``(h//2, w//2)``, in pixels.
    widths : ndarray (N,)
        Fitted ``s`` in pixels.
    converged : ndarray (N,) of bool
        False for fits that ran away (offset beyond the window, width out of range).
    """
    n, size, _ = patches.shape
    half_window = int(np.ceil(2.5 * psf_sigma)) if window is None else window // 2
    half_window = min(half_window, size // 2)
    c = size // 2
    crop = patches[:, c - half_window : c + half_window + 1, c - half_window : c + half_window + 1]
    coords = np.arange(-half_window, half_window + 1, dtype=np.float64)
    rr, cc = np.meshgrid(coords, coords, indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    data = crop.reshape(n, -1)
    base = data.min(axis=1)
    weights = np.clip(data - base[:, None], 0, None)
    total = np.maximum(weights.sum(axis=1), 1e-30)
    r0 = (weights * rr).sum(axis=1) / total
    c0 = (weights * cc).sum(axis=1) / total
    params = np.stack(
        [data.max(axis=1) - base, r0, c0, np.full(n, float(psf_sigma)), base], axis=1
    )
    damping = np.full(n, 1e-2)

    def model(p):
        dr = rr[None] - p[:, 1:2]
        dc = cc[None] - p[:, 2:3]
        s2 = p[:, 3:4] ** 2
        g = np.exp(-(dr**2 + dc**2) / (2 * s2))
        return p[:, 0:1] * g + p[:, 4:5], g, dr, dc, s2

    fit, g, dr, dc, s2 = model(params)
    cost = ((data - fit) ** 2).sum(axis=1)
    for _ in range(iterations):
        amp = params[:, 0:1]
        jac = np.stack(
            [
                g,
                amp * g * dr / s2,
                amp * g * dc / s2,
                amp * g * (dr**2 + dc**2) / (s2 * params[:, 3:4]),
                np.ones_like(g),
            ],
            axis=-1,
        )
        residual = data - fit
        jtj = np.einsum("npk,npl->nkl", jac, jac)
        jtr = np.einsum("npk,np->nk", jac, residual)
        diag = np.einsum("nkk->nk", jtj)
        lhs = jtj + damping[:, None, None] * (
            np.eye(5)[None] * (diag[:, :, None] + 1e-12)
        )
        try:
            step = np.linalg.solve(lhs, jtr[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.zeros_like(params)
        trial = params + step
        trial[:, 3] = np.clip(np.abs(trial[:, 3]), 0.3, 4 * half_window)
        trial_fit, tg, tdr, tdc, ts2 = model(trial)
        trial_cost = ((data - trial_fit) ** 2).sum(axis=1)
        better = trial_cost < cost
        params = np.where(better[:, None], trial, params)
        fit = np.where(better[:, None], trial_fit, fit)
        g = np.where(better[:, None], tg, g)
        dr = np.where(better[:, None], tdr, dr)
        dc = np.where(better[:, None], tdc, dc)
        s2 = np.where(better[:, None], ts2, s2)
        cost = np.where(better, trial_cost, cost)
        damping = np.where(better, damping / 3, damping * 4)
    offsets = params[:, 1:3]
    widths = np.abs(params[:, 3])
    converged = (
        (np.abs(offsets).max(axis=1) < half_window)
        & (widths < 2 * half_window)
        & (params[:, 0] > 0)
        & np.isfinite(params).all(axis=1)
    )
    return offsets, widths, converged


def recentre(patches: np.ndarray, offsets: np.ndarray, size: int) -> np.ndarray:
    """Cubic-spline re-sampling so the fitted centre lands on ``(size//2, size//2)``.

    ``patches`` are larger than ``size`` (extracted with a pad); each is shifted by
    ``-offsets`` (``scipy.ndimage.shift``, order 3) and cropped to ``size × size``.
    """
    n, big, _ = patches.shape
    start = big // 2 - size // 2
    out = np.empty((n, size, size))
    for index in range(n):
        shifted = ndi.shift(patches[index], -offsets[index], order=3, mode="nearest")
        out[index] = shifted[start : start + size, start : start + size]
    return out


def robust_z(values: np.ndarray) -> np.ndarray:
    """Robust z-scores ``(x - median) / (1.4826 MAD)`` (zeros when the MAD vanishes)."""
    values = np.asarray(values, dtype=np.float64)
    median = np.median(values)
    mad = MAD_TO_SIGMA * np.median(np.abs(values - median))
    if mad <= 0:
        scale = np.std(values)
        if scale <= 0:
            return np.zeros_like(values)
        mad = scale
    return (values - median) / mad


def outlier_mask(patches: np.ndarray, energy: np.ndarray, width: np.ndarray, z_max: float):
    """True for inliers: ``|z| ≤ z_max`` on energy, width and distance to the median PSF."""
    if len(patches) < 5:
        return np.ones(len(patches), dtype=bool)
    median_psf = np.median(patches, axis=0)
    distance = np.sqrt(((patches - median_psf) ** 2).sum(axis=(1, 2)))
    distance /= max(np.sqrt((median_psf**2).sum()), 1e-30)
    keep = np.abs(robust_z(np.log(np.maximum(energy, 1e-30)))) <= z_max
    keep &= np.abs(robust_z(width)) <= z_max
    # the distance is one-sided: only PSFs far from the median are suspicious
    keep &= robust_z(distance) <= z_max
    return keep


def psf_patches(
    image: np.ndarray,
    positions: np.ndarray,
    size: int,
    psf_sigma: float,
    *,
    candidates: np.ndarray | None = None,
    min_separation: float | None = None,
    strengths: np.ndarray | None = None,
    candidate_strengths: np.ndarray | None = None,
    background_degree: int = 1,
    z_max: float | None = 4.0,
    image_index: int = 0,
) -> PatchSet:
    """Clean, centred, normalised PSF patches of the beads of one image.

    Parameters
    ----------
    image : ndarray (H, W)
        Float image.
    positions : ndarray (N, 2)
        Integer (row, col) of the beads to use (e.g. the non-saturated detections).
    size : int
        Odd patch side.
    psf_sigma : float
        PSF scale in pixels (Gaussian sigma).
    candidates : ndarray (M, 2), optional
        All detected candidates (including saturated ones) used for the isolation test;
        default ``positions``.
    min_separation : float, optional
        Minimum Chebyshev distance to any other candidate (default ``size//2 + 3 psf_sigma``:
        the neighbour's PSF core stays outside the patch).
    strengths, candidate_strengths : ndarray, optional
        Detection strengths of ``positions`` and ``candidates``: neighbours weaker than a
        tenth of the bead do not make it non-isolated.
    background_degree : int
        Degree of the polynomial background fitted on the patch border.
    z_max : float or None
        Robust z-score bound for the outlier tests (None: no outlier rejection).
    image_index : int
        Stored in ``PatchSet.image_index``.
    """
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    candidates = positions if candidates is None else np.asarray(candidates).reshape(-1, 2)
    if min_separation is None:
        min_separation = size // 2 + 3 * psf_sigma
    rejected = {"not_isolated": 0, "border": 0, "fit_failed": 0, "outlier": 0, "not_positive": 0}
    keep = isolated(positions, candidates, min_separation, strengths, candidate_strengths)
    rejected["not_isolated"] += int((~keep).sum())
    positions = positions[keep]
    pad = 3
    big = size + 2 * pad
    half = big // 2
    inside = (
        (positions[:, 0] >= half) & (positions[:, 1] >= half)
        & (positions[:, 0] < image.shape[0] - half) & (positions[:, 1] < image.shape[1] - half)
    )
    rejected["border"] += int((~inside).sum())
    positions = positions[inside]
    empty = PatchSet(
        np.zeros((0, size, size)), np.zeros((0, 2)), np.zeros(0, dtype=np.int64),
        np.zeros(0), np.zeros(0), np.zeros(0), rejected,
    )
    if len(positions) == 0:
        return empty
    raw = extract_patches(image, positions, big)
    cleaned, _ = remove_background(raw, background_degree, border=2)
    single = single_maximum(cleaned[:, pad:-pad, pad:-pad], psf_sigma)
    rejected["not_isolated"] += int((~single).sum())
    raw, positions = raw[single], positions[single]
    cleaned = cleaned[single]
    if len(positions) == 0:
        return empty
    c = big // 2
    offsets, widths, converged = fit_gaussian_centres(
        cleaned[:, c - size // 2 : c + size // 2 + 1, c - size // 2 : c + size // 2 + 1], psf_sigma
    )
    converged &= np.abs(offsets).max(axis=1) <= pad
    rejected["fit_failed"] += int((~converged).sum())
    raw, positions, offsets, widths = (
        raw[converged], positions[converged], offsets[converged], widths[converged]
    )
    if len(positions) == 0:
        return empty
    shifted = recentre(raw, offsets, size)
    patches, noise = remove_background(shifted, background_degree, border=2)
    energy = patches.sum(axis=(1, 2))
    positive = energy > 0
    rejected["not_positive"] += int((~positive).sum())
    patches, noise, energy = patches[positive], noise[positive], energy[positive]
    offsets, widths, positions = offsets[positive], widths[positive], positions[positive]
    patches = patches / energy[:, None, None]
    if z_max is not None:
        inliers = outlier_mask(patches, energy, widths, z_max)
        rejected["outlier"] += int((~inliers).sum())
    else:
        inliers = np.ones(len(patches), dtype=bool)
    return PatchSet(
        patches[inliers],
        (positions + offsets)[inliers],
        np.full(int(inliers.sum()), image_index, dtype=np.int64),
        energy[inliers],
        widths[inliers],
        (noise / energy)[inliers],
        rejected,
    )
