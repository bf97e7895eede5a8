"""psfmap estimate / deblur / depth command lines (tiny untrained CNN weights file)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

import psfmap
from psfmap.blind import DepthCalibration
from psfmap.blind.network import PSFRegressor
from psfmap.cli import main
from psfmap.operators.psf_map import PSFMap
from psfmap.training.loop import save_checkpoint


def _weights(path, model: str):
    """A tiny untrained network whose validity logit is biased to 'valid' (+6), so the
    pipeline runs end to end; its parameters are meaningless, its shapes are real."""
    family = psfmap.psf.model(model, size=9)
    network_config = {"patch_size": 16, "n_params": family.n_params, "width": 4,
                      "blocks": [1], "hidden": 8}
    network = PSFRegressor.from_config(network_config)
    with torch.no_grad():
        network.head[-1].bias[-1] = 6.0
    config = {"model": model, "family": family.config(), "network": network_config,
              "data": {"patch_size": 16}}
    return save_checkpoint(path, network, config)


@pytest.fixture
def image_file(tmp_path):
    sharp = psfmap.simulate.samples.bundled_sample("neuron")[96:160, 96:160]
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, (sharp * 1000).astype(np.uint16))
    return path


def test_estimate_with_a_shipped_model_reports_and_saves_its_predicted_error(
        tmp_path, image_file, capsys):
    saved = tmp_path / "shipped.psfmap"
    assert main(["estimate", str(image_file), "--model", "gaussian1", "--grid", "2x2",
                 "--save-map", str(saved)]) == 0
    assert "predicted error width ±" in capsys.readouterr().out
    loaded = psfmap.PSFMap.load(saved)
    assert loaded.std.shape == (2, 2, 1) and np.all(loaded.std > 0)


def test_estimate_writes_map_and_figure(tmp_path, image_file, capsys, check_figure):
    weights = _weights(tmp_path / "g1.pt", "gaussian1")
    status = main(["estimate", str(image_file), "--weights", str(weights), "--stride", "16",
                   "--save-map", str(tmp_path / "map.psfmap"),
                   "--figure", str(tmp_path / "map.png")])
    assert status == 0
    psf_map = PSFMap.load(tmp_path / "map.psfmap")
    assert psf_map.grid == (4, 4) and psf_map.image_shape == (64, 64)
    check_figure(tmp_path / "map.png")
    assert "4x4 gaussian1 map" in capsys.readouterr().out


def test_saved_maps_keep_the_source_and_its_pixel_size(tmp_path, image_file):
    weights = _weights(tmp_path / "g1.pt", "gaussian1")
    calibrated = tmp_path / "calibrated.tif"
    psfmap.io.write_image(calibrated, tifffile.imread(image_file), pixel_size=0.1)
    for command in (["estimate"], ["deblur", "--iterations", "1", "-o",
                                   str(tmp_path / "restored.tif")]):
        saved = tmp_path / f"{command[0]}.psfmap"
        assert main([*command, str(calibrated), "--weights", str(weights), "--grid", "2x2",
                     "--save-map", str(saved), "--quiet"]) == 0
        metadata = PSFMap.load(saved).metadata
        assert metadata["source"] == "calibrated.tif" and metadata["pixel_size"] == 0.1


def test_estimate_takes_o_for_its_map_and_a_wrong_option_names_the_command(
        tmp_path, image_file, capsys):
    weights = _weights(tmp_path / "g1.pt", "gaussian1")
    saved = tmp_path / "map.psfmap"
    assert main(["estimate", str(image_file), "--weights", str(weights), "--grid", "2x2",
                 "-o", str(saved), "--quiet"]) == 0
    assert PSFMap.load(saved).params.shape[:2] == (2, 2)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", str(image_file), "--weights", str(weights), "--bogus", "1"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    # the command's own usage and name, not psfmap's list of commands
    assert "psfmap estimate: error: unrecognized arguments: --bogus 1" in error
    assert "usage: psfmap estimate" in error


def test_deblur_writes_restored_image(tmp_path, image_file):
    weights = _weights(tmp_path / "g1.pt", "gaussian1")
    out = tmp_path / "restored.tif"
    status = main(["deblur", str(image_file), "--weights", str(weights), "--iterations", "2",
                   "--grid", "2x2", "-o", str(out), "--save-map", str(tmp_path / "m.psfmap"),
                   "--quiet"])
    assert status == 0
    restored = tifffile.imread(out)
    assert restored.shape == (64, 64) and np.all(np.isfinite(restored))
    # re-use the saved map instead of estimating
    again = tmp_path / "again.tif"
    assert main(["deblur", str(image_file), "--psf-map", str(tmp_path / "m.psfmap"),
                 "--iterations", "2", "-o", str(again), "--quiet"]) == 0
    np.testing.assert_allclose(tifffile.imread(again), restored, rtol=1e-5, atol=1e-5)
    # in tiles of 32 px with 32 px of context: the same plain RL restoration
    whole, tiled = tmp_path / "whole.tif", tmp_path / "tiled.tif"
    common = ["--psf-map", str(tmp_path / "m.psfmap"), "--iterations", "2", "--tv", "0",
              "--quiet"]
    assert main(["deblur", str(image_file), *common, "-o", str(whole)]) == 0
    assert main(["deblur", str(image_file), *common, "--tile", "32", "--overlap", "32",
                 "-o", str(tiled)]) == 0
    np.testing.assert_allclose(tifffile.imread(tiled), tifffile.imread(whole), rtol=1e-5,
                               atol=1e-5 * float(tifffile.imread(whole).max()))
    assert main(["deblur", str(image_file), *common, "--tile", "0", "-o", str(whole)]) == 0
    for bad in (["--tile", "-1"], ["--overlap", "-3"]):
        assert main(["deblur", str(image_file), *common, *bad, "-o",
                     str(tmp_path / "bad.tif")]) == 2
    assert not (tmp_path / "bad.tif").exists()


def test_stack_gets_one_map_per_frame(tmp_path, image_file, capsys, check_figure):
    weights = _weights(tmp_path / "g1.pt", "gaussian1")
    plane = tifffile.imread(image_file)
    stack = np.stack([plane, plane[::-1], plane.T, plane // 2]).reshape(2, 2, 64, 64)
    stack_file = tmp_path / "stack.tif"
    tifffile.imwrite(stack_file, stack)
    out, maps_file = tmp_path / "restored.tif", tmp_path / "maps.psfmap"
    assert main(["deblur", str(stack_file), "--weights", str(weights), "--iterations", "2",
                 "--grid", "2x2", "-o", str(out), "--save-map", str(maps_file),
                 "--figure", str(tmp_path / "maps.png")]) == 0
    assert "4 frames of 64x64" in capsys.readouterr().out
    restored = tifffile.imread(out)
    assert restored.shape == (2, 2, 64, 64)
    maps = psfmap.load_psf_maps(maps_file)
    assert len(maps) == 4 and [m.metadata["frame"] for m in maps] == [0, 1, 2, 3]
    check_figure(tmp_path / "maps.png")
    # every frame as if deblurred alone: frame 2 through --plane of its 3-D stack
    planes = tmp_path / "planes.tif"
    tifffile.imwrite(planes, stack.reshape(4, 64, 64), photometric="minisblack")
    alone = tmp_path / "alone.tif"
    assert main(["deblur", str(planes), "--plane", "2", "--weights", str(weights),
                 "--iterations", "2", "--grid", "2x2", "-o", str(alone), "--quiet"]) == 0
    np.testing.assert_array_equal(tifffile.imread(alone), restored[1, 0])
    # --plane counts the frames of every leading axis: frame 2 of the (2, 2) stack is [1, 0]
    assert main(["deblur", str(stack_file), "--plane", "2", "--weights", str(weights),
                 "--iterations", "2", "--grid", "2x2", "-o", str(alone), "--quiet"]) == 0
    np.testing.assert_array_equal(tifffile.imread(alone), restored[1, 0])
    assert main(["estimate", str(stack_file), "--plane", "4", "--weights", str(weights),
                 "--save-map", str(tmp_path / "p.psfmap")]) == 2
    assert "--plane must be in [0, 3]" in capsys.readouterr().err
    # the saved maps replayed: one per frame, or one map for every frame
    again = tmp_path / "again.tif"
    assert main(["deblur", str(stack_file), "--psf-map", str(maps_file), "--iterations", "2",
                 "-o", str(again), "--quiet"]) == 0
    np.testing.assert_array_equal(tifffile.imread(again), restored)
    maps[0].save(tmp_path / "one.psfmap")
    assert main(["deblur", str(stack_file), "--psf-map", str(tmp_path / "one.psfmap"),
                 "--iterations", "2", "--energy", "0.9999", "-o", str(again), "--quiet"]) == 0
    assert tifffile.imread(again).shape == (2, 2, 64, 64)
    assert main(["deblur", str(stack_file), "--psf-map", str(maps_file), "--energy", "2",
                 "-o", str(tmp_path / "x.tif")]) == 2
    # a map file for another frame count, or for a single image
    assert main(["deblur", str(image_file), "--psf-map", str(maps_file), "-o",
                 str(tmp_path / "x.tif")]) == 1
    assert "holds 4 maps" in capsys.readouterr().err
    assert main(["estimate", str(stack_file), "--weights", str(weights), "--grid", "2x2",
                 "--save-map", str(maps_file)]) == 0
    assert "4 2x2 gaussian1 maps" in capsys.readouterr().out


def test_depth_map_and_calibrate(tmp_path, image_file, capsys):
    weights = _weights(tmp_path / "z3.pt", "zernike3")
    plane = tifffile.imread(image_file)
    # five slices: the twin-invariant fit has four numbers (slope, step, intercept, axis)
    stack = np.stack([plane, np.roll(plane, 5, axis=1), plane[:, ::-1], plane[::-1], plane.T])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    raw = tmp_path / "depth_raw.tif"
    assert main(["depth", str(image_file), "--weights", str(weights), "-o", str(raw),
                 "--quiet"]) == 0
    assert tifffile.imread(raw).shape == (64, 64)
    calibration_file = tmp_path / "cal.psfmap"
    status = main(["depth", "calibrate", str(tmp_path / "stack.tif"), "--weights",
                   str(weights), "--z-step", "0.1", "-o", str(calibration_file), "--quiet"])
    # an untrained network may give the same raw depth for all slices: then a clear error
    if status == 0:
        calibration = DepthCalibration.load(calibration_file)
        assert calibration.z_range == (0.0, pytest.approx(0.4))
        cells = tmp_path / "depth_um.tif"
        assert main(["depth", str(image_file), "--weights", str(weights), "--calibration",
                     str(calibration_file), "--cells", "-o", str(cells), "--quiet"]) == 0
        assert tifffile.imread(cells).ndim == 2
    else:
        assert status == 1
        assert "do not resolve depth" in capsys.readouterr().err
    twin_file = tmp_path / "twin.psfmap"
    status = main(["depth", "calibrate", str(tmp_path / "stack.tif"), "--weights",
                   str(weights), "--z-step", "0.1", "--formula", "twin-invariant", "-o",
                   str(twin_file), "--quiet"])
    if status == 0:
        assert DepthCalibration.load(twin_file).formula == "twin-invariant"
        assert main(["depth", str(image_file), "--weights", str(weights), "--calibration",
                     str(twin_file), "-o", str(tmp_path / "twin_um.tif"), "--quiet"]) == 0
    else:
        assert status == 1 and not twin_file.exists()
    # the formula is the calibration's: not an option of the depth map
    assert main(["depth", str(image_file), "--weights", str(weights), "--formula",
                 "twin-invariant", "-o", str(tmp_path / "x.tif")]) == 2


def test_bad_command_lines(tmp_path, image_file, capsys):
    weights = _weights(tmp_path / "g1.pt", "gaussian1")
    # nothing to write
    assert main(["estimate", str(image_file), "--weights", str(weights)]) == 2
    # overwriting the input
    assert main(["deblur", str(image_file), "--weights", str(weights), "-o",
                 str(image_file)]) == 2
    # calibrate without z-step
    assert main(["depth", "calibrate", str(image_file), "--weights", str(weights),
                 "-o", str(tmp_path / "c.psfmap")]) == 2
    # a gaussian model cannot give depth
    assert main(["depth", str(image_file), "--weights", str(weights), "-o",
                 str(tmp_path / "d.tif")]) == 1
    assert "zernike3" in capsys.readouterr().err
    # constant image: clear one-line error
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.full((40, 40), 7, dtype=np.uint16))
    assert main(["estimate", str(flat), "--weights", str(weights), "--save-map",
                 str(tmp_path / "x.psfmap")]) == 1
    assert "no texture" in capsys.readouterr().err
    # a weights file for another model
    assert main(["estimate", str(image_file), "--weights", str(weights), "--model", "zernike3",
                 "--save-map", str(tmp_path / "z.psfmap")]) == 1
    assert "is for the model 'gaussian1'" in capsys.readouterr().err
    # an empty frame in a stack: the error names it, nothing is written
    stack = tmp_path / "stack.tif"
    planes = np.stack([tifffile.imread(image_file), np.zeros((64, 64), dtype=np.uint16)])
    tifffile.imwrite(stack, planes)
    assert main(["deblur", str(stack), "--weights", str(weights), "-o",
                 str(tmp_path / "y.tif"), "--save-map", str(tmp_path / "y.psfmap")]) == 1
    assert "frame 1 of 2" in capsys.readouterr().err
    assert not (tmp_path / "y.tif").exists() and not (tmp_path / "y.psfmap").exists()
    # depth takes one plane of a stack; --plane only applies to 3-D stacks
    assert main(["depth", str(stack), "--weights", str(weights), "-o",
                 str(tmp_path / "d.tif")]) == 2
    assert main(["estimate", str(image_file), "--weights", str(weights), "--plane", "0",
                 "--save-map", str(tmp_path / "y.psfmap")]) == 2


def test_outputs_are_checked_first_and_a_failed_run_leaves_none(tmp_path, image_file,
                                                                 monkeypatch, capsys):
    weights = _weights(tmp_path / "g1.pt", "gaussian1")
    image, before = str(image_file), set(tmp_path.iterdir())
    bad_outputs = [
        ["--save-map", str(tmp_path / "x.png"), "--figure", str(tmp_path / "x.png")],  # twice
        ["--save-map", str(tmp_path / "map.tif")],            # a psfmap file under an image name
        ["--save-map", str(tmp_path / "m.psfmap"), "--figure", str(tmp_path / "f.xyz")],
        ["--save-map", str(tmp_path)],                        # a folder
    ]
    for outputs in bad_outputs:
        assert main(["estimate", image, "--weights", str(weights), *outputs]) == 2
    assert main(["deblur", image, "--weights", str(weights), "-o", str(tmp_path / "r.png")]) == 2
    assert set(tmp_path.iterdir()) == before
    capsys.readouterr()

    # a failure after the map was written: the map goes too
    def broken_figure(*_, **__):
        raise RuntimeError("no display")

    # a first run writes the map; a second one that fails at the figure leaves it untouched
    saved = tmp_path / "m.psfmap"
    assert main(["estimate", image, "--weights", str(weights), "--grid", "2x2", "--save-map",
                 str(saved), "--quiet"]) == 0
    first = saved.read_bytes()
    monkeypatch.setattr(psfmap.figures, "plot_psf_map", broken_figure)
    assert main(["estimate", image, "--weights", str(weights), "--save-map", str(saved),
                 "--figure", str(tmp_path / "f.png")]) == 1
    assert "no display" in capsys.readouterr().err
    assert saved.read_bytes() == first
    assert set(tmp_path.iterdir()) == before | {saved}  # no figure, no temporary file


def test_estimation_flags_with_a_given_map_and_bad_windows_are_usage_errors(tmp_path,
                                                                            image_file):
    saved = tmp_path / "m.psfmap"
    PSFMap("gaussian1", np.ones((2, 2, 1)), (64, 64)).save(saved)
    out = str(tmp_path / "r.tif")
    for extra in (["--model", "gaussian1"], ["--window", "32"], ["--median", "0"]):
        assert main(["deblur", str(image_file), "--psf-map", str(saved), *extra,
                     "-o", out]) == 2
    for bad in (["--window", "0"], ["--stride", "-4"], ["--grid", "0x3"]):
        assert main(["estimate", str(image_file), *bad, "--save-map",
                     str(tmp_path / "e.psfmap")]) == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cells.tif", "m.psfmap"]


def test_depth_calibrate_refuses_too_few_slices_before_any_work(tmp_path, image_file, capsys):
    plane = tifffile.imread(image_file)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([plane] * 6), photometric="minisblack")
    weights = _weights(tmp_path / "z3.pt", "zernike3")
    for formula, slices, needed in (("paper", "0:3", 4), ("twin-invariant", "0:4", 5)):
        assert main(["depth", "calibrate", str(tmp_path / "stack.tif"), "--weights",
                     str(weights), "--z-step", "0.1", "--slices", slices, "--formula", formula,
                     "-o", str(tmp_path / "c.psfmap")]) == 2
        assert f"needs at least {needed} slices" in capsys.readouterr().err
    assert not (tmp_path / "c.psfmap").exists()
