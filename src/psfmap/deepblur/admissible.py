r"""Admissible sets of blur coefficients and how to spread training operators over them.

Deep-Blur (Debarnot & Weiss, "Deep-Blur: blind identification and deblurring with convolutional
neural networks", Biological Imaging 2024) trains its networks on operators ``A(γ)`` with
``γ`` in a convex set ``C``: the convex hull of calibrated coefficients, or a box. Random
points of ``C`` cluster (uniform Dirichlet weights on the vertices crowd the centre of the
hull), so the training operators are instead spread by approximately solving the
*MaxiSumMin* problem

.. math::

    \max_{δ_1, …, δ_L ∈ C} \; \sum_{l=1}^{L} \min_{l' ≠ l} \|δ_l − δ_{l'}\|_2 ,

by projected sub-gradient ascent. Each point is written ``δ_l = Σ_v α_{lv} V_v`` with
barycentric weights ``α_l`` on the probability simplex, so that every iterate is in the hull
by construction; the sub-gradient of the sum of nearest-neighbour distances,
``∂/∂δ_l = (δ_l − δ_{n(l)}) / ‖δ_l − δ_{n(l)}‖ + Σ_{m: n(m) = l} (δ_l − δ_m) / ‖δ_m − δ_l‖``,
is pulled back to ``α`` (``g_α = g_δ Vᵀ``), a step of decreasing size is taken and ``α`` is
projected back onto the simplex (Duchi, Shalev-Shwartz, Singer & Chandra, ICML 2008). The
best iterate is returned. The box variant steps in the box and clips.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from psfmap._validation import check_int, check_seed, describe

__all__ = [
    "dirichlet_points",
    "hull_distance",
    "nearest_neighbour_sum",
    "project_simplex",
    "sample_box",
    "sample_convex",
]

# nearest neighbours are searched in blocks of this many rows (memory: block × n floats)
_BLOCK = 2048


def _points(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        array = value.detach().cpu().double()
    elif isinstance(value, (np.ndarray, list, tuple)):
        array = torch.as_tensor(np.asarray(value, dtype=np.float64))
    else:
        raise TypeError(f"{name} must be an array (V, P), got {describe(value)}")
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{name} must have shape (V, P) with V, P >= 1, got {tuple(array.shape)}")
    if not bool(torch.isfinite(array).all()):
        raise ValueError(f"{name} contains NaN or infinite values; expected finite numbers")
    return array


def _generator(seed: Any) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    seed = check_seed(seed, draw=True)
    generator = torch.Generator()
    generator.manual_seed(int(torch.seed() % 2**62) if seed is None else int(seed))
    return generator


def project_simplex(weights: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``weights (n, V)`` onto the probability simplex.

    Sort-based algorithm of Duchi et al. (ICML 2008): ``α = max(w − θ, 0)`` with the ``θ``
    that makes the row sum to 1.
    """
    sorted_w, _ = torch.sort(weights, dim=1, descending=True)
    cumulative = torch.cumsum(sorted_w, dim=1) - 1
    index = torch.arange(1, weights.shape[1] + 1, dtype=weights.dtype, device=weights.device)
    condition = sorted_w - cumulative / index > 0
    rho = condition.to(torch.int64).cumsum(1).argmax(1, keepdim=True)  # last True
    theta = cumulative.gather(1, rho) / (rho + 1).to(weights.dtype)
    return (weights - theta).clamp_min(0)


