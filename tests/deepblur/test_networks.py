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


def test_unshuffled_proximal_step_keeps_full_resolution_and_any_size():
    from psfmap.deepblur.networks import ProximalCNN

    torch.manual_seed(0)
    prox = ProximalCNN(channels=4, unshuffle=4).eval()
    gain = torch.tensor(0.5)
    with torch.no_grad():
        for shape in ((32, 32), (37, 50)):  # 37 and 50 are not multiples of 4: padded, cropped
            x = torch.rand(2, *shape)
            out = prox(x, gain)
            assert out.shape == x.shape and bool(torch.isfinite(out).all())
            assert not torch.equal(out, x)  # the residual is not zero
            assert bool((prox(x, torch.tensor(0.0)) == x).all())  # β = 0: the identity
        # the residual has full resolution: each phase of a 4 × 4 block gets its own value
        residual = prox(torch.rand(1, 32, 32), gain) - prox(torch.zeros(1, 32, 32), gain)
        assert torch.unique(residual[0, :4, :4]).numel() == 16


def test_unrolled_with_unshuffle_round_trips_its_config(zernike_family):
    net = UnrolledFISTA(iterations=2, channels=4, unshuffle=2)
    assert net.config == {"iterations": 2, "channels": 4, "unshuffle": 2}
    again = UnrolledFISTA(**net.config)
    again.load_state_dict(net.state_dict())
    operator = zernike_family.operator(np.zeros(7))
    image = torch.rand(1, 30, 26)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(image, operator), net.eval()(image, operator))
    # weights saved before the option existed (no "unshuffle" key) load at full resolution
    assert UnrolledFISTA(iterations=2, channels=4).prox.unshuffle == 1


def test_fused_identifier_equals_the_network_in_eval_mode():
    torch.manual_seed(0)
    net = IdentificationNet(5, widths=(4, 8, 16), pool=2)
    # non-trivial batch-norm statistics, as after training
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(4, 40, 40) * 3)
    net.eval()
    fused = net.fused_for_inference()
    images = torch.rand(3, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(fused(images), net(images), atol=1e-5, rtol=1e-4)


def test_upper_quantile_equals_torch_quantile():
    from psfmap.deepblur.networks import upper_quantile

    generator = torch.Generator().manual_seed(0)
    for shape in ((3, 4096), (2, 200), (1, 7), (4, 1)):
        rows = torch.rand(shape, generator=generator) ** 3
        for q in (0.995, 0.9, 1.0):
            torch.testing.assert_close(upper_quantile(rows, q), torch.quantile(rows, q, dim=1),
                                       atol=1e-6, rtol=0)
