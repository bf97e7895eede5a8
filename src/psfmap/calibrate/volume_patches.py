"""From beads detected in a z-stack to clean 3-D PSF patches (the steps of
:mod:`psfmap.calibrate.patches`, in three dimensions).

1. **Isolation** — no other candidate stronger than a tenth of the bead inside the box
   ``|Δz| < d//2 + 3σ_z``, ``|Δy|, |Δx| < h//2 + 3σ``.
2. **Background** — a polynomial ``b(z, y, x) = Σ_{p+q+r≤n} β_pqr z^p y^q x^r`` fitted by least
   squares on the lateral shell of the patch (the ``border`` outer rows and columns of every
   plane; the top and bottom planes are left out, they hold the defocused light of a
   widefield bead) and subtracted.
3. **Sub-voxel centring** — axially, the vertex of a weighted parabola fitted to the log of
   the bead's axial profile (its core summed over ``±2σ`` laterally) around the brightest
   plane (a Gaussian peak is a parabola in log); laterally, the Gaussian fit of
   :func:`psfmap.calibrate.patches.fit_gaussian_centres` on the three planes around that peak.
   The patch is then shifted by the fitted offset with the Fourier shift theorem
   ``p̂(f) e^{2πi f·δ}`` (exact for PSFs sampled at or above Nyquist, unlike spline
   interpolation near Nyquist) and cropped to ``(d, h, w)``.
4. **Outliers** — robust z-tests on the energy, the fitted width and the distance to the
   median PSF (as in 2-D).
5. **Normalisation** — every patch sums to 1.
"""

from __future__ import annotations

import numpy as np

from psfmap.calibrate.detection import MAD_TO_SIGMA
from psfmap.calibrate.patches import PatchSet, fit_gaussian_centres, robust_z

__all__ = ["centre_offsets", "extract_boxes", "fourier_recentre", "isolated_3d",
           "remove_background_3d", "volume_patches"]

Triple = tuple[int, int, int]


def extract_boxes(stack: np.ndarray, positions: np.ndarray, shape: Triple) -> np.ndarray:
    """Boxes ``(N, d, h, w)`` (odd sides) centred on integer ``positions (N, 3)``, which must lie
    half a box inside the stack."""
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 3)
    half = np.array(shape) // 2
    if len(positions) and (np.any(positions - half < 0) or
                           np.any(positions + half >= np.array(stack.shape))):
        raise ValueError(f"positions must lie at least {tuple(half)} voxels inside the stack of "
                         f"shape {stack.shape} to extract {shape} boxes")
    out = np.empty((len(positions),) + tuple(shape), dtype=np.float64)
    for index, (z, y, x) in enumerate(positions):
        out[index] = stack[z - half[0]:z + half[0] + 1, y - half[1]:y + half[1] + 1,
                           x - half[2]:x + half[2] + 1]
    return out


def isolated_3d(positions: np.ndarray, candidates: np.ndarray, separation: tuple[float, ...],
                strengths: np.ndarray | None = None,
                candidate_strengths: np.ndarray | None = None,
                neighbour_fraction: float = 0.1) -> np.ndarray:
    """True where no other candidate lies inside the box ``|Δ_a| < separation_a`` (a neighbour
    weaker than ``neighbour_fraction`` of the bead does not count)."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    candidates = np.asarray(candidates, dtype=np.float64).reshape(-1, 3)
    if len(positions) == 0:
        return np.zeros(0, dtype=bool)
    delta = np.abs(positions[:, None, :] - candidates[None, :, :])
    close = np.all(delta < np.asarray(separation, dtype=np.float64), axis=-1)
    close &= delta.max(axis=-1) > 0
    if strengths is not None and candidate_strengths is not None:
        close &= np.asarray(candidate_strengths)[None, :] >= neighbour_fraction * np.asarray(
            strengths)[:, None]
    return ~close.any(axis=1)


def _design(shape: Triple, degree: int) -> np.ndarray:
    axes = [(np.arange(n) - n // 2) / max(n // 2, 1) for n in shape]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    terms = [zz**p * yy**q * xx**r for p in range(degree + 1) for q in range(degree + 1 - p)
             for r in range(degree + 1 - p - q)]
    return np.stack([t.ravel() for t in terms], axis=1)


def remove_background_3d(patches: np.ndarray, degree: int = 1, border: int = 2
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Subtract a polynomial of total degree ``degree`` in ``(z, y, x)`` fitted on the lateral
    shell (``border`` outer rows and columns of every plane) of every patch.

    Returns the cleaned patches and their noise level (N,): ``1.4826 MAD / √2`` of the
    differences between neighbouring voxels of the shell residual, which a smooth PSF tail
    reaching the shell (the defocused light of a widefield bead) leaves out.
    """
    patches = np.asarray(patches, dtype=np.float64)
    n, shape = len(patches), tuple(patches.shape[1:])
    mask = np.zeros(shape, dtype=bool)
    mask[:, :border] = mask[:, -border:] = True
    mask[:, :, :border] = mask[:, :, -border:] = True
    mask = mask.ravel()
    design = _design(shape, degree)
    flat = patches.reshape(n, -1)
    beta, *_ = np.linalg.lstsq(design[mask], flat[:, mask].T, rcond=None)
    cleaned = (flat - (design @ beta).T).reshape(patches.shape)
    rows = np.concatenate([cleaned[:, :, :border], cleaned[:, :, -border:]], axis=2)
    differences = np.diff(rows, axis=3).reshape(n, -1)
    noise = MAD_TO_SIGMA * np.median(np.abs(differences), axis=1) / np.sqrt(2)
    return cleaned, noise


