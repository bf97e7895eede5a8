"""Bead detection in z-stacks: anisotropic 3-D Laplacian of Gaussian, robust threshold, maxima.

The 3-D counterpart of :mod:`psfmap.calibrate.detection`. A bead in a z-stack is a blob of the
PSF's size, ``σ_z`` planes deep and ``σ`` pixels wide. The scale-normalised, negated
Laplacian of Gaussian with one scale per axis

    L(x) = −(σ_z² ∂_z² + σ² ∂_y² + σ² ∂_x²)(G_{σ_z, σ, σ} ⋆ f)(x)

(Lindeberg, "Feature detection with automatic scale selection", IJCV 30 (1998), §5, with the
scale of each axis normalised by its own σ²) turns every bead into a peak and flattens smooth
background. Candidates are the voxels with ``L > median(L) + k · 1.4826 · MAD(L)`` that are
the maximum of their ``(2 m_z + 1) × (2 m + 1)²`` box and lie ``margin`` voxels inside the
stack; beads touching the saturation level are flagged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from psfmap._validation import check_positive, describe
from psfmap.calibrate.detection import MAD_TO_SIGMA, BeadDetection, default_saturation

__all__ = ["as_stack", "detect_beads_3d", "log_response_3d"]

Triple = tuple[int, int, int]


def as_stack(stack: Any, name: str = "stack") -> np.ndarray:
    """A 3-D float32 NumPy copy ``(D, H, W)`` of a NumPy array or torch tensor, checked real,
    finite and with at least 3 planes (a 2-D image is calibrated by :func:`calibrate`)."""
    if type(stack).__module__.startswith("torch"):
        stack = stack.detach().cpu().numpy()
    if not isinstance(stack, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or torch tensor (D, H, W), got "
                        f"{describe(stack)}")
    if stack.ndim != 3:
        raise ValueError(f"{name} must be a bead z-stack (D, H, W), got shape {stack.shape}")
    if stack.shape[0] < 3:
        raise ValueError(f"{name} has {stack.shape[0]} plane(s); a bead z-stack needs at least "
                         "3 (calibrate 2-D images with psfmap.calibrate)")
    if not np.issubdtype(stack.dtype, np.number) or np.iscomplexobj(stack):
        raise TypeError(f"{name} must be real numeric, got dtype {stack.dtype}")
    array = stack.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; expected finite numbers")
    return array


def log_response_3d(stack: np.ndarray, sigma: float, sigma_z: float) -> np.ndarray:
    """Negated scale-normalised 3-D LoG ``−Σ_a σ_a² ∂_a²(G ⋆ f)`` (float32): beads are peaks."""
    sigmas = (float(sigma_z), float(sigma), float(sigma))
    array = np.asarray(stack, dtype=np.float32)
    response = np.zeros_like(array)
    for axis in range(3):
        order = [0, 0, 0]
        order[axis] = 2
        response -= np.float32(sigmas[axis] ** 2) * ndi.gaussian_filter(
            array, sigmas, order=order, mode="reflect")
    return response


def _triple(value: Any, name: str) -> Triple:
    if isinstance(value, (int, np.integer)):
        value = (int(value),) * 3
    values = tuple(int(v) for v in value)
    if len(values) != 3 or min(values) < 0:
        raise ValueError(f"{name} must be an int or (z, y, x) of ints >= 0, got {value!r}")
    return values


def detect_beads_3d(
    stack: Any,
    psf_sigma: float = 2.0,
    psf_sigma_z: float = 2.0,
    *,
    k: float = 6.0,
    margin: Any = None,
    min_distance: Any = None,
    saturation: float | None = None,
) -> BeadDetection:
    """Detect bead candidates in a z-stack.

    Parameters
    ----------
    stack : ndarray or Tensor (D, H, W)
        Bead z-stack (any real dtype).
    psf_sigma, psf_sigma_z : float
        Lateral (pixels) and axial (planes) scale of the PSF.
    k : float
        Robust threshold factor: ``L > median + k · 1.4826 · MAD``.
    margin : int or (mz, my, mx), optional
        Candidates closer than this to a face of the stack are dropped (default
        ``ceil(3 σ)`` per axis).
    min_distance : int or (mz, my, mx), optional
        Half-size of the local-maximum box (default ``ceil(3 σ)`` per axis, at least 2).
    saturation : float, optional
        Beads with a voxel ``>= saturation`` within ``2 σ`` are flagged (default: an integer
        dtype's maximum).

    Returns
    -------
    BeadDetection
        ``positions (N, 3)`` integer ``(z, y, x)``, strengths, saturation flags, threshold,
        sorted by decreasing strength.
    """
    if saturation is None:
        saturation = default_saturation(stack)
    array = as_stack(stack)
    psf_sigma = check_positive(psf_sigma, "psf_sigma (px)")
    psf_sigma_z = check_positive(psf_sigma_z, "psf_sigma_z (planes)")
    k = check_positive(k, "k (threshold factor)")
    scales = (psf_sigma_z, psf_sigma, psf_sigma)
    margin = _triple(margin if margin is not None else
                     tuple(int(np.ceil(3 * s)) for s in scales), "margin")
    window = _triple(min_distance if min_distance is not None else
                     tuple(max(2, int(np.ceil(3 * s))) for s in scales), "min_distance")
    if any(n <= 2 * m for n, m in zip(array.shape, margin)):
        raise ValueError(f"stack of shape {array.shape} is too small for a border margin of "
                         f"{margin} voxels")
    response = log_response_3d(array, psf_sigma, psf_sigma_z)
    sample = response[:, ::2, ::2] if response.size > 2**20 else response
    median = float(np.median(sample))
    mad = float(np.median(np.abs(sample - median)))
    threshold = median + k * MAD_TO_SIGMA * mad
    empty = np.zeros((0, 3), dtype=np.int64)
    if mad <= 0:
        return BeadDetection(empty, np.zeros(0), np.zeros(0, dtype=bool), float(threshold))
    peak = ndi.maximum_filter(response, size=tuple(2 * w + 1 for w in window), mode="nearest")
    found = np.nonzero((response > threshold) & (peak == response))
    positions = np.stack(found, axis=1).astype(np.int64) if found[0].size else empty
    inside = np.all((positions >= np.array(margin)) &
                    (positions < np.array(array.shape) - np.array(margin)), axis=1)
    positions = positions[inside]
    strengths = response[tuple(positions.T)].astype(np.float64)
    order = np.argsort(-strengths, kind="stable")
    positions, strengths = positions[order], strengths[order]
    saturated = np.zeros(len(positions), dtype=bool)
    if saturation is not None and len(positions):
        reach = np.array([max(1, int(np.ceil(2 * s))) for s in scales])
        for index, (z, y, x) in enumerate(positions):
            low = np.maximum((z, y, x) - reach, 0)
            box = array[low[0]:z + reach[0] + 1, low[1]:y + reach[1] + 1, low[2]:x + reach[2] + 1]
            saturated[index] = box.max() >= saturation
    return BeadDetection(positions, strengths, saturated, float(threshold))
