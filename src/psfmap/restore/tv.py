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


def tv_curvature(image: torch.Tensor, epsilon: float | torch.Tensor) -> torch.Tensor:
    """The TV term of TV-Richardson–Lucy: ``div(grad x / |grad x|_eps)``.

    ``|grad x|_eps = sqrt(|grad x|^2 + eps^2)`` smooths the modulus where the gradient vanishes.
    Minus this is the (smoothed) gradient of the total variation ``sum |grad x|_eps``; its values
    lie in [-4, 4] whatever the scale of ``image``.

    Parameters
    ----------
    image : Tensor (..., H, W)
    epsilon : float or Tensor broadcastable to (..., 1, 1)
        Smoothing of the gradient modulus, in the units of ``image``.
    """
    grad = gradient(image)
    modulus = torch.sqrt(grad[0] ** 2 + grad[1] ** 2 + epsilon**2)
    return divergence(grad / modulus)


def total_variation(image: torch.Tensor, epsilon: float = 0.0) -> torch.Tensor:
    """Isotropic total variation ``sum_ij |grad x|_eps`` over the last two axes -> (...)."""
    grad = gradient(image)
    return torch.sqrt(grad[0] ** 2 + grad[1] ** 2 + epsilon**2).sum(dim=(-2, -1))


def tv_curvature_3d(volume: torch.Tensor, epsilon: float | torch.Tensor) -> torch.Tensor:
    """``div(grad x / |grad x|_eps)`` over the last three axes of ``(..., D, H, W)``.

    Forward differences with a Neumann boundary along z, y and x; the divergence is minus the
    adjoint of that gradient (backward differences), as in 2D. Values lie in [-6, 6].
    """
    grads = []
    for axis in (-3, -2, -1):
        grad = torch.zeros_like(volume)
        length = volume.shape[axis]
        grad.narrow(axis, 0, length - 1).copy_(
            volume.narrow(axis, 1, length - 1) - volume.narrow(axis, 0, length - 1))
        grads.append(grad)
    modulus = torch.sqrt(sum(g * g for g in grads) + epsilon**2)
    div = torch.zeros_like(volume)
    for axis, grad in zip((-3, -2, -1), grads):
        p = grad / modulus
        length = volume.shape[axis]
        div.narrow(axis, 0, length - 1).add_(p.narrow(axis, 0, length - 1))
        div.narrow(axis, 1, length - 1).sub_(p.narrow(axis, 0, length - 1))
    return div
