"""The TV term of TV-Richardson-Lucy: minus the gradient of the smoothed total variation, in 2-D
and 3-D, the same with and without autograd, bounded by 2 ndim."""

import pytest
import torch

from psfmap.restore.tv import divergence, gradient, total_variation, tv_curvature, tv_curvature_3d


def _smoothed_tv(image: torch.Tensor, epsilon: float, ndim: int) -> torch.Tensor:
    total = 0
    for axis in range(-ndim, 0):
        length = image.shape[axis]
        step = image.narrow(axis, 1, length - 1) - image.narrow(axis, 0, length - 1)
        total = total + torch.nn.functional.pad(step, _pad_after(axis, ndim)) ** 2
    return torch.sqrt(total + epsilon**2).sum()


def _pad_after(axis: int, ndim: int) -> tuple[int, ...]:
    pads = [0, 0] * ndim
    pads[2 * (-axis - 1) + 1] = 1  # F.pad lists the last axis first
    return tuple(pads)


@pytest.mark.parametrize(("shape", "ndim"), [((2, 9, 11), 2), ((1, 4, 7, 6), 3), ((3, 1, 5), 2)])
def test_curvature_is_minus_the_gradient_of_the_smoothed_tv(shape, ndim):
    image = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    epsilon = 0.05
    leaf = image.clone().requires_grad_(True)
    _smoothed_tv(leaf, epsilon, ndim).backward()
    expected = -leaf.grad
    fast = tv_curvature(image, epsilon, ndim=ndim)  # in place, no autograd
    torch.testing.assert_close(fast, expected, rtol=1e-10, atol=1e-12)
    traced = tv_curvature(image.clone().requires_grad_(True), epsilon, ndim=ndim)
    torch.testing.assert_close(traced.detach(), fast, rtol=1e-12, atol=1e-14)
    assert float(fast.abs().max()) <= 2 * ndim


def test_2d_matches_gradient_divergence_and_3d_alias():
    image = torch.rand(2, 8, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grad = gradient(image)
    reference = divergence(grad / torch.sqrt(grad[0] ** 2 + grad[1] ** 2 + 0.01**2))
    torch.testing.assert_close(tv_curvature(image, 0.01), reference, rtol=1e-12, atol=1e-14)
    assert torch.allclose(total_variation(image, 0.0), _flat_tv(image))
    volume = torch.rand(1, 3, 5, 4, dtype=torch.float64)
    assert torch.equal(tv_curvature_3d(volume, 0.1), tv_curvature(volume, 0.1, ndim=3))


def _flat_tv(image: torch.Tensor) -> torch.Tensor:
    grad = gradient(image)
    return torch.sqrt(grad[0] ** 2 + grad[1] ** 2).sum(dim=(-2, -1))


def test_per_image_epsilon_broadcasts():
    image = torch.rand(2, 6, 7, generator=torch.Generator().manual_seed(2))
    epsilon = torch.tensor([0.01, 0.5]).reshape(2, 1, 1)
    both = tv_curvature(image, epsilon)
    torch.testing.assert_close(both[1], tv_curvature(image[1:], 0.5)[0])
