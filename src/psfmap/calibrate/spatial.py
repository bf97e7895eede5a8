"""Space variation of the PSF: thin-plate-spline coefficient maps and their common basis.

For image ``k`` and eigen-PSF ``i``, the coefficients ``c_n`` of the beads at positions
``x_n`` are smoothed by the thin-plate spline (Debarnot, Mangeat & Weiss, IEEE TCI 2021,
eq. 7)

    g = argmin_g  (1/N) Σ_n (c_n − g(x_n))² + λ ∫ (g_xx² + 2 g_xy² + g_yy²) dx,

whose solution is ``g(x) = Σ_n a_n φ(|x − x_n|) + b_0 + b_1 x + b_2 y`` with
``φ(r) = r² log r`` and ``(K + Nλ I) a + P b = c``, ``Pᵀ a = 0``. In three coordinates
(bead z-stacks: ``x = (z, y, x)``) the same penalty, with third derivatives of every pair of
axes, has the kernel ``φ(r) = −r`` and the linear part ``b_0 + b·x`` (Wahba 1990, §2.4;
Duchon 1977); everything below is unchanged. Writing ``P = Q R`` with
``Q = [Q_1 Q_2]``, ``M = Q_2ᵀ K Q_2 = V diag(e) Vᵀ``, ``W = Q_2 V`` and ``μ = Nλ``, the
residual is ``r = c − g(x) = (I − H) c = W diag(μ / (e + μ)) z`` with ``z = Wᵀ c``, and
``(I − H)_nn = Σ_k W_nk² μ / (e_k + μ)``. Refitting without bead ``n`` leaves it the residual
``r_n / (I − H)_nn``, so the exact leave-one-out score

    CV(μ) = (1/N) Σ_n ( r_n / (I − H)_nn )²

costs O(N²) per candidate once ``M`` is diagonalised: λ is chosen on a log grid (Wahba,
*Spline models for observational data*, 1990, §4). Generalised cross-validation replaces
every ``(I − H)_nn`` by their mean; with a few dozen unevenly spread beads that picked λ too
small for some coefficients, whose maps then followed bead-to-bead scatter (30 beads through
a multimode fibre, benchmarks/RESULTS.md), so the exact score is used. The maps are
evaluated on a coarse grid and interpolated bicubically to the image size.

The ``I·K`` coarse maps are then stacked as rows of a matrix whose randomized SVD
(Halko, Martinsson & Tropp, SIAM Review 2011) gives the spatial basis ``v_j``; with ``u_i``
orthonormal the Frobenius norm of the stacked maps is the Hilbert–Schmidt norm of the operator,
so keeping the energy fraction ``ε`` bounds the relative operator error by ``√(1 − ε)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from psfmap._validation import check_positive, check_seed
from psfmap.calibrate._threads import single_thread


def _tps_kernel(distance: np.ndarray, dimension: int = 2) -> np.ndarray:
    """Thin-plate radial kernel: ``r² log r`` in 2-D, ``−r`` in 3-D."""
    if dimension == 3:
        return -distance
    with np.errstate(divide="ignore", invalid="ignore"):
        value = distance**2 * np.log(distance)
    return np.where(distance > 0, value, 0.0)


@dataclass
class ThinPlateSpline:
    """A fitted smoothing thin-plate spline (several value columns share the nodes).

    Coordinates are divided by ``scale`` before evaluation (conditioning).
    """

    nodes: np.ndarray  # (N, 2) or (N, 3) scaled positions
    weights: np.ndarray  # (N, C)
    polynomial: np.ndarray  # (1 + dimension, C)
    scale: float
    smoothing: np.ndarray  # (C,) the λ used for each column
    cv_score: np.ndarray  # (C,) leave-one-out score at that λ

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Values ``(P, C)`` at ``points (P, 2)`` (or ``(P, 3)``) given in pixels."""
        points = np.asarray(points, dtype=np.float64) / self.scale
        out = np.empty((len(points), self.weights.shape[1]))
        chunk = 65536
        for start in range(0, len(points), chunk):
            block = points[start : start + chunk]
            distance = np.sqrt(((block[:, None, :] - self.nodes[None, :, :]) ** 2).sum(-1))
            design = np.column_stack([np.ones(len(block)), block])
            out[start : start + chunk] = (
                _tps_kernel(distance, self.nodes.shape[1]) @ self.weights
                + design @ self.polynomial
            )
        return out