def _nearest(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to, and index of, each point's nearest other point (blocked, exact)."""
    n = points.shape[0]
    squared = (points**2).sum(1)
    distances = torch.empty(n, dtype=points.dtype)
    indices = torch.empty(n, dtype=torch.int64)
    for start in range(0, n, _BLOCK):
        block = points[start : start + _BLOCK]
        d2 = squared[start : start + _BLOCK, None] + squared[None, :] - 2 * block @ points.T
        rows = torch.arange(block.shape[0])
        d2[rows, rows + start] = math.inf
        value, index = d2.min(1)
        distances[start : start + _BLOCK] = value.clamp_min(0).sqrt()
        indices[start : start + _BLOCK] = index
    return distances, indices


def nearest_neighbour_sum(points: Any) -> float:
    """``Σ_l min_{l' ≠ l} ‖δ_l − δ_{l'}‖``, the MaxiSumMin objective, of ``points (L, P)``."""
    array = _points(points, "points")
    if array.shape[0] < 2:
        raise ValueError(f"points must hold at least 2 points, got {array.shape[0]}")
    distances, _ = _nearest(array)
    return float(distances.sum())


def dirichlet_points(vertices: Any, n: int, *, seed: Any = None) -> np.ndarray:
    """``n`` random points of the hull: uniform Dirichlet weights on the vertices (baseline)."""
    corners = _points(vertices, "vertices")
    n = check_int(n, "n", minimum=1)
    generator = _generator(seed)
    weights = -torch.log(torch.rand(n, corners.shape[0], generator=generator,
                                    dtype=torch.float64).clamp_min(1e-300))
    weights = weights / weights.sum(1, keepdim=True)
    return (weights @ corners).numpy()


def _subgradient(points: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Sub-gradient of the nearest-neighbour sum with respect to every point, and the sum."""
    distances, nearest = _nearest(points)
    direction = (points - points[nearest]) / distances.clamp_min(1e-12)[:, None]
    gradient = direction.clone()
    # each point is also the nearest neighbour of others: they push it away too
    gradient.index_add_(0, nearest, -direction)
    return gradient, float(distances.sum())


def sample_convex(
    vertices: Any,
    n: int,
    seed: Any = None,
    *,
    iterations: int | None = None,
    step: float = 0.5,
    time_limit: float | None = None,
) -> np.ndarray:
    r"""``n`` points of the convex hull of ``vertices`` spread by MaxiSumMin.

    Projected sub-gradient ascent of ``Σ_l min_{l'≠l} ‖δ_l − δ_{l'}‖`` on barycentric weights
    (module docstring): every point is ``αᵀ V`` with ``α`` on the simplex, so it lies in the
    hull up to rounding (~1e-15 relative). Starting from uniform Dirichlet weights, the step on
    iteration ``k`` moves a point by about ``step · d̄ / √(k + 1)``, ``d̄`` the current mean
    nearest-neighbour distance; the best iterate is returned.

    Parameters
    ----------
    vertices : array (V, P)
        Points whose convex hull is the admissible set (e.g. calibrated coefficients ``Γ_k``
        flattened, or the corners of a simplex).
    n : int
        Number L of points wanted (>= 2).
    seed : int, Generator or None
        Seed of the initial Dirichlet draw (replayable).
    iterations : int, optional
        Ascent steps (default: 150 for n <= 2000, 30 above).
    step : float
        Relative step size (> 0).
    time_limit : float, optional
        Stop after this many seconds (the best iterate so far is returned).

    Returns
    -------
    ndarray (n, P), float64

    Examples
    --------
    >>> corners = np.eye(3)
    >>> spread = sample_convex(corners, 200, seed=0)
    >>> nearest_neighbour_sum(spread) > 1.6 * nearest_neighbour_sum(
    ...     dirichlet_points(corners, 200, seed=0))
    True
    """
    corners = _points(vertices, "vertices")
    n = check_int(n, "n", minimum=2)
    if not step > 0 or not math.isfinite(step):
        raise ValueError(f"step must be a finite number > 0, got {step!r}")
    iterations = (150 if n <= 2000 else 30) if iterations is None else \
        check_int(iterations, "iterations", minimum=0)
    generator = _generator(seed)
    weights = -torch.log(torch.rand(n, corners.shape[0], generator=generator,
                                    dtype=torch.float64).clamp_min(1e-300))
    weights = weights / weights.sum(1, keepdim=True)
    if corners.shape[0] == 1:
        return corners.expand(n, -1).numpy().copy()
    # the hull's geometry: α ↦ αᵀV moves by at most ‖V_c‖₂ per unit of α (centred vertices,
    # as α stays on the simplex); scale the α step with it
    centred = corners - corners.mean(0)
    spectral = float(torch.linalg.matrix_norm(centred, ord=2)) ** 2
    if spectral == 0.0:  # all vertices equal
        return corners[:1].expand(n, -1).numpy().copy()
    # large problems: nearest neighbours in float32 (the search dominates the cost)
    work = torch.float32 if n * corners.shape[1] > 2_000_000 else torch.float64
    best, best_value = weights.clone(), -math.inf
    started = time.perf_counter()
    for k in range(iterations + 1):
        points = weights @ corners
        gradient, value = _subgradient(points.to(work))
        if value > best_value:
            best, best_value = weights.clone(), value
        if k == iterations or (time_limit is not None
                               and time.perf_counter() - started > time_limit):
            break
        mean_distance = value / n
        gradient_weights = gradient.double() @ centred.T
        weights = project_simplex(
            weights + step * mean_distance * spectral**-0.5 / math.sqrt(k + 1)
            * gradient_weights
        )
    return (best @ corners).numpy()


def sample_box(
    low: Any,
    high: Any,
    n: int,
    seed: Any = None,
    *,
    iterations: int | None = None,
    step: float = 0.5,
) -> np.ndarray:
    """``n`` points of the box ``[low, high]`` spread by MaxiSumMin (ascent, then clipping).

    The box analogue of :func:`sample_convex` (the projection is a clip); the coordinates are
    scaled to the unit cube so that every parameter counts alike. Degenerate sides
    (``low == high``) stay constant.
    """
    low_t = torch.as_tensor(np.asarray(low, dtype=np.float64)).reshape(-1)
    high_t = torch.as_tensor(np.asarray(high, dtype=np.float64)).reshape(-1)
    if low_t.shape != high_t.shape or not bool(torch.isfinite(low_t).all() &
                                               torch.isfinite(high_t).all()):
        raise ValueError(f"low and high must be finite vectors of one length, got {low!r} "
                         f"and {high!r}")
    if bool((high_t < low_t).any()):
        raise ValueError(f"high must be >= low, got low={low!r}, high={high!r}")
    n = check_int(n, "n", minimum=2)
    iterations = (150 if n <= 2000 else 30) if iterations is None else \
        check_int(iterations, "iterations", minimum=0)
    generator = _generator(seed)
    unit = torch.rand(n, low_t.numel(), generator=generator, dtype=torch.float64)
    span = high_t - low_t
    active = span > 0
    best, best_value = unit.clone(), -math.inf
    for k in range(iterations + 1):
        gradient, value = _subgradient(unit[:, active])
        if value > best_value:
            best, best_value = unit.clone(), value
        if k == iterations:
            break
        unit[:, active] = (unit[:, active]
                           + step * value / n / math.sqrt(k + 1) * gradient).clamp(0, 1)
    return (low_t + best * span).numpy()


def hull_distance(points: Any, vertices: Any) -> np.ndarray:
    """Euclidean distance of each of ``points (n, P)`` to the hull of ``vertices (V, P)``.

    Solved as a non-negative least squares with the sum-to-one constraint as a heavily
    weighted extra row (Lawson–Hanson, ``scipy.optimize.nnls``), the weights then rescaled
    onto the simplex: an upper bound of the distance, exact to ~1e-9 for points inside.
    """
    from scipy.optimize import nnls

    corners = _points(vertices, "vertices").numpy()
    queries = _points(points, "points").numpy()
    if queries.shape[1] != corners.shape[1]:
        raise ValueError(f"points have {queries.shape[1]} coordinates, vertices "
                         f"{corners.shape[1]}; expected the same P")
    scale = max(float(np.abs(corners).max()), 1e-12)
    penalty = 1e4
    matrix = np.vstack([corners.T / scale, penalty * np.ones((1, corners.shape[0]))])
    out = np.empty(len(queries))
    for index, point in enumerate(queries):
        alpha, _ = nnls(matrix, np.concatenate([point / scale, [penalty]]),
                        maxiter=50 * len(corners))
        alpha = alpha / max(alpha.sum(), 1e-300)  # exactly on the simplex
        out[index] = float(np.linalg.norm(alpha @ corners - point))
    return out
