"""Discrete gradient, divergence and the total-variation term of TV-regularised Richardson–Lucy.

The gradient uses forward differences with a Neumann boundary (the difference across the last
row or column is zero); the divergence is minus its adjoint (backward differences), so that
``<grad x, p> = -<x, div p>`` holds exactly. This is the discretisation of Chambolle (2004) used
by Dey et al. (2006), "Richardson–Lucy algorithm with total variation regularization for 3D
confocal microscope deconvolution", Microsc. Res. Tech. 69:260–266.
"""

from __future__ import annotations

import torch


def gradient(image: torch.Tensor) -> torch.Tensor:
    """Forward-difference gradient of ``image`` (..., H, W) -> (2, ..., H, W).

    ``(grad x)_0[i, j] = x[i+1, j] - x[i, j]`` (rows) and ``(grad x)_1[i, j] = x[i, j+1] - x[i, j]``
    (columns), zero on the last row / column (Neumann boundary).
    """
    d_rows = torch.zeros_like(image)
    d_cols = torch.zeros_like(image)
    d_rows[..., :-1, :] = image[..., 1:, :] - image[..., :-1, :]
    d_cols[..., :, :-1] = image[..., :, 1:] - image[..., :, :-1]
    return torch.stack((d_rows, d_cols))


def divergence(field: torch.Tensor) -> torch.Tensor:
    """Backward-difference divergence of a vector field (2, ..., H, W) -> (..., H, W).

    Defined as minus the adjoint of :func:`gradient`: ``<gradient(x), p> = -<x, divergence(p)>``.
    """
    p_rows, p_cols = field[0], field[1]
    div = torch.zeros_like(p_rows)
    div[..., :-1, :] += p_rows[..., :-1, :]
    div[..., 1:, :] -= p_rows[..., :-1, :]
    div[..., :, :-1] += p_cols[..., :, :-1]
    div[..., :, 1:] -= p_cols[..., :, :-1]
    return div


def tv_curvature(image: torch.Tensor, epsilon: float | torch.Tensor, ndim: int = 2) -> torch.Tensor:
    """The TV term of TV-Richardson–Lucy: ``div(grad x / |grad x|_eps)`` over the last ``ndim``
    axes.

    ``|grad x|_eps = sqrt(|grad x|^2 + eps^2)`` smooths the modulus where the gradient vanishes.
    Minus this is the (smoothed) gradient of the total variation ``sum |grad x|_eps``; its values
    lie in ``[-2 ndim, 2 ndim]`` whatever the scale of ``image``. The differences are those of
    :func:`gradient` and :func:`divergence` (forward, Neumann boundary; minus the adjoint),
    computed with four buffers of the image's size (the iterations of a solver call this once
    each, on images of millions of pixels).

    Parameters
    ----------
    image : Tensor (..., H, W), or (..., D, H, W) with ``ndim=3``
    epsilon : float or Tensor broadcastable to the image
        Smoothing of the gradient modulus, in the units of ``image``.
    ndim : int
        2 for images, 3 for volumes.
    """
    axes = tuple(range(-ndim, 0))
    if torch.is_grad_enabled() and (image.requires_grad or getattr(epsilon, "requires_grad",
                                                                   False)):
        return _tv_curvature_differentiable(image, epsilon, axes)
    grads = []
    squared = None
    for axis in axes:
        length = image.shape[axis]
        grad = torch.zeros_like(image)
        torch.sub(image.narrow(axis, 1, length - 1), image.narrow(axis, 0, length - 1),
                  out=grad.narrow(axis, 0, length - 1))
        grads.append(grad)
        squared = grad * grad if squared is None else squared.addcmul_(grad, grad)
    modulus = squared.add_(epsilon**2).sqrt_()
    div = torch.zeros_like(image)
    for axis, grad in zip(axes, grads):
        unit = grad.div_(modulus)
        length = image.shape[axis]
        div.narrow(axis, 0, length - 1).add_(unit.narrow(axis, 0, length - 1))
        div.narrow(axis, 1, length - 1).sub_(unit.narrow(axis, 0, length - 1))
    return div


def _tv_curvature_differentiable(image: torch.Tensor, epsilon: float | torch.Tensor,
                                 axes: tuple[int, ...]) -> torch.Tensor:
    """:func:`tv_curvature` without in-place steps, for autograd."""

    def shifted(values: torch.Tensor, axis: int, before: bool) -> torch.Tensor:
        # values (length n - 1 along axis) padded by one zero slice before or after
        zero = torch.zeros_like(image.narrow(axis, 0, 1))
        return torch.cat((zero, values) if before else (values, zero), dim=axis)

    grads = []
    for axis in axes:
        length = image.shape[axis]
        step = image.narrow(axis, 1, length - 1) - image.narrow(axis, 0, length - 1)
        grads.append(shifted(step, axis, before=False))
    modulus = torch.sqrt(sum(grad * grad for grad in grads) + epsilon**2)
    div = torch.zeros_like(image)
    for axis, grad in zip(axes, grads):
        unit = (grad / modulus).narrow(axis, 0, image.shape[axis] - 1)
        div = div + shifted(unit, axis, before=False) - shifted(unit, axis, before=True)
    return div


def total_variation(image: torch.Tensor, epsilon: float = 0.0) -> torch.Tensor:
    """Isotropic total variation ``sum_ij |grad x|_eps`` over the last two axes -> (...)."""
    grad = gradient(image)
    return torch.sqrt(grad[0] ** 2 + grad[1] ** 2 + epsilon**2).sum(dim=(-2, -1))


def tv_curvature_3d(volume: torch.Tensor, epsilon: float | torch.Tensor) -> torch.Tensor:
    """``div(grad x / |grad x|_eps)`` over the last three axes of ``(..., D, H, W)``: the 3D
    case of :func:`tv_curvature`. Values lie in [-6, 6]."""
    return tv_curvature(volume, epsilon, ndim=3)
