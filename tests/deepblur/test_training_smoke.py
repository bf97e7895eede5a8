"""Deep-Blur training: a tiny end-to-end run (slow: identify, deblur, assemble, load, use) and
the training options, each in a few steps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from psfmap.deepblur import identify, load_model


@pytest.mark.slow
def test_tiny_training_run(tmp_path):
    from psfmap.training.deepblur import main

    override = {"pool_scenes": 3, "pool_operators": 20, "size": 32, "pad": 8,
                "identify": {"steps": 2, "batch": 2, "widths": [4, 8]},
                "deblur": {"steps": 1, "batch": 1, "iterations": 2, "channels": 4}}
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(override))
    for part in ("identify", "deblur", "assemble"):
        assert main(["--name", "zernike7", "--part", part, "--config", str(config),
                     "--out", str(tmp_path)]) == 0
    model = load_model(str(tmp_path / "deepblur-zernike7.json"))
    assert model.config["training"]["identify"]["steps"] == 2
    assert model.config["training_log"]["identify"]["steps_done"] == 2
    gamma = identify(np.random.default_rng(0).random((32, 32)).astype(np.float32), model)
    assert gamma.shape == (7,)


@pytest.mark.slow
def test_psfmap_train_deepblur(tmp_path, capsys):
    from psfmap.cli import main

    override = {"pool_scenes": 2, "pool_operators": 10, "size": 32, "pad": 8,
                "identify": {"steps": 1, "batch": 2, "widths": [4, 8]},
                "deblur": {"steps": 1, "batch": 1, "iterations": 2, "channels": 4}}
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(override))
    output = tmp_path / "mine.pt"
    assert main(["train", "--model", "deepblur-zernike7", "--config", str(config),
                 "-o", str(output), "--quiet"]) == 0
    assert load_model(str(output.with_suffix(".json"))).n_params == 7
    assert main(["train", "--model", "deepblur-nothing", "-o", str(output)]) == 2
    assert "NAME must be one of" in capsys.readouterr().err


#: the run settings of the tiny training calls below
TINY_RUN = {"size": 32, "pad": 8, "photons": 1000.0, "seed": 0, "time_limit": None}


@pytest.fixture
def tiny_material():
    """zernike7's family, four random 48² scenes and four of its γ: a training call in ms."""
    import torch

    from psfmap.training import deepblur as training

    family = training.build_family(training.CONFIGS["zernike7"])
    return family, torch.rand(4, 48, 48), family.sample(4, seed=0, spread=False)


def test_deblur_loss_options(tiny_material):
    """``deblur.loss``: "mse" (the default) or "ssim_l1"; anything else is refused by name."""

    from psfmap.training import deepblur as training

    family, pool, gammas = tiny_material
    base = dict(TINY_RUN)
    for loss in ("mse", "ssim_l1"):
        config = {**base, "deblur": {"steps": 2, "batch": 2, "lr": 1e-3, "iterations": 2,
                                     "channels": 4, "unshuffle": 2, "loss": loss}}
        net, log = training.train_deblurrer(config, family, pool, gammas)
        assert log["steps_done"] == 2 and np.isfinite(log["final_loss"])
        assert net.config["unshuffle"] == 2
    config["deblur"]["loss"] = "l2"
    with pytest.raises(ValueError, match="deblur.loss must be 'mse' or 'ssim_l1', got 'l2'"):
        training.train_deblurrer(config, family, pool, gammas)


def test_identify_loss_options(tiny_material):
    """``identify.loss``: "coefficients" (the default) or "psf_snr" (the evaluation's PSF-field
    SNR, negated, so the log reads in dB); anything else is refused by name."""

    from psfmap.training import deepblur as training

    family, pool, gammas = tiny_material
    base = dict(TINY_RUN)
    for loss in ("coefficients", "psf_snr"):
        config = {**base, "identify": {"steps": 2, "batch": 2, "lr": 1e-3, "widths": [4, 8],
                                       "blocks": 1, "pool": 1, "loss": loss}}
        _, log = training.train_identifier(config, family, pool, gammas)
        assert log["steps_done"] == 2 and np.isfinite(log["final_loss"])
    config["identify"]["loss"] = "mse"
    with pytest.raises(ValueError,
                       match="identify.loss must be 'coefficients' or 'psf_snr', got 'mse'"):
        training.train_identifier(config, family, pool, gammas)


def test_identifier_grown_from_a_part_file(tiny_material, tmp_path):
    """``identify.fine`` with an ``init`` that has no full-resolution blocks: the run starts
    from the saved weights (same loss at the first step) and adds the blocks."""
    import torch

    from psfmap.training import deepblur as training

    family, pool, gammas = tiny_material
    spec = {"steps": 1, "batch": 2, "lr": 0.0, "widths": [4, 8], "blocks": 1, "pool": 1,
            "loss": "psf_snr"}
    small, small_log = training.train_identifier({**TINY_RUN, "identify": spec}, family, pool,
                                                 gammas)
    torch.save({"config": small.config, "state": small.state_dict()}, tmp_path / "small.pt")
    grown_spec = {**spec, "fine": 1, "init": str(tmp_path / "small.pt")}
    grown, grown_log = training.train_identifier({**TINY_RUN, "identify": grown_spec}, family,
                                                 pool, gammas)
    assert grown.config["fine"] == 1 and len(grown.fine) == 1
    assert grown_log["final_loss"] == pytest.approx(small_log["final_loss"], abs=1e-4)


