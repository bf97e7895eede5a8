"""Eigen-PSFs: principal components of the bead patches.

Stacking the N clean patches as rows of ``P ∈ R^{N × hw}``, the truncated SVD
``P ≈ Σ_{i ≤ I} σ_i c_i u_iᵀ`` gives orthonormal eigen-PSFs ``u_i`` and the coefficients
``C = P U`` of every patch (Debarnot, Mangeat & Weiss, IEEE TCI 2021, eq. 5). The SVD is not
centred: the first eigen-PSF is close to the mean PSF, so that every PSF of the field is
``h(y) ≈ Σ_i c_i(y) u_i``.

``I`` is the smallest number of components whose energy ``Σ_{i≤I} σ_i²`` reaches
``energy`` times the signal energy, where the noise energy expected from the per-patch noise
levels is discounted first (a patch of pure noise of standard deviation ``ε`` per pixel has
energy ``hw ε²``); components below the noise floor are never kept. Shot noise is strongest
in the PSF core, so the border noise underestimates it: the floor is the larger of the
Marchenko–Pastur edge ``ε̄ (√N + √hw)`` and 1.5 times the median of the spectrum's plateau
(singular values of rank ``max_components + 1`` to ``2 max_components``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from psfmap.calibrate._threads import single_thread


@dataclass
class EigenPSFs:
    """Result of :func:`eigen_psfs`.

    Attributes
    ----------
    kernels : ndarray (I, h, w) or (I, d, h, w)
        Orthonormal eigen-PSFs ``u_i`` (sign chosen so that each has a positive sum or, if the
        sum vanishes, a positive centre).
    coefficients : ndarray (N, I)
        Coefficients ``c_ni = <p_n, u_i>`` of every patch.
    singular_values : ndarray (min(N, hw),)
        Full spectrum of the patch matrix.
    explained : ndarray
        Cumulative explained energy ``Σ_{i≤k} σ_i² / Σ σ_i²``.
    noise_floor : float
        Singular value expected from noise alone.
    """

    kernels: np.ndarray
    coefficients: np.ndarray
    singular_values: np.ndarray
    explained: np.ndarray
    noise_floor: float

    @property
    def n_components(self) -> int:
        return len(self.kernels)


def choose_rank(
    singular_values: np.ndarray,
    energy: float,
    noise_energy: float = 0.0,
    floor: float = 0.0,
    max_rank: int | None = None,
) -> int:
    """Smallest ``r`` with ``Σ_{i≤r} σ_i² ≥ energy · (Σ σ_i² − noise_energy)``, σ_r > floor."""
    power = np.asarray(singular_values, dtype=np.float64) ** 2
    total = power.sum()
    if total <= 0:
        return 1
    signal = max(total - noise_energy, power[0])
    rank = int(np.searchsorted(np.cumsum(power), energy * signal) + 1)
    above = int((np.asarray(singular_values) > floor).sum())
    rank = min(rank, max(above, 1), len(power))
    if max_rank is not None:
        rank = min(rank, max_rank)
    return max(rank, 1)


def eigen_psfs(
    patches: np.ndarray,
    *,
    n_components: int | None = None,
    energy: float = 0.9995,
    noise: np.ndarray | None = None,
    max_components: int = 12,
) -> EigenPSFs:
    """Eigen-PSFs of a stack of PSF patches by (uncentred) PCA.

    Parameters
    ----------
    patches : ndarray (N, h, w) or (N, d, h, w)
        Clean normalised patches (2-D, or 3-D bead volumes: the SVD is the same on the
        flattened voxels).
    n_components : int, optional
        Number ``I`` of eigen-PSFs; chosen from the spectrum when omitted.
    energy : float in (0, 1]
        Fraction of the signal energy the kept components must explain.
    noise : ndarray (N,), optional
        Per-pixel noise level of every patch (``PatchSet.noise``), used to discount noise
        energy and to set the noise floor.
    max_components : int
        Upper bound on the automatic choice.
    """
    patches = np.asarray(patches, dtype=np.float64)
    if patches.ndim not in (3, 4) or len(patches) == 0:
        raise ValueError(f"patches must have shape (N, h, w) or (N, d, h, w) with N >= 1, got "
                         f"{patches.shape}")
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    n, shape = len(patches), patches.shape[1:]
    size = int(np.prod(shape))
    matrix = patches.reshape(n, size)
    # torch's LAPACK honours torch.set_num_threads (OpenBLAS threads thrash on busy machines)
    with single_thread():
        _, singular_t, vt_t = torch.linalg.svd(torch.from_numpy(matrix), full_matrices=False)
    singular, vt = singular_t.numpy(), vt_t.numpy()
    noise_energy = 0.0
    floor = 0.0
    if noise is not None and len(noise) == n:
        noise = np.asarray(noise, dtype=np.float64)
        noise_energy = float((noise**2).sum() * size)
        floor = float(np.sqrt(np.mean(noise**2)) * (np.sqrt(n) + np.sqrt(size)))
    plateau = singular[max_components : 2 * max_components]
    if len(plateau) >= max(3, max_components // 2):
        floor = max(floor, 1.5 * float(np.median(plateau)))
    if n_components is None:
        rank = choose_rank(singular, energy, noise_energy, floor, max_components)
    else:
        rank = int(n_components)
        if rank < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components!r}")
        if rank > min(n, size):
            raise ValueError(
                f"n_components={rank} eigen-PSFs need at least {rank} clean bead patches, "
                f"got {n}"
            )
    kernels = vt[:rank].copy()
    sums = kernels.sum(axis=1)
    centre = kernels[:, int(np.ravel_multi_index(tuple(k // 2 for k in shape), shape))]
    sign = np.where(np.abs(sums) > 1e-6, np.sign(sums), np.sign(centre))
    sign[sign == 0] = 1
    kernels *= sign[:, None]
    coefficients = matrix @ kernels.T
    power = singular**2
    explained = np.cumsum(power) / max(power.sum(), 1e-300)
    return EigenPSFs(kernels.reshape((rank,) + shape), coefficients, singular, explained, floor)
