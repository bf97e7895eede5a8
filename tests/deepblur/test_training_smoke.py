"""A tiny end-to-end training run (slow): identify, deblur, assemble, load, use."""

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


def test_deblur_loss_options():
    """``deblur.loss``: "mse" (the default) or "ssim_l1"; anything else is refused by name."""
    import torch

    from psfmap.training import deepblur as training

    family = training.build_family(training.CONFIGS["zernike7"])
    pool = torch.rand(4, 48, 48)
    gammas = family.sample(4, seed=0, spread=False)
    base = {"size": 32, "pad": 8, "photons": 1000.0, "seed": 0, "time_limit": None}
    for loss in ("mse", "ssim_l1"):
        config = {**base, "deblur": {"steps": 2, "batch": 2, "lr": 1e-3, "iterations": 2,
                                     "channels": 4, "unshuffle": 2, "loss": loss}}
        net, log = training.train_deblurrer(config, family, pool, gammas)
        assert log["steps_done"] == 2 and np.isfinite(log["final_loss"])
        assert net.config["unshuffle"] == 2
    config["deblur"]["loss"] = "l2"
    with pytest.raises(ValueError, match="deblur.loss must be 'mse' or 'ssim_l1', got 'l2'"):
        training.train_deblurrer(config, family, pool, gammas)


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
