"""``psfmap deepblur IMG --model NAME -o OUT.tif [--save-gamma g.json]``."""

from __future__ import annotations

import json

import numpy as np
import tifffile

from psfmap.cli import main


def test_cli_restores_and_saves_gamma(tiny_model, tmp_path):
    model_path = tiny_model.save(tmp_path / "tiny.pt").with_suffix(".json")
    image = (np.random.default_rng(0).random((40, 44)) * 100).astype(np.float32)
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, image)
    out, gamma_file = tmp_path / "out.tif", tmp_path / "gamma.json"
    status = main(["deepblur", str(source), "--model", str(model_path), "-o", str(out),
                   "--save-gamma", str(gamma_file), "--quiet"])
    assert status == 0
    restored = tifffile.imread(out)
    assert restored.shape == image.shape and np.all(np.isfinite(restored))
    record = json.loads(gamma_file.read_text())
    assert record["family"] == "zernike7" and np.asarray(record["gamma"]).shape == (1, 7)
    # the saved coefficients given back skip identification and give the same image
    again = tmp_path / "again.tif"
    given = tmp_path / "given.json"
    given.write_text(json.dumps({"gamma": record["gamma"][0]}))
    assert main(["deepblur", str(source), "--model", str(model_path), "-o", str(again),
                 "--gamma", str(given), "--quiet"]) == 0
    np.testing.assert_allclose(tifffile.imread(again), restored, rtol=1e-4, atol=1e-3)


def test_cli_bad_gamma_and_model(tiny_model, tmp_path, capsys):
    model_path = tiny_model.save(tmp_path / "tiny.pt").with_suffix(".json")
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, np.ones((40, 40), np.float32))
    bad = tmp_path / "bad.json"
    bad.write_text("[0.1, 0.2]")
    status = main(["deepblur", str(source), "--model", str(model_path), "-o",
                   str(tmp_path / "o.tif"), "--gamma", str(bad)])
    assert status == 1
    assert "--gamma must hold P = 7 numbers" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()
    status = main(["deepblur", str(source), "--model", "nonexistent", "-o",
                   str(tmp_path / "o.tif")])
    assert status == 2
    assert "neither a shipped Deep-Blur model" in capsys.readouterr().err


def test_cli_projects_identified_gamma_quietly_and_saves_both(tiny_model, tmp_path, capsys):
    """An identifier whose answers leave the admissible set: every frame is restored with the
    projected γ̂, without a warning per frame (as ``psfmap.deepblur.deblur`` does), and
    ``--save-gamma`` records what was used and what the network said."""
    import warnings

    import torch

    with torch.no_grad():
        tiny_model.identifier.head.bias.fill_(5.0)  # far beyond the box in every coefficient
    model_path = tiny_model.save(tmp_path / "far.pt").with_suffix(".json")
    stack = (np.random.default_rng(1).random((3, 40, 40)) * 100).astype(np.float32)
    source, out, gamma_file = tmp_path / "in.tif", tmp_path / "out.tif", tmp_path / "g.json"
    tifffile.imwrite(source, stack, photometric="minisblack")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        status = main(["deepblur", str(source), "--model", str(model_path), "-o", str(out),
                       "--save-gamma", str(gamma_file), "--strict"])
    assert status == 0
    assert "γ̂ of 3 projected onto the set" in capsys.readouterr().out
    record = json.loads(gamma_file.read_text())
    used, raw = np.asarray(record["gamma"]), np.asarray(record["gamma_identified"])
    assert used.shape == raw.shape == (3, 7)
    family = tiny_model.family
    assert all(family.contains(row) for row in used) and not any(
        family.contains(row) for row in raw)
    np.testing.assert_allclose(used, np.stack([family.project(row) for row in raw]))
    # the recorded γ restores the same first frame
    again, given = tmp_path / "again.tif", tmp_path / "given.json"
    given.write_text(json.dumps({"gamma": record["gamma"][0]}))
    tifffile.imwrite(tmp_path / "first.tif", stack[0])
    assert main(["deepblur", str(tmp_path / "first.tif"), "--model", str(model_path), "-o",
                 str(again), "--gamma", str(given), "--strict", "--quiet"]) == 0
    np.testing.assert_allclose(tifffile.imread(again), tifffile.imread(out)[0], rtol=1e-4,
                               atol=1e-3)