def fit_thin_plate_spline(
    positions: np.ndarray,
    values: np.ndarray,
    *,
    smoothing: float | None = None,
    scale: float = 1.0,
    n_candidates: int = 60,
) -> ThinPlateSpline:
    """Fit a smoothing thin-plate spline to ``values (N,)`` or ``(N, C)`` at ``positions (N, 2)``.

    Parameters
    ----------
    positions : ndarray (N, 2) or (N, 3)
        Node positions in pixels; at least 4 (5 in 3-D) and not all on one line (one plane
        in 3-D).
    values : ndarray (N,) or (N, C)
        Values to smooth (each column gets its own λ).
    smoothing : float, optional
        The λ of eq. 7 (in units of the scaled coordinates); chosen by leave-one-out
        cross-validation when omitted.
    scale : float
        Positions are divided by ``scale`` (use the image size so coordinates are in [0, 1]).
    """
    positions = np.asarray(positions, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    n = len(positions)
    if positions.ndim != 2 or positions.shape[1] not in (2, 3):
        raise ValueError(f"positions must have shape (N, 2) or (N, 3), got {positions.shape}")
    dimension = positions.shape[1]
    if n < dimension + 2:
        raise ValueError(f"a thin-plate spline in {dimension}-D needs at least {dimension + 2} "
                         f"positions, got {n}")
    nodes = positions / scale
    design = np.column_stack([np.ones(n), nodes])
    with single_thread():
        q_t, r_t = torch.linalg.qr(torch.from_numpy(design), mode="complete")
    q, r = q_t.numpy(), r_t.numpy()
    terms = dimension + 1
    if any(abs(r[k, k]) < 1e-8 * max(abs(r[0, 0]), 1e-300) for k in range(1, terms)):
        shape = "are collinear" if dimension == 2 else "are coplanar (lie in one plane)"
        raise ValueError(f"the bead positions {shape}; a smooth map needs beads spread in "
                         f"{dimension}-D")
    q1, q2 = q[:, :terms], q[:, terms:]
    distance = np.sqrt(((nodes[:, None] - nodes[None]) ** 2).sum(-1))
    kernel = _tps_kernel(distance, dimension)
    reduced = q2.T @ kernel @ q2
    with single_thread():
        eigenvalues_t, eigenvectors_t = torch.linalg.eigh(
            torch.from_numpy((reduced + reduced.T) / 2)
        )
    eigenvalues, eigenvectors = eigenvalues_t.numpy(), eigenvectors_t.numpy()
    eigenvalues = np.maximum(eigenvalues, 0.0)
    basis = q2 @ eigenvectors  # W, (N, N - 1 - dimension)
    projected = basis.T @ values  # z, (N - 1 - dimension, C)
    top = max(float(eigenvalues.max()), 1e-12)
    if smoothing is None:
        mus = np.logspace(np.log10(top) - 9, np.log10(top) + 3, n_candidates)
        scores = _leave_one_out(basis, eigenvalues, projected, mus)  # (L, C)
        best = np.argmin(scores, axis=0)
        mu = mus[best]
        cv_score = scores[best, np.arange(values.shape[1])]
    else:
        smoothing = check_positive(smoothing, "smoothing", allow_zero=True)
        mu = np.full(values.shape[1], n * float(smoothing))
        cv_score = _leave_one_out(basis, eigenvalues, projected, mu[:1])[0]
    # a = Q2 V diag(1 / (e + μ)) z, per column
    coefficients = projected / (eigenvalues[:, None] + mu[None, :] + 1e-300 * top)
    weights = q2 @ (eigenvectors @ coefficients)
    fitted_kernel = kernel @ weights
    polynomial = np.linalg.solve(r[:terms, :terms],
                                 q1.T @ (values - fitted_kernel - mu[None] * weights))
    return ThinPlateSpline(nodes, weights, polynomial, float(scale), mu / n, cv_score)


def _leave_one_out(basis: np.ndarray, eigenvalues: np.ndarray, projected: np.ndarray,
                   mus: np.ndarray) -> np.ndarray:
    """Exact leave-one-out scores ``(L, C)`` of every column at every ``μ`` (module
    docstring)."""
    ratio = mus[:, None] / (eigenvalues[None, :] + mus[:, None] + 1e-300)  # (L, N-3)
    residuals = np.einsum("nk,lkc->lnc", basis, ratio[:, :, None] * projected[None])
    leverage = np.einsum("nk,lk->ln", basis**2, ratio)  # diagonal of I - H
    return ((residuals / np.maximum(leverage, 1e-12)[:, :, None]) ** 2).mean(axis=1)


def coarse_grid(image_shape: tuple[int, int], step: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates of a coarse grid spanning pixel centres ``0..H-1, 0..W-1``."""
    height, width = image_shape
    rows = np.linspace(0, height - 1, max(2, min(height, int(np.ceil((height - 1) / step)) + 1)))
    cols = np.linspace(0, width - 1, max(2, min(width, int(np.ceil((width - 1) / step)) + 1)))
    return rows, cols


def coefficient_maps(
    positions: np.ndarray,
    coefficients: np.ndarray,
    grid: tuple[np.ndarray, ...],
    *,
    smoothing: float | None = None,
    scale: float = 1.0,
) -> tuple[np.ndarray, ThinPlateSpline]:
    """Thin-plate-spline maps ``(C, Gr, Gc)`` of coefficient columns on a coarse grid.

    With three grid axes ``(planes, rows, cols)`` and positions ``(N, 3)``, the maps are
    ``(C, Gz, Gr, Gc)``.
    """
    spline = fit_thin_plate_spline(positions, coefficients, smoothing=smoothing, scale=scale)
    mesh = np.meshgrid(*grid, indexing="ij")
    values = spline(np.column_stack([axis.ravel() for axis in mesh]))
    return values.T.reshape((-1,) + tuple(len(axis) for axis in grid)), spline


def upsample(maps, image_shape: tuple[int, int]) -> torch.Tensor:
    """Bicubic interpolation of coarse-grid maps ``(C, Gr, Gc)`` to ``(C, H, W)``.

    The coarse grid's corners sit on the image's corner pixel centres (``align_corners``).
    """
    tensor = maps if isinstance(maps, torch.Tensor) else torch.from_numpy(np.asarray(maps))
    if tuple(tensor.shape[-2:]) == tuple(image_shape):
        return tensor.clone()
    return F.interpolate(
        tensor[None], size=tuple(image_shape), mode="bicubic", align_corners=True
    )[0]


def randomized_svd(
    matrix: np.ndarray,
    rank: int,
    *,
    oversample: int = 10,
    power_iterations: int = 4,
    seed: int | np.random.Generator | None = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truncated SVD ``A ≈ U diag(s) Vᵀ`` by random range finding (Halko et al. 2011, alg. 4.4).

    Returns ``U (m, r)``, ``s (r,)``, ``Vᵀ (r, n)`` with ``r = min(rank, m, n)``.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    m, n = matrix.shape
    rank = int(min(rank, m, n))
    seed = check_seed(seed)
    generator = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    width = min(rank + oversample, m, n)
    with single_thread():
        return _randomized_svd(matrix, rank, width, power_iterations, generator)


def _randomized_svd(matrix, rank, width, power_iterations, generator):
    n = matrix.shape[1]
    tensor = torch.from_numpy(matrix)
    sketch = tensor @ torch.from_numpy(generator.standard_normal((n, width)))
    basis, _ = torch.linalg.qr(sketch)
    for _ in range(power_iterations):
        basis, _ = torch.linalg.qr(tensor.T @ basis)
        basis, _ = torch.linalg.qr(tensor @ basis)
    small = basis.T @ tensor
    u_small, singular, vt = torch.linalg.svd(small, full_matrices=False)
    u = (basis @ u_small)[:, :rank]
    return u.numpy(), singular[:rank].numpy(), vt[:rank].numpy()


@dataclass
class SpatialBasis:
    """Result of :func:`spatial_basis`.

    Attributes
    ----------
    basis : ndarray (J, Gr, Gc)
        Orthonormal (on the coarse grid) spatial basis ``v_j``.
    gammas : ndarray (K, I, J)
        ``γ_kij = <map_ki, v_j>``.
    singular_values : ndarray
        Spectrum of the stacked maps (as far as it was computed).
    explained : ndarray
        Cumulative explained energy of that spectrum.
    """

    basis: np.ndarray
    gammas: np.ndarray
    singular_values: np.ndarray
    explained: np.ndarray


def spatial_basis(
    maps: np.ndarray,
    *,
    rank: int | None = None,
    energy: float = 0.9999,
    max_rank: int = 16,
    seed: int | np.random.Generator | None = 0,
) -> SpatialBasis:
    """Common spatial basis of coefficient maps ``(K, I, Gr, Gc)`` by randomized SVD.

    ``J`` is ``rank`` when given, else the smallest number of components whose energy
    reaches ``energy`` (capped at ``max_rank``).
    """
    maps = np.asarray(maps, dtype=np.float64)
    k, i, gr, gc = maps.shape
    matrix = maps.reshape(k * i, gr * gc)
    if rank is not None:
        if rank < 1:
            raise ValueError(f"spatial_rank must be >= 1, got {rank!r}")
        if rank > min(k * i, gr * gc):
            raise ValueError(
                f"spatial_rank={rank} needs at least {rank} coefficient maps (images × "
                f"eigen-PSFs), got {k * i}"
            )
    computed = min(k * i, gr * gc, max(max_rank, rank or 0) + 4)
    _, singular, vt = randomized_svd(matrix, computed, seed=seed)
    total = float((matrix**2).sum())
    explained = np.cumsum(singular**2) / max(total, 1e-300)
    if rank is None:
        rank = int(np.searchsorted(explained, energy * (1 - 1e-12)) + 1)
        rank = max(1, min(rank, max_rank, len(singular)))
    basis = vt[:rank]
    # sign convention: positive mean
    sign = np.sign(basis.sum(axis=1))
    sign[sign == 0] = 1
    basis = basis * sign[:, None]
    gammas = (matrix @ basis.T).reshape(k, i, rank)
    return SpatialBasis(basis.reshape(rank, gr, gc), gammas, singular, explained)
