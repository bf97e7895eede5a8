"""The identification ResNet and the unrolled FISTA network."""

from __future__ import annotations

import numpy as np
import torch

from psfmap.deepblur import IdentificationNet, UnrolledFISTA


def test_identification_any_size_and_scale_invariant():
    net = IdentificationNet(7, widths=(4, 8), pool=2).eval()
    for shape in ((32, 32), (48, 64)):
        assert net(torch.rand(2, *shape)).shape == (2, 7)
    image = torch.rand(1, 32, 32)
    torch.testing.assert_close(net(image), net(10 * image), atol=1e-5, rtol=1e-4)
    assert net.field == 2 * 4


def test_unrolled_uses_the_operator_and_is_linear_in_scale(zernike_family):
    torch.manual_seed(0)
    net = UnrolledFISTA(iterations=3, channels=4).eval()
    operator = zernike_family.operator(np.zeros(7))
    image = torch.rand(2, 24, 28)
    with torch.no_grad():
        restored = net(image, operator)
        scaled = net(3 * image, [operator, operator])
    assert restored.shape == image.shape
    torch.testing.assert_close(scaled, 3 * restored, atol=1e-4, rtol=1e-4)


def test_gradient_reaches_every_parameter(hull_family):
    net = UnrolledFISTA(iterations=2, channels=4)
    operators = hull_family.operators(hull_family.vertices[:2], (24, 24))
    loss = net(torch.rand(2, 24, 24), operators).square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_operator_count_must_match():
    net = UnrolledFISTA(iterations=1, channels=2)
    try:
        net(torch.rand(3, 16, 16), [None, None])
    except ValueError as error:
        assert "one per image (3)" in str(error)
    else:  # pragma: no cover
        raise AssertionError("a wrong number of operators was accepted")
