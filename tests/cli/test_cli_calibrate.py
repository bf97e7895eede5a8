"""psfmap calibrate / psfmap identify on the command line."""

from __future__ import annotations

import numpy as np
import pytest

from psfmap.calibrate import OperatorFamily
from psfmap.calibrate.synthetic import synthetic_calibration_set
from psfmap.cli import main
from psfmap.operators import ProductConvolution

tifffile = pytest.importorskip("tifffile")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_calibrate")
    model, _, images, _ = synthetic_calibration_set(4, (192, 192), 36, psf_size=17, seed=1)
    stack = np.stack(images).astype(np.float32)
    tifffile.imwrite(folder / "beads.tif", stack, photometric="minisblack")
    tifffile.imwrite(folder / "extra.tif", stack[0])
    new, positions = model.bead_image((0.02, 0.0), 14, min_distance=40, seed=5)
    tifffile.imwrite(folder / "sample.tif", new.astype(np.float32))
    np.savetxt(folder / "beads.csv", positions, delimiter=",")
    return folder


@pytest.mark.slow
def test_calibrate_then_identify(files, capsys, check_figure):
    family_path = files / "family.psfmap"
    figure = files / "calibration.png"
    status = main([
        "calibrate", str(files / "beads.tif"), str(files / "extra.tif"), "--slices", "0:3",
        "--psf-size", "21", "--psf-sigma", "1.35", "-o", str(family_path),
        "--figure", str(figure), "--pixel-size", "0.08",
    ])
    assert status == 0
    out = capsys.readouterr().out
    assert "calibrated 4 condition(s)" in out
    family = OperatorFamily.load(family_path)
    assert family.n_conditions == 4  # 3 slices of the stack + 1 image
    assert family.metadata["conditions"][-1] == "extra.tif"
    assert family.metadata["pixel_size"] == pytest.approx(0.08)
    check_figure(figure)

    operator_path = files / "operator.psfmap"
    status = main([
        "identify", str(files / "sample.tif"), "--family", str(family_path),
        "-o", str(operator_path), "--cone",
    ])
    assert status == 0
    assert "identified the operator from" in capsys.readouterr().out
    operator = ProductConvolution.load(operator_path)
    assert operator.image_shape == (192, 192)
    assert float(operator.psf_at(96, 96).sum()) == pytest.approx(1.0, abs=0.05)

    status = main([
        "identify", str(files / "sample.tif"), "--family", str(family_path),
        "-o", str(files / "operator2.psfmap"), "--positions", str(files / "beads.csv"), "--quiet",
    ])
    assert status == 0
    assert capsys.readouterr().out == ""
    # a frame of a stack: --plane (or its old name --slice), as the other commands take it
    stack = files / "sample_stack.tif"
    tifffile.imwrite(stack, np.stack([np.zeros((192, 192), np.float32),
                                      tifffile.imread(files / "sample.tif")]),
                     photometric="minisblack")
    for flag in ("--plane", "--slice"):
        assert main(["identify", str(stack), flag, "1", "--family", str(family_path), "-o",
                     str(files / "operator3.psfmap"), "--cone", "--quiet"]) == 0
        again = ProductConvolution.load(files / "operator3.psfmap")
        np.testing.assert_allclose(again.psf_at(96, 96), operator.psf_at(96, 96), atol=1e-6)
    assert main(["identify", str(stack), "--family", str(family_path), "-o",
                 str(files / "operator4.psfmap")]) == 2
    assert "choose one with --plane" in capsys.readouterr().err


def test_cli_errors(files, capsys):
    stack = str(files / "beads.tif")
    assert main(["calibrate", stack, "-o", stack]) == 2  # would overwrite an input
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["calibrate", str(files / "missing.tif"), "-o", str(files / "f.psfmap")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["calibrate", stack, "--slices", "x", "-o", str(files / "f.psfmap")]) == 2
    assert main(["calibrate", stack, "--slices", "5:9", "-o", str(files / "f.psfmap")]) == 1
    assert "selects no slice" in capsys.readouterr().err
    assert main(["identify", stack, "--family", stack, "-o", str(files / "o.psfmap")]) == 1
    assert "psfmap file" in capsys.readouterr().err  # a TIFF is not an operator family
    empty = files / "empty.csv"
    empty.write_text("")
    assert main(["identify", stack, "--family", stack, "--positions", str(empty), "-o",
                 str(files / "o.psfmap")]) == 1
    assert "positions file" in capsys.readouterr().err
    empty.write_text("# row, col\n")
    assert main(["identify", stack, "--family", stack, "--positions", str(empty), "-o",
                 str(files / "o.psfmap")]) == 1
    error = capsys.readouterr().err
    assert "holds no rows" in error and len(error.strip().splitlines()) == 1
    assert main(["calibrate", stack, "--pixel-size", "-0.1", "-o", str(files / "f.psfmap")]) == 2
    assert main(["calibrate", stack, "--min-beads", "0", "-o", str(files / "f.psfmap")]) == 2


def test_calibrate_names_the_slice_short_of_beads(files, capsys):
    """A slice of a z-stack with too few beads is named by file and slice, and the message
    says how to keep the in-focus slices; with --slices given, no such advice."""
    stack = np.stack([tifffile.imread(files / "beads.tif")[0], np.zeros((192, 192), np.float32)])
    tifffile.imwrite(files / "blank_slice.tif", stack, photometric="minisblack")
    out = files / "never.psfmap"
    assert main(["calibrate", str(files / "blank_slice.tif"), "--psf-size", "21",
                 "-o", str(out)]) == 1
    error = capsys.readouterr().err
    assert "blank_slice.tif[1]" in error and "images[" not in error
    assert "--slices a:b" in error and "--volume" in error
    assert not out.exists()
    assert main(["calibrate", str(files / "blank_slice.tif"), "--slices", "1:2",
                 "--psf-size", "21", "-o", str(out)]) == 1
    error = capsys.readouterr().err
    assert "blank_slice.tif[1]" in error and "--slices a:b" not in error
