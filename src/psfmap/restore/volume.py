"""Richardson–Lucy on volumes, non-circulant in z, y and x, with 3D TV and acceleration.

The same scheme as the 2D solver (:mod:`psfmap.restore.richardson_lucy`) on ``(..., D, H, W)``
stacks with a 3D operator (:mod:`psfmap.operators.volume`): the object lives on the volume
extended by the PSF half-size on each axis, ``A = C ∘ H_ext`` compares only the centre with the
data (Bertero & Boccacci 2005), and the estimate is cropped at the end.

Acceleration (``accelerate=True``) is the vector extrapolation of Biggs & Andrews (1997),
"Acceleration of iterative image restoration algorithms", Appl. Opt. 36:1766: the RL step is
applied at ``u_k = x_k + α_k (x_k − x_{k−1})`` with
``α_k = <g_{k−1}, g_{k−2}> / <g_{k−2}, g_{k−2}>`` clipped to [0, 1), ``g_k = RL(u_k) − u_k``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from psfmap._validation import (
    ArrayKind,
    as_tensor,
    check_finite,
    check_iterations,
    check_positive,
    describe,
    fit_output,
)
from psfmap.restore._domain import (
    DENOMINATOR_FLOOR,
    ROUNDOFF,
    UNOBSERVED,
    check_operator,
    match_operator,
    solver_context,
)
from psfmap.restore.tv import tv_curvature_3d

__all__ = ["as_volume_operator", "is_volume_operator", "richardson_lucy_volume"]

# Biggs–Andrews extrapolation stays below this (α → 1 diverges)
MAX_ALPHA = 0.95


def is_volume_operator(operator: Any) -> bool:
    """Whether ``operator`` acts on volumes (a 3D operator of :mod:`psfmap.operators.volume`)."""
    return getattr(operator, "ndim", None) == 3


def as_volume_operator(operator: Any, volume_shape: tuple[int, int, int],
                       name: str = "operator") -> Any:
    """A 3D operator; a 3D PSF ``(d, h, w)`` -> normalised ``Convolution``; a grid
    ``(gz, gy, gx, d, h, w)`` -> ``from_psf_grid``. A 2D PSF or operator is refused."""
    if isinstance(operator, torch.Tensor) or hasattr(operator, "__array__") \
            and not hasattr(operator, "forward"):
        from psfmap.operators import Convolution, from_psf_grid

        psf = check_finite(as_tensor(operator, name), name)
        if psf.ndim == 3:
            if bool((psf < 0).any()) or not float(psf.sum()) > 0:
                raise ValueError(f"{name} must be a non-negative 3D PSF with a positive sum")
            return Convolution(psf / psf.sum())
        if psf.ndim == 6:
            return from_psf_grid(psf, volume_shape)
        raise ValueError(f"{name} must be a 3D PSF (d, h, w) or a grid of 3D PSFs "
                         f"(gz, gy, gx, d, h, w) to restore a volume, got shape "
                         f"{tuple(psf.shape)}; a 2D PSF restores plane by plane")
    check_operator(operator, name)
    if not is_volume_operator(operator):
        raise ValueError(f"{name} {type(operator).__name__} is a 2D operator; restoring as a "
                         "volume needs a 3D operator (a (d, h, w) PSF or a grid of 3D PSFs)")
    return operator


class _CroppedVolume:
    """``A = C ∘ H_ext``: the operator on the volume extended by ``margins``, output cropped."""

    def __init__(self, operator: Any, shape: tuple[int, int, int],
                 margins: tuple[int, int, int]):
        self.shape, self.margins = shape, margins
        self.operator = operator.extended(margins) if any(margins) else operator
        self.domain = tuple(n + 2 * m for n, m in zip(shape, margins))

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        (d, h, w), (mz, my, mx) = self.shape, self.margins
        return x[..., mz:mz + d, my:my + h, mx:mx + w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.crop(self.operator.forward(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        mz, my, mx = self.margins
        return self.operator.adjoint(torch.nn.functional.pad(y, (mx, mx, my, my, mz, mz)))


def _check_volume(image: Any) -> torch.Tensor:
    y = as_tensor(image, "image")
    if y.ndim < 3:
        raise ValueError(f"image must be a volume (..., D, H, W) for a 3D operator, got shape "
                         f"{tuple(y.shape)}")
    if y.numel() == 0:
        raise ValueError(f"image is empty (shape {tuple(y.shape)}); expected at least one voxel")
    if not y.dtype.is_floating_point:
        y = y.to(torch.get_default_dtype())
    check_finite(y, "image")
    roundoff = ROUNDOFF * float(y.detach().abs().max())
    if bool((y < -roundoff).any()):
        raise ValueError(f"image has negative voxels (minimum {float(y.min()):.4g}); expected a "
                         "non-negative volume (pass the camera offset as background=)")
    return y.clamp(min=0)


def richardson_lucy_volume(
    image: Any,
    operator: Any,
    iterations: int = 20,
    tv: float = 0.0,
    background: float = 0.0,
    *,
    tol: float | None = None,
    tv_epsilon: float = 1e-3,
    extend: bool = True,
    accelerate: bool = False,
    callback: Callable[[int, float], Any] | None = None,
) -> Any:
    r"""Richardson–Lucy (+TV, optionally accelerated) of a volume with a 3D operator.

    .. math::

        x^{k+1} = \frac{x^k}{A^*1\,\max(1 - \lambda\,\operatorname{div}(\nabla x^k /
                  |\nabla x^k|_\varepsilon), 0.1)}\; A^*\!\left(\frac{y}{A x^k + b}\right)

    with ``A = C ∘ H_ext`` (non-circulant in all three axes), the 3D TV term of Dey et al.
    (2006) and, with ``accelerate``, the Biggs–Andrews extrapolation (module docstring).

    Parameters
    ----------
    image : ndarray or Tensor (..., D, H, W)
        Non-negative stack(s); leading axes are independent volumes.
    operator : 3D operator, PSF (d, h, w) or PSF grid (gz, gy, gx, d, h, w)
        ``Convolution`` / ``ProductConvolution`` with 3D kernels, or arrays turned into them.
        Its PSFs may be no deeper than the stack.
    iterations : int
        1 to 100 000.
    tv : float
        3D TV weight ``λ`` (>= 0).
    background : float
        Known additive background ``b`` (>= 0).
    tol : float, optional
        Stop a volume once ``||x^{k+1} − x^k|| / ||x^k|| < tol``.
    tv_epsilon : float
        ``ε`` relative to each volume's maximum.
    extend : bool
        Non-circulant extended domain (default); False restores on the volume only.
    accelerate : bool
        Biggs–Andrews vector extrapolation (typically 2–3× fewer iterations for the same
        error; see ``benchmarks/bench_volume.py``).
    callback : callable, optional
        ``callback(iteration, change)`` after every iteration.

    Returns
    -------
    ndarray or Tensor (..., D, H, W)
        Same kind, floating dtype and device as ``image``.
    """
    kind = ArrayKind(image)
    y = _check_volume(image)
    iterations = check_iterations(iterations)
    tv = check_positive(tv, "tv", allow_zero=True)
    tv_epsilon = check_positive(tv_epsilon, "tv_epsilon")
    background = check_positive(background, "background", allow_zero=True)
    if tol is not None:
        tol = check_positive(tol, "tol", allow_zero=True)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {describe(callback)}")
    shape = tuple(int(n) for n in y.shape[-3:])
    operator = as_volume_operator(operator, shape)
    op_shape = getattr(operator, "image_shape", None)
    if op_shape is not None and tuple(op_shape) != shape:
        raise ValueError(f"operator acts on volumes of shape {tuple(op_shape)}, got a stack of "
                         f"shape {shape}; build the operator for this volume")
    kernel = tuple(operator.kernel_shape)
    if kernel[0] > shape[0]:
        raise ValueError(f"the PSF is {kernel[0]} planes deep, deeper than the stack's "
                         f"{shape[0]} planes; crop the PSF in z to at most {shape[0]} planes")
    if kernel[1] > shape[1] or kernel[2] > shape[2]:
        raise ValueError(f"the PSF of shape {kernel} is wider than the stack {shape}; crop it")
    margins = tuple(k // 2 for k in kernel) if extend else (0, 0, 0)
    operator = match_operator(operator, y.dtype, y.device)
    with solver_context(operator, y):
        system = _CroppedVolume(operator, shape, margins)
        frames = y.reshape((-1,) + shape)
        # per-volume scale to a maximum in [0.5, 1) by a power of two (exact), as in 2D
        exponents = torch.frexp(frames.amax(dim=(-3, -2, -1), keepdim=True)).exponent
        factor = torch.pow(2.0, -exponents.to(torch.float64)).to(y.dtype)
        restored = _iterate(frames * factor, system, iterations, tv, background * factor,
                            tol=tol, tv_epsilon=tv_epsilon, accelerate=accelerate,
                            callback=callback)
        restored = system.crop(restored) / factor
        if not bool(torch.isfinite(restored).all()):
            raise ValueError(f"Richardson–Lucy with operator {operator!r} produced NaN; "
                             "expected an operator with non-negative PSFs")
    restored = restored.reshape(y.shape)
    return kind.restore(fit_output(restored, kind, "the restored volume"))


def _iterate(y, system, iterations, tv, background, *, tol, tv_epsilon, accelerate, callback):
    n = y.shape[0]
    dims = (-3, -2, -1)
    ones = torch.ones(system.shape, dtype=y.dtype, device=y.device)
    normaliser = system.adjoint(ones)
    observed = normaliser > UNOBSERVED * normaliser.max()
    inverse = observed / torch.where(observed, normaliser, torch.ones_like(normaliser))
    total = (normaliser * observed).sum()
    del normaliser
    scale = y.amax(dim=dims, keepdim=True)
    flux = (y - background).clamp(min=0).sum(dim=dims, keepdim=True)
    x = (flux / total) * observed
    floor = torch.clamp(1e-6 * scale, min=torch.finfo(y.dtype).tiny)
    epsilon = torch.clamp(tv_epsilon * scale, min=1e-12)
    active = (flux > 0).reshape(n, 1, 1, 1)
    previous = step_prev = step_old = None  # x_{k-1}, g_{k-1}, g_{k-2}

    def rl_step(u: torch.Tensor) -> torch.Tensor:
        model = system.forward(u)
        if isinstance(background, torch.Tensor) or background != 0:
            model = model + background
        ratio = y / model.clamp_(min=floor)
        weight = inverse
        if tv > 0:
            weight = inverse / torch.clamp(1.0 - tv * tv_curvature_3d(u, epsilon),
                                           min=DENOMINATOR_FLOOR)
        return (system.adjoint(ratio) * u * weight).clamp_(min=0)

    for iteration in range(1, iterations + 1):
        if not bool(active.any()):
            break
        u = x
        if accelerate and step_old is not None:
            alpha = ((step_prev * step_old).sum(dim=dims, keepdim=True)
                     / (step_old * step_old).sum(dim=dims, keepdim=True).clamp(min=1e-300))
            alpha = alpha.clamp(0.0, MAX_ALPHA)
            u = (x + alpha * (x - previous)).clamp(min=0)
        updated = rl_step(u)
        if accelerate:
            step_old, step_prev = step_prev, updated - u
        change = torch.linalg.vector_norm((updated - x).flatten(1), dim=1) / torch.clamp(
            torch.linalg.vector_norm(x.flatten(1), dim=1), min=float(floor.min()))
        change = torch.where(active.flatten(), change, 0.0)
        previous = x
        x = torch.where(active, updated, x) if tol is not None else updated
        if tol is not None:
            active = active & (change > tol).reshape(n, 1, 1, 1)
        if callback is not None:
            callback(iteration, float(change.max()))
    return x
