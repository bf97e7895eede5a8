r"""The Richardson–Lucy iteration loop shared by the 2-D and the 3-D solvers.

One N-D loop (:func:`rl_iterate`) runs the multiplicative update on frames ``(B, *shape)``
(``shape`` of two axes for images, three for volumes) with any system ``A = C ∘ H_ext``
(:class:`psfmap.restore._domain.CroppedOperator` in 2-D, the volume's counterpart in 3-D):

.. math::

    x^{k+1} = \frac{x^k}{A^*1\,\max(1 - \lambda\,\operatorname{div}(\nabla x^k /
              |\nabla x^k|_\varepsilon), 0.1)}\; A^*\!\left(\frac{y}{\max(A x^k + b,\,
              f)}\right),

with the TV term of Dey et al. (2006) over the frame's axes, the floor ``f`` = ``1e-6`` of the
frame's intensity scale (and, for a compressed operator, ``COMPRESSED_FLOOR · y``), a per-frame
``tol`` and, optionally, the vector extrapolation of Biggs & Andrews (1997), "Acceleration of
iterative image restoration algorithms", Appl. Opt. 36:1766: the update is applied at

.. math::

    u_k = x_k + \alpha_k (x_k - x_{k-1}), \qquad
    \alpha_k = \frac{\langle g_{k-1}, g_{k-2}\rangle}{\langle g_{k-2}, g_{k-2}\rangle}
    \in [0, 0.95], \qquad g_k = \mathrm{RL}(u_k) - u_k,

clipped to ``u_k >= 0``. Each accelerated iteration costs one forward and one adjoint, as a
plain one; it keeps three more frames in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from psfmap.restore._domain import DENOMINATOR_FLOOR, DIVERGED, UNOBSERVED
from psfmap.restore.tv import tv_curvature, tv_curvature_3d

# with a compressed operator (eigen-PSFs with negative lobes) H x can fall far below y where x
# is uneven, and y / H x then feeds back into ever larger estimates (the fly wing's 31 x 31 map
# at rank 3 reached 1e6 in 10 iterations): H x is kept >= this fraction of y, so that no
# ratio exceeds 1 / COMPRESSED_FLOOR
COMPRESSED_FLOOR = 0.1
# Biggs–Andrews extrapolation stays below this (α → 1 diverges)
MAX_ALPHA = 0.95


def rl_iterate(
    y: torch.Tensor,
    system: Any,
    iterations: int,
    tv: float,
    background: torch.Tensor | float,
    *,
    image_shape: tuple[int, ...],
    tol: float | None,
    tv_epsilon: float,
    callback: Callable[[int, float], Any] | None,
    intensity_scale: torch.Tensor | None = None,
    relative_floor: float = 0.0,
    accelerate: bool = False,
    operator_name: str = "operator",
) -> torch.Tensor:
    """RL(-TV) iterations on frames ``y`` (B, *image_shape); the estimate on the extended domain.

    Parameters
    ----------
    y : Tensor (B, *image_shape)
        Non-negative frames (already scaled to a maximum in [0.5, 1) by the caller).
    system : operator
        ``forward`` (extended domain -> image domain) and ``adjoint`` (back).
    iterations, tv, tol, tv_epsilon, callback
        As :func:`psfmap.restore.richardson_lucy`.
    background : Tensor broadcastable to ``y``, or float
        Known additive background (scaled like ``y``).
    image_shape : tuple of 2 or 3 ints
        The frame's axes: 2 for images, 3 for volumes (TV over as many axes).
    intensity_scale : Tensor (B, 1, ...), optional
        Replaces each frame's maximum as the intensity that ``tv_epsilon`` and the floor of
        ``H x + b`` are relative to.
    relative_floor : float
        > 0 keeps ``H x + b`` at least that fraction of ``y`` (``COMPRESSED_FLOOR``).
    accelerate : bool
        Biggs–Andrews vector extrapolation (module docstring).
    operator_name : str
        How the error of a diverged run names the operator.

    Returns
    -------
    Tensor (B, *extended shape)
    """
    ndim = len(image_shape)
    if ndim not in (2, 3):
        raise ValueError(f"image_shape must have 2 or 3 axes, got {image_shape!r}")
    dims = tuple(range(-ndim, 0))
    unit = (1,) * ndim
    curvature = tv_curvature if ndim == 2 else tv_curvature_3d
    n_frames = y.shape[0]
    ones = torch.ones(tuple(image_shape), dtype=y.dtype, device=y.device)
    normaliser = system.adjoint(ones)  # A*1 on the extended domain
    # each pixel's PSF mass on the extended domain: a pixel is observed when more than
    # UNOBSERVED of it lands in the field (a local test: a tile decides as the whole image)
    reach = system.operator.adjoint(torch.ones_like(normaliser)).clamp_(min=0)
    observed = (normaliser > UNOBSERVED * reach) & (normaliser > 1e-6 * normaliser.max())
    del reach
    normaliser = torch.where(observed, normaliser, torch.ones_like(normaliser))
    inverse_normaliser = observed / normaliser  # 0 where nothing is observed
    total_weight = (normaliser * observed).sum()
    del normaliser, ones  # only 1 / A*1 is needed from here on

    scale = y.amax(dim=dims, keepdim=True)  # per frame
    if intensity_scale is not None:
        scale = intensity_scale.to(scale).expand_as(scale)
    flux = (y - background).clamp(min=0).sum(dim=dims, keepdim=True)
    x = (flux / total_weight) * observed  # constant start with the data's flux
    del observed
    floor = torch.clamp(1e-6 * scale, min=torch.finfo(y.dtype).tiny)
    epsilon = torch.clamp(tv_epsilon * scale, min=1e-12)
    active = (flux > 0).reshape(n_frames, *unit)  # all-zero frames stay zero
    track = tol is not None or callback is not None
    has_background = bool((torch.as_tensor(background) != 0).any())
    in_place = not torch.is_grad_enabled()  # no autograd graph: reuse buffers
    tiny = torch.finfo(y.dtype).tiny
    previous = step_prev = step_old = None  # x_{k-1}, g_{k-1}, g_{k-2} (acceleration)

    for iteration in range(1, iterations + 1):
        if not bool(active.any()):
            break
        u = x
        if accelerate and step_old is not None:
            numerator = (step_prev * step_old).sum(dim=dims, keepdim=True)
            denominator = (step_old * step_old).sum(dim=dims, keepdim=True)
            alpha = torch.where(denominator > tiny, numerator / denominator.clamp(min=tiny),
                                torch.zeros_like(numerator))
            alpha = torch.nan_to_num(alpha, nan=0.0).clamp_(0.0, MAX_ALPHA)
            u = (x + alpha * (x - previous)).clamp_(min=0)
        model = system.forward(u)
        own = in_place and _owned(model, u, y)
        if has_background:
            model = model.add_(background) if own else model + background
            own = in_place
        model = model.clamp_(min=floor) if own else model.clamp(min=floor)
        if relative_floor > 0:
            model = torch.maximum(model, relative_floor * y)
        ratio = torch.div(y, model, out=model) if own else y / model
        correction = system.adjoint(ratio)
        del model, ratio
        if tv > 0:
            # A*1 (1 - λ div(∇u/|∇u|_ε)) kept >= 0.1 A*1: the Dey et al. denominator where the
            # PSF sums to 1, and a TV term in proportion to the data term near the edge of the
            # extended domain, where A*1 -> 0 (there an unscaled λ div would dominate and the
            # update oscillate)
            factor = torch.clamp(1.0 - tv * curvature(u, epsilon), min=DENOMINATOR_FLOOR)
            weight = inverse_normaliser / factor
            del factor
        else:
            weight = inverse_normaliser
        if in_place and _owned(correction, u, y):
            updated = correction.mul_(u).mul_(weight).clamp_(min=0)
        else:
            updated = (correction * u * weight).clamp(min=0)
        del correction, weight
        if accelerate:
            step_old, step_prev = step_prev, updated - u
        del u
        change = float("nan")
        relative = None
        if track:
            step = torch.linalg.vector_norm((updated - x).flatten(1), dim=1)
            size = torch.linalg.vector_norm(x.flatten(1), dim=1)
            relative = torch.where(size > 0, step / torch.clamp(size, min=floor.flatten()), 0.0)
            relative = torch.where(active.flatten(), relative, 0.0)
            change = float(relative.max())
        if accelerate:
            previous = x
        if tol is not None:
            x = torch.where(active, updated, x)
            active = active & (relative > tol).reshape(n_frames, *unit)
        else:
            x = updated
        del updated
        if callback is not None:
            callback(iteration, change)
    _check_flux(x, inverse_normaliser, flux, dims, operator_name)
    return x


def _check_flux(x: torch.Tensor, inverse_normaliser: torch.Tensor, flux: torch.Tensor,
                dims: tuple[int, ...], operator_name: str) -> None:
    """Refuse a diverged (or collapsed) run: RL keeps ``sum(A x) = sum(x A*1)`` near the data's
    flux, so a frame whose model flux is off by more than ``DIVERGED`` times (or not finite)
    went wrong: never returned, whatever the operator."""
    with torch.no_grad():
        seen = inverse_normaliser > 0
        model_flux = torch.where(seen, x / torch.where(seen, inverse_normaliser, 1.0), 0.0)
        model_flux = model_flux.sum(dim=dims, keepdim=True)
        ratio = (model_flux / flux.clamp(min=torch.finfo(flux.dtype).tiny)).flatten()
        lit = (flux > 0).flatten()
        bad = lit & ~((ratio >= 1 / DIVERGED) & (ratio <= DIVERGED))
    if bool(bad.any()):
        frame = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"Richardson–Lucy with {operator_name} diverged: frame {frame}'s estimate holds "
            f"{float(ratio[frame]):.3g} times the light of the data; expected an operator that "
            "maps non-negative images to non-negative ones (look for negative lobes in its PSFs)"
        )


def _owned(result: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether ``result`` shares no memory with ``others`` (safe to overwrite in place)."""
    pointer = result.untyped_storage().data_ptr()
    return all(pointer != other.untyped_storage().data_ptr() for other in others)
