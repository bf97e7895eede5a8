"""The identification ResNet and the unrolled FISTA network."""

from __future__ import annotations

import numpy as np
import pytest
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
    assert net.fused_for_inference() is fused  # kept while the weights stay
    assert "_fused" not in dict(net.named_modules()) and not any(
        "_fused" in key for key in net.state_dict())
    with torch.no_grad():
        net.head.bias.add_(1.0)  # a weight changed in place (a training step, a load)
    refreshed = net.fused_for_inference()
    assert refreshed is not fused
    with torch.no_grad():
        torch.testing.assert_close(refreshed(images), net(images), atol=1e-5, rtol=1e-4)


def test_identifier_grows_full_resolution_blocks_without_changing_its_outputs():
    """``fine`` blocks start as the identity: a trained network grown with them gives the same
    γ̂; once they are trained the fused copy still equals the network; a state that lacks
    more than the new blocks, or whose shapes differ, is refused."""
    torch.manual_seed(0)
    small = IdentificationNet(5, widths=(4, 8), pool=2)
    small.train()
    with torch.no_grad():
        small(torch.rand(4, 40, 40))
    small.eval()
    grown = IdentificationNet(5, widths=(4, 8), pool=2, fine=2).eval()
    assert grown.config["fine"] == 2 and "fine" not in small.config
    added = grown.load_grown(small.state_dict())
    assert added and all(name.startswith("fine.") for name in added)
    images = torch.rand(3, 40, 48)
    with torch.no_grad():
        torch.testing.assert_close(grown(images), small(images))
        for block in grown.fine:  # as after training: the blocks act
            block.bn2.weight.normal_()
            block.bn1.running_mean.uniform_(-0.1, 0.1)
        assert not torch.allclose(grown(images), small(images))
        torch.testing.assert_close(grown.fused_for_inference()(images), grown(images),
                                   atol=1e-5, rtol=1e-4)
    with pytest.raises(RuntimeError, match="does not fit this identification network"):
        IdentificationNet(5, widths=(4, 8), blocks=2, pool=2, fine=1).load_grown(
            small.state_dict())
    with pytest.raises(RuntimeError, match="size mismatch"):
        IdentificationNet(5, widths=(4, 16), pool=2, fine=1).load_grown(small.state_dict())


def test_upper_quantile_equals_torch_quantile():
    from psfmap.deepblur.networks import upper_quantile

    generator = torch.Generator().manual_seed(0)
    for shape in ((3, 4096), (2, 200), (1, 7), (4, 1)):
        rows = torch.rand(shape, generator=generator) ** 3
        for q in (0.995, 0.9, 1.0):
            torch.testing.assert_close(upper_quantile(rows, q), torch.quantile(rows, q, dim=1),
                                       atol=1e-6, rtol=0)


def test_bfloat16_inference_restores_as_float32_and_training_keeps_float32(monkeypatch):
    from psfmap.deepblur import load_model

    model = load_model("zernike7")
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 72, 72, generator=generator) * 50
    operator = model.family.operator(model.family.centre, (72, 72))
    results = {}
    for choice in ("0", "1"):
        monkeypatch.setenv("PSFMAP_BFLOAT16", choice)
        with torch.no_grad():
            results[choice] = model.deblurrer(image, operator)
        with torch.enable_grad():  # training: float32 whatever the setting
            results[choice + " grad"] = model.deblurrer(image, operator).detach()
    plain = results["0"]
    error = float((results["1"] - plain).norm() / plain.norm())
    # bfloat16 ran (measured 1.4e-3 after 8 iterations, far below the noise of the data)
    assert 0 < error < 5e-3
    torch.testing.assert_close(results["1 grad"], plain, rtol=0, atol=0)
    torch.testing.assert_close(results["0 grad"], plain, rtol=0, atol=0)


def test_bfloat16_choice_follows_the_environment_then_the_cpu(monkeypatch):
    from psfmap import _cpu

    tensor = torch.zeros(2)
    monkeypatch.delenv("PSFMAP_BFLOAT16", raising=False)
    with torch.no_grad():
        for native in (True, False):
            monkeypatch.setattr(_cpu, "_native_bfloat16", lambda native=native: native)
            assert _cpu.bfloat16_inference(tensor) is native
        assert not _cpu.bfloat16_inference(tensor.double())  # float32 only
        monkeypatch.setenv("PSFMAP_BFLOAT16", "1")
        assert _cpu.bfloat16_inference(tensor)
        monkeypatch.setenv("PSFMAP_BFLOAT16", "fast")
        with pytest.raises(ValueError, match="PSFMAP_BFLOAT16 must be 0, 1 or auto"):
            _cpu.bfloat16_inference(tensor)
    monkeypatch.setenv("PSFMAP_BFLOAT16", "1")
    assert not _cpu.bfloat16_inference(tensor)  # autograd on