def centre_offsets(patches: np.ndarray, psf_sigma: float, psf_sigma_z: float,
                   reach: Triple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sub-voxel bead centres ``(N, 3)`` relative to the box centre (module docstring, step 3).

    The peak is searched within ``reach`` voxels of the centre. Returns the offsets, the
    fitted lateral Gaussian widths (N,) and a converged flag (N,).
    """
    n, depth, height, width = patches.shape
    cz, cy, cx = depth // 2, height // 2, width // 2
    core = max(1, int(np.ceil(2 * psf_sigma)))
    profile = np.clip(patches[:, :, cy - core:cy + core + 1, cx - core:cx + core + 1], 0,
                      None).sum(axis=(2, 3))
    low, high = max(cz - reach[0], 1), min(cz + reach[0] + 1, depth - 1)
    peak = low + np.argmax(profile[:, low:high], axis=1)
    half = max(1, int(round(psf_sigma_z)))
    steps = np.arange(-half, half + 1)
    rows = np.clip(peak[:, None] + steps[None], 0, depth - 1)
    values = np.take_along_axis(profile, rows, axis=1)
    top = np.maximum(values.max(axis=1, keepdims=True), 1e-300)
    weights = np.clip(values / top, 0, None)
    logs = np.log(np.maximum(values / top, 1e-6))
    dz = np.zeros(n)
    design = np.stack([np.ones_like(steps), steps, steps**2], axis=1).astype(np.float64)
    for index in range(n):
        w = weights[index]
        lhs = design.T @ (design * w[:, None])
        try:
            c0, c1, c2 = np.linalg.solve(lhs, design.T @ (w * logs[index]))
        except np.linalg.LinAlgError:
            continue
        if c2 < 0:
            dz[index] = float(np.clip(-c1 / (2 * c2), -1.0, 1.0))
    planes = np.stack([patches[np.arange(n), np.clip(peak + s, 0, depth - 1)]
                       for s in (-1, 0, 1)]).sum(axis=0)
    lateral, widths, converged = fit_gaussian_centres(planes, psf_sigma)
    offsets = np.column_stack([peak - cz + dz, lateral])
    converged &= np.all(np.abs(offsets) <= np.array(reach), axis=1)
    return offsets, widths, converged


def fourier_recentre(patches: np.ndarray, offsets: np.ndarray, shape: Triple) -> np.ndarray:
    """Shift every patch by ``-offsets`` (Fourier shift theorem) and crop the central
    ``shape`` (odd sides): the fitted centres land on ``(d//2, h//2, w//2)``."""
    n, big = len(patches), patches.shape[1:]
    spectra = np.fft.fftn(patches, axes=(1, 2, 3))
    phase = np.zeros((n,) + tuple(big))
    for axis, size in enumerate(big):
        frequencies = np.fft.fftfreq(size)
        view = [1, 1, 1]
        view[axis] = size
        phase = phase + offsets[:, axis, None, None, None] * frequencies.reshape(view)[None]
    shifted = np.fft.ifftn(spectra * np.exp(2j * np.pi * phase), axes=(1, 2, 3)).real
    start = [b // 2 - s // 2 for b, s in zip(big, shape)]
    return shifted[:, start[0]:start[0] + shape[0], start[1]:start[1] + shape[1],
                   start[2]:start[2] + shape[2]]


def volume_patches(
    stack: np.ndarray,
    positions: np.ndarray,
    shape: Triple,
    psf_sigma: float,
    psf_sigma_z: float,
    *,
    candidates: np.ndarray | None = None,
    strengths: np.ndarray | None = None,
    candidate_strengths: np.ndarray | None = None,
    background_degree: int = 1,
    z_max: float | None = 4.0,
    pad: Triple = (3, 3, 3),
) -> PatchSet:
    """Clean, centred, normalised 3-D PSF patches ``(N, d, h, w)`` of the beads of a z-stack.

    ``positions`` are the integer ``(z, y, x)`` of the beads to use, ``candidates`` every
    detection (for the isolation test). ``PatchSet.positions`` holds the sub-voxel centres
    ``(z, y, x)``; ``rejected`` counts the beads each step removed.
    """
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 3)
    candidates = positions if candidates is None else np.asarray(candidates).reshape(-1, 3)
    separation = (shape[0] // 2 + 3 * psf_sigma_z, shape[1] // 2 + 3 * psf_sigma,
                  shape[2] // 2 + 3 * psf_sigma)
    rejected = {"not_isolated": 0, "border": 0, "fit_failed": 0, "outlier": 0, "not_positive": 0}
    keep = isolated_3d(positions, candidates, separation, strengths, candidate_strengths)
    rejected["not_isolated"] += int((~keep).sum())
    positions = positions[keep]
    big = tuple(s + 2 * p for s, p in zip(shape, pad))
    half = np.array(big) // 2
    inside = np.all((positions >= half) & (positions < np.array(stack.shape) - half), axis=1)
    rejected["border"] += int((~inside).sum())
    positions = positions[inside]
    empty = PatchSet(np.zeros((0,) + tuple(shape)), np.zeros((0, 3)), np.zeros(0, np.int64),
                     np.zeros(0), np.zeros(0), np.zeros(0), rejected)
    if len(positions) == 0:
        return empty
    raw = extract_boxes(stack, positions, big)
    cleaned, _ = remove_background_3d(raw, background_degree)
    crop = cleaned[:, pad[0]:big[0] - pad[0], pad[1]:big[1] - pad[1], pad[2]:big[2] - pad[2]]
    offsets, widths, converged = centre_offsets(crop, psf_sigma, psf_sigma_z, pad)
    rejected["fit_failed"] += int((~converged).sum())
    if not converged.any():
        return empty
    cleaned, positions = cleaned[converged], positions[converged]
    offsets, widths = offsets[converged], widths[converged]
    patches, noise = remove_background_3d(fourier_recentre(cleaned, offsets, shape),
                                          background_degree)
    energy = patches.sum(axis=(1, 2, 3))
    positive = energy > 0
    rejected["not_positive"] += int((~positive).sum())
    patches, noise, energy = patches[positive], noise[positive], energy[positive]
    offsets, widths, positions = offsets[positive], widths[positive], positions[positive]
    patches = patches / energy[:, None, None, None]
    inliers = np.ones(len(patches), dtype=bool)
    if z_max is not None and len(patches) >= 5:
        median = np.median(patches, axis=0)
        distance = np.sqrt(((patches - median) ** 2).sum(axis=(1, 2, 3)))
        distance /= max(float(np.sqrt((median**2).sum())), 1e-30)
        inliers &= np.abs(robust_z(np.log(np.maximum(energy, 1e-30)))) <= z_max
        inliers &= np.abs(robust_z(widths)) <= z_max
        inliers &= robust_z(distance) <= z_max
    rejected["outlier"] += int((~inliers).sum())
    return PatchSet(patches[inliers], (positions + offsets)[inliers],
                    np.zeros(int(inliers.sum()), dtype=np.int64), energy[inliers],
                    widths[inliers], (noise / energy)[inliers], rejected)
