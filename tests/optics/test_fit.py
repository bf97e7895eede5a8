"""Calibration by gradient descent, depth by focal-stack matching, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from psfmap.cli import main
from psfmap.operators import Convolution
from psfmap.optics import (
    Camera,
    Lens,
    Microscope,
    PhaseMask,
    Propagation,
    ZernikeSource,
    crop_bead,
    cubic_phase,
    estimate_depth,
    fit,
)

TRUTH = {5: 0.08, 11: 0.06}
OFFSETS = [-0.6, 0.0, 0.6]


def _microscope(**kwargs):
    source = ZernikeSource(32, na=0.9, wavelength=0.55, pixel_size=0.1, **kwargs)
    return Microscope([source, Camera(crop=17)])


def test_fit_recovers_the_defocus_and_stops_early():
    truth = _microscope(depth=0.4)
    with torch.no_grad():
        images = truth(None, OFFSETS)
    model = _microscope()
    report = fit(model, None, images, "source.depth", depths=OFFSETS, steps=200, lr=0.02,
                 patience=5, tolerance=0.01)
    assert float(report.after["source.depth"]) == pytest.approx(0.4, abs=0.02)
    # it stopped once the loss stalled, long before the step budget
    assert report.stopped_early and report.steps < 100
    assert report.final_loss < 1e-3 * report.loss[0]


@pytest.mark.slow
def test_fit_recovers_defocus_and_aberrations():
    truth = _microscope(zernike=TRUTH, depth=0.3)
    with torch.no_grad():
        images = truth(None, OFFSETS)
    model = _microscope()
    report = fit(model, None, images, ["source.zernike", "source.depth"], depths=OFFSETS,
                 steps=120, lr={"source.zernike": 0.02, "source.depth": 0.05})
    assert report.loss[0] > 0.1 and report.final_loss < 1e-4
    after = report.after
    assert float(after["source.depth"]) == pytest.approx(0.3, abs=0.02)
    assert float(after["source.zernike"][4]) == pytest.approx(0.08, abs=0.01)
    assert float(after["source.zernike"][10]) == pytest.approx(0.06, abs=0.01)
    assert float(report.before["source.depth"]) == 0.0
    # the fixed terms (piston, tip, tilt, defocus) did not move
    assert torch.equal(after["source.zernike"][:4], torch.zeros(4))
    summary = json.loads(json.dumps(report.to_dict()))
    assert summary["params"] == ["source.zernike", "source.depth"]
    assert summary["final_loss"] == pytest.approx(report.final_loss)
    figure = report.figure()
    assert len(figure.axes) == 3 and figure.axes[2].get_title() == "loss"


def test_fit_of_a_phase_mask_in_a_4f_system():
    size = 32
    phase = cubic_phase(size, 6.0, radius=8)
    blocks = lambda mask: [  # noqa: E731
        ZernikeSource(size, na=0.9, wavelength=0.55, pixel_size=0.1), Lens(500.0), mask,
        Lens(500.0, name="tube"), Camera(crop=17)]
    truth = Microscope(blocks(PhaseMask(phase)))
    target = torch.zeros(24, 24)
    target[6:18:4, 5:20:3] = 1.0
    with torch.no_grad():
        images = truth(target)
    model = Microscope(blocks(PhaseMask(size=size)))
    report = fit(model, target, images, ["mask.phase"], steps=150, lr=0.1)
    assert report.final_loss < 0.05 * report.loss[0]
    assert len(report.figure().axes) == 5  # PSFs, the recovered mask and its colour bar, loss


def test_fit_refusals():
    model = _microscope()
    images = torch.rand(3, 17, 17)
    with pytest.raises(ValueError, match=r"params names \['lens.focal_length'\]"):
        fit(model, None, images, ["lens.focal_length"])
    with pytest.raises(ValueError, match="depths has 2 values but images holds 3 images"):
        fit(model, None, images, ["source.depth"], depths=[0.0, 1.0])
    with pytest.raises(ValueError, match=r"simulates \(17, 17\) images but images are"):
        fit(model, None, torch.rand(20, 20), ["source.depth"], steps=1)
    with pytest.raises(ValueError, match="lr must give a rate for each fitted parameter"):
        fit(model, None, images[0], ["source.depth"], lr={"source.zernike": 0.1})


def test_depth_by_focal_stack_matching():
    truth = _microscope(zernike={5: 0.1, 11: 0.05})
    depths = torch.tensor([-0.83, -0.2, 0.45, 1.1])
    with torch.no_grad():
        images = 300 * truth.psf(depths) + 7  # any exposure and background
    estimate = estimate_depth(images, truth, torch.arange(-1.6, 1.61, 0.1))
    assert torch.allclose(estimate.depths, depths, atol=0.03)
    assert estimate.errors.shape == (4, 33)
    # the unaberrated model cannot tell above from below focus
    ideal = estimate_depth(images, _microscope(), torch.arange(-1.6, 1.61, 0.1))
    assert float((ideal.depths - depths).abs().max()) > 0.3


def test_crop_bead_finds_the_brightest_bead():
    stack = np.full((3, 40, 50), 5.0)
    stack[:, 30, 12] = [10.0, 50.0, 20.0]
    crop = crop_bead(stack, 9)
    assert crop.shape == (3, 9, 9)
    assert crop[1, 4, 4] == 45.0 and float(crop.min()) == 0.0


def test_cli_optics_fit(tmp_path, capsys):
    truth = _microscope(zernike=TRUTH, depth=0.2)
    with torch.no_grad():
        psfs = truth.psf_stack(torch.arange(-5, 6) * 0.3).numpy()
    stack = np.full((11, 40, 44), 10.0, dtype=np.float32)
    stack[:, 10:27, 20:37] += 2000 * psfs
    tifffile.imwrite(tmp_path / "beads.tif", stack)
    train = {"blocks": [{"type": "zernike_source", "size": 32, "na": 0.9, "wavelength": 0.55,
                         "pixel_size": 0.1}, {"type": "camera", "crop": 17}]}
    (tmp_path / "train.json").write_text(json.dumps(train))
    out = tmp_path / "fitted.json"
    code = main(["optics", "fit", str(tmp_path / "beads.tif"), "--optics",
                 str(tmp_path / "train.json"), "--planes", "3,5,7", "--z-step", "0.3",
                 "--steps", "80", "--lr", "0.03", "-o", str(out),
                 "--psf", str(tmp_path / "psf.psfmap"), "--figure", str(tmp_path / "fit.png")])
    assert code == 0
    assert "median depth error" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["fit"]["after"]["source.depth"] == pytest.approx(0.2, abs=0.03)
    assert result["depths"]["median_error"] < 0.3
    psf = Convolution.load(tmp_path / "psf.psfmap")
    assert psf.kernel_shape == (17, 17)
    assert (tmp_path / "fit.png").stat().st_size > 1000
    code = main(["optics", "fit", str(tmp_path / "beads.tif"), "--optics",
                 str(tmp_path / "train.json"), "--planes", "3,5,7", "--z-step", "0.3",
                 "--params", "lens.focal_length", "-o", str(tmp_path / "other.json")])
    assert code == 2
    assert "--params names ['lens.focal_length']" in capsys.readouterr().err
    assert not (tmp_path / "other.json").exists()


def test_propagation_block_takes_the_focus_offsets():
    source = ZernikeSource(32, na=0.05, wavelength=0.5, pixel_size=2.0)
    microscope = Microscope([source, Propagation(100.0), Camera(crop=9)], focus="propagation")
    stack = microscope.psf([-100.0, 0.0])
    reference = Microscope([ZernikeSource(32, na=0.05, wavelength=0.5, pixel_size=2.0),
                            Camera(crop=9)]).psf()
    assert torch.allclose(stack[0], reference, atol=1e-6)


def test_cli_refuses_a_broken_optics_file(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "beads.tif", np.ones((5, 20, 20), dtype=np.float32))
    (tmp_path / "train.json").write_text("{not json")
    code = main(["optics", "fit", str(tmp_path / "beads.tif"), "--optics",
                 str(tmp_path / "train.json"), "--planes", "1,2,3", "--z-step", "0.3",
                 "-o", str(tmp_path / "out.json")])
    assert code == 1
    assert "is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()
