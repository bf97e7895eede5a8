"""Sparse + smooth restoration: point sources on a smooth background (FISTA).

Debarnot, Mangeat & Weiss, "Learning low-dimensional models of microscopes",
IEEE Trans. Comput. Imaging 7 (2021), eq. 13.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from psfmap._validation import (
    ArrayKind,
    as_tensor,
    check_finite,
    check_positive,
    describe,
    fit_output,
)
from psfmap.restore._domain import (
    CroppedOperator,
    check_compatible,
    check_operator,
    match_operator,
    solver_context,
)
from psfmap.restore.richardson_lucy import _check_image, _check_iterations
from psfmap.restore.tv import divergence, gradient

# ||Δ||^2 <= 64 for the 5-point Neumann Laplacian (eigenvalues in [-8, 0])
LAPLACIAN_NORM_SQUARED = 64.0


@dataclass
class SparseSmoothResult:
    """Result of :func:`sparse_smooth` (arrays of the input's kind, shape and dtype).

    Attributes
    ----------
    smooth : the smooth component ``f1`` (background, autofluorescence).
    sparse : the sparse component ``f2`` (spikes: beads, point sources).
    restored : ``f1 + f2``.
    objective : final value of the objective (per frame, in the input's intensity units²).
    iterations : number of FISTA iterations run.
    step : gradient step ``1 / L2`` of the sparse component (image normalised to maximum 1).
    """

    smooth: Any
    sparse: Any
    restored: Any
    objective: np.ndarray
    iterations: int
    step: float


def laplacian(image: torch.Tensor) -> torch.Tensor:
    """5-point Laplacian, Neumann boundary: ``Δ = div ∘ grad`` (self-adjoint, ``||Δ|| <= 8``)."""
    return divergence(gradient(image))


def sparse_smooth(
    image: Any,
    operator: Any,
    smooth: float = 100.0,
    sparse: float = 0.05,
    iterations: int = 200,
    *,
    extend: bool = True,
    callback: Callable[[int], Any] | None = None,
    intensity_scale: float | None = None,
) -> SparseSmoothResult:
    r"""Split an image into a smooth background and sparse spikes, deconvolving both.

    Solves (Debarnot, Mangeat & Weiss 2021, eq. 13)

    .. math::

        \min_{f_1, f_2 \ge 0}\; \tfrac12 \|H(f_1 + f_2) - g\|_2^2
        + \tfrac{\lambda_1}{2} \|\Delta f_1\|_2^2 + \lambda_2 \|f_2\|_1

    by accelerated proximal gradient (FISTA, Beck & Teboulle 2009) in the block-diagonal metric
    ``diag(L1, L2)`` with ``L2 = 2 ||H||^2`` and ``L1 = 2 ||H||^2 + λ1 ||Δ||^2``, which majorises
    the Hessian ``[[H*H + λ1 Δ², H*H], [H*H, H*H]]`` (``||H||^2`` from a power iteration on the
    operator, +5 % margin; ``||Δ||^2 <= 64``): the spikes take the data term's step ``1 / L2``
    instead of the much smaller step of the stiff smoothness term. The proximal steps are
    ``max(f1 - ∇_1 / L1, 0)`` and the non-negative soft threshold
    ``max(f2 - (∇_2 + λ2) / L2, 0)``. Each frame is normalised to maximum 1 first, so ``sparse``
    is relative to the image's maximum and ``smooth`` is dimensionless. Like
    :func:`richardson_lucy`, the unknowns live on the domain extended by the PSF half-width.
    The L1 penalty shrinks the spikes somewhat (the usual L1 bias on amplitudes).

    Parameters
    ----------
    image : ndarray or Tensor (..., H, W)
        Non-negative image; leading axes are frames solved together.
    operator : linear operator with ``forward`` / ``adjoint``
    smooth : float
        ``λ1`` (>= 0), the weight of the curvature penalty on the background.
    sparse : float
        ``λ2`` (>= 0), the L1 weight on the spikes, relative to the image maximum.
    iterations : int
        FISTA iterations (>= 1).
    extend : bool
        Use the non-circulant extended domain (default).
    callback : callable, optional
        ``callback(iteration)`` after every iteration.
    intensity_scale : float, optional
        The intensity the frames are normalised by (default: each frame's maximum), so
        that ``sparse`` is relative to it. Restoring a large image piece by piece, pass the
        whole image's maximum (``psfmap.deconvolve(tile=...)`` does).

    The result is computed in the image's floating dtype on the normalised frames, so any
    finite image gives a finite result: values beyond the largest value of the returned
    dtype (peaks sharpened above an image near float32's maximum) are clipped to it with a
    ``RuntimeWarning``, and the objective is reported in float64.

    Returns
    -------
    SparseSmoothResult
        ``.smooth``, ``.sparse``, ``.restored`` (same kind, shape, dtype as ``image``),
        ``.objective``, ``.iterations``, ``.step``. :func:`spike_centroids` locates the spikes.
    """
    kind = ArrayKind(image)
    g = _check_image(image)
    iterations = _check_iterations(iterations)
    smooth = check_positive(smooth, "smooth", allow_zero=True)
    sparse = check_positive(sparse, "sparse", allow_zero=True)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {describe(callback)}")
    if intensity_scale is not None:
        intensity_scale = check_positive(intensity_scale, "intensity_scale")
    check_operator(operator)
    image_shape = tuple(g.shape[-2:])
    margin = check_compatible(operator, image_shape)
    operator = match_operator(operator, g.dtype, g.device)

    with solver_context(operator, g):
        system = CroppedOperator(operator, image_shape, margin if extend else 0)
        lead = g.shape[:-2]
        frames = g.reshape(-1, *image_shape)
        scale = frames.amax(dim=(-2, -1), keepdim=True)
        if intensity_scale is not None:
            # in float64: the scale of a float32 image may be subnormal or near its maximum
            scale = torch.full(scale.shape, intensity_scale, dtype=torch.float64,
                               device=scale.device)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        # (in float64, so that the normalised frames of a subnormal image keep their digits)
        normalised = (frames.double() / scale.double()).to(frames.dtype)
        data_lipschitz = 2.0 * 1.05 * system.norm_squared()
        step_smooth = 1.0 / (data_lipschitz + smooth * LAPLACIAN_NORM_SQUARED)
        step = 1.0 / data_lipschitz
        f1, f2 = _fista(
            normalised, system, smooth, sparse, (step_smooth, step), iterations, callback
        )
        residual = system.forward(f1 + f2) - normalised
        # in float64: the squared scale of an image near float32's maximum overflows float32
        objective = (
            0.5 * residual.square().sum(dim=(-2, -1))
            + 0.5 * smooth * laplacian(f1).square().sum(dim=(-2, -1))
            + sparse * f2.sum(dim=(-2, -1))
        ).double() * scale.double().flatten() ** 2
        # back to the image's intensities in float64, then clipped to the returned dtype
        f1 = (system.crop(f1).double() * scale.double()).reshape(*lead, *image_shape)
        f2 = (system.crop(f2).double() * scale.double()).reshape(*lead, *image_shape)
        total = fit_output(f1 + f2, kind, "the restored image", g.dtype)
        f1 = fit_output(f1, kind, "the smooth component", g.dtype)
        f2 = fit_output(f2, kind, "the sparse component", g.dtype)
    return SparseSmoothResult(
        smooth=kind.restore(f1),
        sparse=kind.restore(f2),
        restored=kind.restore(total),
        objective=objective.detach().cpu().numpy().astype(np.float64).reshape(lead),
        iterations=iterations,
        step=float(step),
    )


def _fista(
    g: torch.Tensor,
    system: CroppedOperator,
    smooth: float,
    sparse: float,
    steps: tuple[float, float],
    iterations: int,
    callback: Callable[[int], Any] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FISTA on frames g (B, H, W) normalised to max 1; unknowns on the extended domain."""
    step1, step2 = steps
    domain = (g.shape[0], *system.domain_shape)
    level = g.mean(dim=(-2, -1), keepdim=True)
    f1 = level.expand(domain).clone()
    f2 = torch.zeros(domain, dtype=g.dtype, device=g.device)
    y1, y2 = f1, f2
    t = 1.0
    for iteration in range(1, iterations + 1):
        residual = system.adjoint(system.forward(y1 + y2) - g)
        grad1 = residual + smooth * laplacian(laplacian(y1)) if smooth > 0 else residual
        new1 = torch.clamp(y1 - step1 * grad1, min=0)
        new2 = torch.clamp(y2 - step2 * (residual + sparse), min=0)
        t_next = 0.5 * (1.0 + (1.0 + 4.0 * t * t) ** 0.5)
        momentum = (t - 1.0) / t_next
        y1 = new1 + momentum * (new1 - f1)
        y2 = new2 + momentum * (new2 - f2)
        f1, f2, t = new1, new2, t_next
        if callback is not None:
            callback(iteration)
    return f1, f2


def spike_centroids(
    sparse: Any,
    threshold: float = 0.05,
    *,
    min_separation: int = 1,
) -> np.ndarray:
    """Sub-pixel positions of the spikes of a sparse map (e.g. ``sparse_smooth(...).sparse``).

    Pixels above ``threshold × max`` are grouped into 8-connected blobs (after a dilation of
    ``min_separation - 1`` px, which merges fragments of one spike); each blob's position is its
    intensity-weighted centroid ``c = Σ p f(p) / Σ f(p)``, over the blob's pixels.

    Parameters
    ----------
    sparse : ndarray or Tensor (H, W)
        Non-negative sparse component.
    threshold : float
        Fraction of the maximum (0 < threshold < 1) below which pixels are ignored.
    min_separation : int
        Spikes closer than this (px) are merged (>= 1).

    Returns
    -------
    ndarray (N, 2) float64
        ``(row, column)`` of each spike, brightest first. Empty (0, 2) when the map is zero.
    """
    values = as_tensor(sparse, "sparse", dtype=torch.float64).detach().cpu().numpy()
    if values.ndim != 2:
        raise ValueError(f"sparse must have shape (H, W), got shape {values.shape}")
    check_finite(torch.from_numpy(values), "sparse")
    threshold = check_positive(threshold, "threshold")
    if threshold >= 1:
        raise ValueError(f"threshold must be a fraction of the maximum in (0, 1), got {threshold}")
    integer = not isinstance(min_separation, bool) and int(min_separation) == min_separation
    if not integer or min_separation < 1:
        raise ValueError(f"min_separation must be an integer >= 1, got {min_separation!r}")
    values = np.clip(values, 0, None)
    peak = values.max()
    if peak <= 0:
        return np.zeros((0, 2))
    from scipy import ndimage  # here, not at import: every command would pay 0.2-0.5 s for it

    mask = values > threshold * peak
    grouping = mask
    if min_separation > 1:
        grouping = ndimage.binary_dilation(mask, iterations=int(min_separation) - 1)
    labels, count = ndimage.label(grouping, structure=np.ones((3, 3)))
    labels = labels * mask
    index = np.arange(1, count + 1)
    centroids = np.asarray(ndimage.center_of_mass(values, labels, index), dtype=np.float64)
    totals = np.asarray(ndimage.sum(values, labels, index))
    order = np.argsort(-totals, kind="stable")
    return centroids.reshape(-1, 2)[order]
