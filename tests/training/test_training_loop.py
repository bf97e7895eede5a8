"""PSF-regression network: shapes, loss eq. 11, a short training run, checkpoints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from psfmap.blind.estimator import PSFEstimator
from psfmap.blind.network import PSFRegressor
from psfmap.psf import model
from psfmap.training import (
    CHECKPOINT_VERSION,
    PatchGenerator,
    TrainConfig,
    dihedral_augment,
    evaluate,
    fit_uncertainty,
    load_checkpoint,
    r2_score,
    regression_loss,
    save_checkpoint,
    train,
)

TINY = {"width": 4, "blocks": [1, 1], "hidden": 16, "n_radii": 8, "n_sectors": 4}


def test_forward_shapes_and_outputs():
    network = PSFRegressor(32, 3, **TINY, periodic=[[1, 2]]).eval()
    patches = torch.randn(5, 32, 32)
    out = network(patches)
    assert out.shape == (5, 4)
    assert network.embedding(patches).shape == (5, 5)  # 3 params + 1 extra power + logit
    assert torch.isfinite(out).all()
    # the decoded angle lies in [0, 1)
    assert bool(((out[:, 2] >= 0) & (out[:, 2] < 1)).all())


def test_periodic_encoding_roundtrip_and_wrap():
    network = PSFRegressor(32, 3, **TINY, periodic=[[1, 2]])
    unit = torch.tensor([[0.2, 0.5, 0.0], [0.9, 0.3, 0.999], [0.1, 0.7, 0.25]])
    decoded = network.decode(network.encode(unit))
    residual = (decoded - unit + 0.5) % 1 - 0.5
    assert torch.allclose(residual, torch.zeros_like(unit), atol=1e-5)
    # axis 0 and pi give the same embedding
    a, b = network.encode(torch.tensor([[0.4, 0.6, 0.0], [0.4, 0.6, 1.0]]))
    assert torch.allclose(a, b, atol=1e-6)


def test_uncertainty_head_is_optional_and_leaves_the_main_layers_alone():
    torch.manual_seed(0)
    plain = PSFRegressor(32, 3, **TINY, periodic=[[1, 2]]).eval()
    torch.manual_seed(0)
    with_head = PSFRegressor(32, 3, **TINY, periodic=[[1, 2]], uncertainty=True).eval()
    patches = torch.randn(5, 32, 32)
    assert torch.equal(plain(patches), with_head(patches))
    pooled = with_head.pooled_features(patches)
    unit = with_head.outputs(pooled)[:, :-1]
    assert with_head.log_variance(pooled, unit).shape == (5, 3)
    with pytest.raises(ValueError, match="no uncertainty head"):
        plain.log_variance(pooled, unit)
    with pytest.raises(ValueError, match="without an uncertainty head"):
        fit_uncertainty(plain, model("zernike3", size=15), {"patch_size": 32}, 2, 0)


def test_periodic_pairs_detection():
    family = model("zernike3", size=15)
    assert family.periodic == [[1, 2]]
    g2 = model("gaussian2", size=15)
    assert g2.periodic == []


def test_loss_eq11_ignores_parameters_of_invalid_samples():
    network = PSFRegressor(32, 1, **TINY)
    target = torch.tensor([[0.2], [0.8]])
    valid = torch.tensor([1.0, 0.0])
    good = torch.tensor([[0.2, 6.0], [0.0, -6.0]])  # right on the valid one, wrong on invalid
    loss, parts = regression_loss(network, good, target, valid)
    assert parts["param"] == pytest.approx(0.0, abs=1e-12)
    assert parts["bce"] < 0.01
    bad_validity = torch.tensor([[0.2, -6.0], [0.0, 6.0]])
    assert float(regression_loss(network, bad_validity, target, valid)[0]) > float(loss) + 5
    wrong_param = torch.tensor([[0.7, 6.0], [0.0, -6.0]])
    _, wrong = regression_loss(network, wrong_param, target, valid)
    assert wrong["param"] == pytest.approx(0.25, rel=1e-5)
    # no valid sample: parameter term vanishes instead of dividing by zero
    _, none = regression_loss(network, good, target, torch.zeros(2))
    assert none["param"] == 0.0 and math.isfinite(none["loss"])


def test_r2_score_eq15():
    rng = np.random.default_rng(0)
    truth = rng.uniform(size=(200, 2))
    assert np.allclose(r2_score(truth, truth), 1.0)
    assert np.allclose(r2_score(truth, np.full_like(truth, truth.mean(0))), 0.0)
    # periodic column: predicting 0.999 for 0.001 is almost right
    wrapped = truth.copy()
    wrapped[:, 1] = np.where(truth[:, 1] < 0.5, truth[:, 1] + 0.999, truth[:, 1] - 0.001)
    assert r2_score(truth, wrapped, periodic=[1])[1] > 0.99
    assert r2_score(truth, wrapped)[1] < 0.5
    with pytest.raises(ValueError, match="shape"):
        r2_score(truth, truth[:, :1])


@pytest.mark.slow
def test_tiny_model_learns_gaussian_width_on_points(tmp_path):
    config = TrainConfig(
        model="gaussian1",
        family=model("gaussian1", size=15).config(),
        data={"patch_size": 32, "mix": {"poi": 1.0}, "invalid_fraction": 0.1,
              "synthetic_images": 2,
              "photons": [2000.0, 5000.0]},
        network=TINY,
        steps=90,
        batch_size=32,
        learning_rate=3e-3,
        validation_every=30,
        validation_size=128,
        pool_size=256,
        refresh=8,
        seed=0,
    )
    path = train(config, tmp_path / "tiny.pt")
    card = json.loads(path.with_suffix(".json").read_text())
    history = card["metrics"]["history"]
    assert card["config"]["steps"] == 90
    assert card["config"]["family"]["name"] == "gaussian1"
    assert card["config"]["network"]["patch_size"] == 32
    assert history[-1]["r2_mean"] > history[0]["r2_mean"]
    assert card["metrics"]["validation"]["r2_mean"] > 0.3
    # deterministic under the seed; an uncertainty head fitted afterwards leaves the main
    # network as it was, and is deterministic too
    config.uncertainty_steps = 40
    again = train(config, tmp_path / "again.pt")
    third = train(config, tmp_path / "third.pt")
    first, _, _ = load_checkpoint(path)
    second, second_config, metrics = load_checkpoint(again)
    assert first.uncertainty_head is None and second.uncertainty_head is not None
    assert second_config["uncertainty_steps"] == 40 and second_config["network"]["uncertainty"]
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
    for (name, a), b in zip(second.state_dict().items(),
                            load_checkpoint(third)[0].state_dict().values()):
        assert torch.equal(a, b), name
    # the head learns the size of the errors: its negative log-likelihood falls
    uncertainty = metrics["uncertainty"]
    assert uncertainty["nll_last"] < uncertainty["nll_first"]
    assert len(uncertainty["calibration"]) == 4


@pytest.fixture
def saved(tmp_path):
    family = model("gaussian2", size=15)
    config = TrainConfig(model="gaussian2", family=family.config(),
                         data={"patch_size": 32}, network=TINY).resolved()
    torch.manual_seed(1)
    network = PSFRegressor.from_config(config.network).eval()
    path = save_checkpoint(tmp_path / "g2.pt", network, config.to_dict(), {"note": 1})
    return path, network


def test_checkpoint_roundtrip_with_config(saved):
    path, network = saved
    loaded, config, metrics = load_checkpoint(path)
    assert config["family"]["name"] == "gaussian2"
    assert config["data"]["patch_size"] == 32
    assert metrics == {"note": 1}
    assert path.with_suffix(".json").is_file()
    patches = torch.randn(3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(network(patches), loaded(patches))
    estimator = PSFEstimator.load(path)
    params, validity = estimator.predict(patches.numpy())
    assert isinstance(params, np.ndarray) and params.shape == (3, 2)
    assert validity.shape == (3,) and ((validity >= 0) & (validity <= 1)).all()
    assert ((params >= 0.5) & (params <= 4.0)).all()
    tensor_params, _ = estimator.predict(patches.double())
    assert tensor_params.dtype == torch.float64


def test_wrong_model_newer_format_and_bad_files(saved, tmp_path):
    path, _ = saved
    with pytest.raises(ValueError, match="for the model 'gaussian2', expected 'zernike3'"):
        PSFEstimator.load(path, model="zernike3")
    payload = torch.load(path, weights_only=True)
    payload["version"] = CHECKPOINT_VERSION + 1
    newer = tmp_path / "newer.pt"
    torch.save(payload, newer)
    with pytest.raises(ValueError, match="newer than the version"):
        PSFEstimator.load(newer)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a psfmap CNN weights file") as error:
        PSFEstimator.load(junk)
    assert "weights_only" not in str(error.value)  # no torch advice about unsafe loading
    card = tmp_path / "card.json"  # the JSON card beside the weights, passed by mistake
    card.write_text(json.dumps({"config": {}}))
    with pytest.raises(ValueError, match="not a psfmap CNN weights file"):
        PSFEstimator.load(card)
    with pytest.raises(ValueError, match="does not exist"):
        PSFEstimator.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="no pretrained model"):
        PSFEstimator.pretrained("gaussian7")
    estimator = PSFEstimator.load(path)
    with pytest.raises(ValueError, match=r"shape \(B, 32, 32\)"):
        estimator.predict(np.zeros((2, 16, 16)))
    with pytest.raises(ValueError, match="NaN"):
        estimator.predict(np.full((1, 32, 32), np.nan))


def test_weights_without_uncertainty_head_refuse_return_std(saved):
    path, _ = saved
    estimator = PSFEstimator.load(path)
    assert not estimator.has_uncertainty
    params, validity = estimator.predict(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="no uncertainty head"):
        estimator.predict(torch.randn(3, 32, 32), return_std=True)
    assert estimator.psf_map(torch.randn(64, 64), grid=(2, 2), threshold=0.0).std is None


def test_evaluate_reports_r2_and_accuracy(saved):
    path, network = saved
    family = model("gaussian2", size=15)
    batch = PatchGenerator(family, {"patch_size": 32, "synthetic_images": 2}, seed=0).batch(24)
    report = evaluate(network, family, batch.patches, batch.params, batch.valid)
    assert len(report["r2"]) == 2
    assert 0 <= report["validity_accuracy"] <= 1


@pytest.mark.parametrize("name", ["gaussian2", "zernike3"])
def test_dihedral_augmentation_transforms_labels_with_the_image(name):
    family = model(name, size=15)
    params = family.sample(8, torch.Generator().manual_seed(0), dtype=torch.float64)
    psfs = family(params)
    code = torch.arange(8)
    moved, moved_params = dihedral_augment(psfs, params, family.names, code)
    assert torch.allclose(moved, family(moved_params), atol=1e-6)
    assert bool(((moved_params >= torch.from_numpy(family.low) - 1e-9)
                 & (moved_params <= torch.from_numpy(family.high) + 1e-9)).all())


@pytest.mark.slow
def test_minutes_limited_run_is_replayed_by_its_recorded_config(tmp_path):
    config = TrainConfig(
        model="gaussian1", family=model("gaussian1", size=9).config(),
        data={"patch_size": 24, "mix": {"poi": 1.0}, "synthetic_images": 1},
        network=TINY, steps=60, batch_size=8, validation_every=20, validation_size=32,
        pool_size=64, refresh=4, seed=3,
    )
    timed = train(config, tmp_path / "timed.pt", minutes=1e-4)
    recorded = json.loads(timed.with_suffix(".json").read_text())["config"]
    assert recorded["steps"] == 26 and recorded["schedule"] == [[0, 60], [25, 26]]
    replay = train(recorded, tmp_path / "replay.pt")
    first, _, _ = load_checkpoint(timed)
    second, _, _ = load_checkpoint(replay)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_cli_train_from_a_config_file(tmp_path):
    from psfmap.cli import main

    config = {"model": "gaussian1", "family": model("gaussian1", size=9).config(),
              "data": {"patch_size": 24, "mix": {"poi": 1.0}, "synthetic_images": 1},
              "network": TINY, "steps": 4, "batch_size": 8, "pool_size": 16, "refresh": 2,
              "validation_every": 2, "validation_size": 16}
    source = tmp_path / "config.json"
    source.write_text(json.dumps(config))
    output = tmp_path / "out.pt"
    assert main(["train", "--model", "gaussian1", "--config", str(source), "--seed", "2",
                 "-o", str(output), "--quiet"]) == 0
    written = json.loads(output.with_suffix(".json").read_text())["config"]
    assert written["seed"] == 2 and written["steps"] == 4
    assert PSFEstimator.load(output, model="gaussian1").patch_size == 24
    assert main(["train", "--model", "zernike1", "--config", str(source), "-o",
                 str(tmp_path / "z.pt"), "--quiet"]) == 2
    assert main(["train", "--model", "gaussian1", "--steps", "0", "-o",
                 str(tmp_path / "z.pt"), "--quiet"]) == 2


def test_cli_train_never_writes_over_its_config_or_its_weights(tmp_path):
    from psfmap.cli import main

    source = tmp_path / "run.json"
    source.write_text(json.dumps({"model": "gaussian1", "steps": 2}))
    before = source.read_text()
    # run.pt's card would be run.json, the config being read
    assert main(["train", "--model", "gaussian1", "--config", str(source), "-o",
                 str(tmp_path / "run.pt"), "--quiet"]) == 2
    # a .json weights path would have its card written over the weights
    assert main(["train", "--model", "gaussian1", "--config", str(source), "-o",
                 str(tmp_path / "weights.json"), "--quiet"]) == 2
    assert source.read_text() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.json"]
    with pytest.raises(ValueError, match="ends in .json"):
        train({"model": "gaussian1"}, tmp_path / "weights.json")
    for text in ("{not json", "[1, 2]"):
        source.write_text(text)
        assert main(["train", "--model", "gaussian1", "--config", str(source), "-o",
                     str(tmp_path / "w.pt"), "--quiet"]) == 2