def test_deblurrer_trained_on_estimated_operators(tiny_material, tmp_path, monkeypatch):
    """``deblur.estimated_share``: that share of each batch is restored with ``A(γ̂)`` from
    the identification network (projected onto the admissible set); no network, a missing
    identify part file or a share outside [0, 1] is refused by name."""
    import torch

    from psfmap.deepblur import IdentificationNet
    from psfmap.training import deepblur as training

    family, pool, gammas = tiny_material
    identifier = IdentificationNet(7, widths=(4, 8))
    with torch.no_grad():  # an identifier far off: its γ̂ leave the box and must be projected
        identifier.head.bias.fill_(5.0)
    config = {**TINY_RUN, "deblur": {"steps": 2, "batch": 4, "lr": 1e-3, "iterations": 2,
                                     "channels": 4, "estimated_share": 1.0}}
    seen = []
    original = training._estimated_operators

    def spy(*args, **kwargs):
        operators = original(*args, **kwargs)
        seen.extend(operators)
        return operators

    monkeypatch.setattr(training, "_estimated_operators", spy)
    _, log = training.train_deblurrer(config, family, pool, gammas, identifier)
    assert log["steps_done"] == 2 and np.isfinite(log["final_loss"])
    edge = family.psf_family(torch.full((7,), 0.15, dtype=torch.float64)).float()
    assert len(seen) == 8 and all(torch.allclose(op.psf, edge, atol=1e-6) for op in seen)
    with pytest.raises(ValueError, match="needs an identification network"):
        training.train_deblurrer(config, family, pool, gammas)
    config["deblur"]["estimated_share"] = 1.5
    with pytest.raises(ValueError, match=r"estimated_share must be in \[0, 1\], got 1.5"):
        training.train_deblurrer(config, family, pool, gammas, identifier)
    with pytest.raises(FileNotFoundError, match="train the identify part first"):
        training._load_identifier(tmp_path / "zernike7-identify.pt")


def test_psf_field_snr_is_the_evaluation_figure_and_has_gradients(zernike_family, hull_family):
    """The training loss equals ``family.field_snr`` (the held-out figure) for both kinds of
    family, costs nothing for a twin, and passes gradients to the estimate."""
    import torch

    from psfmap.training.deepblur import psf_field_snr

    for family in (zernike_family, hull_family):
        truth = torch.from_numpy(family.sample(3, seed=1, spread=False))
        estimate = torch.from_numpy(family.sample(3, seed=2, spread=False)).requires_grad_()
        snr = psf_field_snr(family, estimate, truth)
        expected = [family.field_snr(a, b) for a, b in
                    zip(truth.numpy(), estimate.detach().numpy(), strict=True)]
        np.testing.assert_allclose(snr.detach().numpy(), expected, rtol=1e-9)
        snr.sum().backward()
        assert estimate.grad is not None and bool(estimate.grad.abs().sum() > 0)
        fields = family.psf_fields(truth)
        assert fields.shape[0] == 3
        np.testing.assert_allclose(fields[1].numpy(), family.psf_field(truth[1].numpy()),
                                   atol=1e-12)
    truth = torch.tensor([[0.1, -0.05, 0.12, 0.03, -0.08, 0.06, 0.02]], dtype=torch.float64)
    assert float(psf_field_snr(zernike_family, zernike_family.twin(truth), truth)) > 60


def test_scene_pool_mixes_material_and_caches_by_content(tmp_path):
    import torch

    from psfmap.training.deepblur import scene_pool

    cache = tmp_path / "pool.pt"
    mixed = scene_pool(6, 48, 3, cache, {"procedural": 0.5, "natural": 0.5})
    assert mixed.shape == (6, 48, 48)
    torch.testing.assert_close(mixed.amax((-2, -1)), torch.ones(6))  # each scaled to max 1
    procedural = scene_pool(6, 48, 3)
    torch.testing.assert_close(mixed[:3], procedural[:3])  # the procedural part comes first
    assert not torch.equal(mixed[3:], procedural[3:])
    # the cache holds its key: another mix of the same shape is drawn anew, not reused
    assert torch.equal(scene_pool(6, 48, 3, cache, {"procedural": 0.5, "natural": 0.5}), mixed)
    torch.testing.assert_close(scene_pool(6, 48, 3, cache), procedural)
    with pytest.raises(ValueError, match="material must give non-negative shares"):
        scene_pool(6, 48, 3, None, {"procedural": 1.0, "paintings": 1.0})


def test_calibrated_family_variation(tmp_path):
    """``family.variation`` widens the synthetic microscope the hull family is calibrated
    from: its members differ more (the centre of the hull predicts them worse); an unknown
    key is refused by name."""
    from psfmap.calibrate import OperatorFamily
    from psfmap.calibrate.synthetic import synthetic_calibration_set
    from psfmap.deepblur import CalibratedHullFamily
    from psfmap.training import deepblur as training

    microscope, conditions, _, _ = synthetic_calibration_set(
        3, (64, 64), 4, focus=0.25, astigmatism=0.08, tilt=0.12, field_astigmatism=0.06)
    assert conditions[0][0] == -0.25 and microscope.tilt == 0.12
    assert microscope.field_astigmatism == 0.06

    def centre_snr(variation):
        path = training.calibrated_family(tmp_path / f"{len(variation)}.psfmap", variation)
        family = CalibratedHullFamily(OperatorFamily.load(path))
        return np.mean([family.field_snr(g, family.centre)
                        for g in family.sample(16, seed=3, spread=False)])

    assert centre_snr({"focus": 0.25, "astigmatism": 0.08}) < centre_snr({}) - 5
    with pytest.raises(ValueError, match="family.variation takes focus.*got defocus"):
        training.calibrated_family(tmp_path / "x.psfmap", {"defocus": 0.2})
