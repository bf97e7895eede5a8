"""``psfmap deconvolve STACK --psf PSF3D``: z-stacks restored as volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from psfmap.cli import main
from psfmap.io import read_image, write_image
from psfmap.operators import Convolution
from psfmap.psf import gaussian
from psfmap.restore.volume import richardson_lucy_volume


def _psf3d() -> np.ndarray:
    z = np.exp(-0.5 * ((np.arange(5) - 2) / 1.2) ** 2)
    psf = z[:, None, None] * gaussian(7, 1.1, dtype=torch.float64).numpy()[None]
    return (psf / psf.sum()).astype(np.float32)


@pytest.fixture
def stack(tmp_path):
    rng = np.random.default_rng(0)
    truth = np.ones((10, 24, 20), dtype=np.float32)
    truth[rng.integers(2, 8, 8), rng.integers(3, 21, 8), rng.integers(3, 17, 8)] = 40.0
    blurred = Convolution(_psf3d())(torch.from_numpy(truth)).numpy().clip(0, None)
    plain = tmp_path / "stack.tif"
    write_image(plain, blurred, pixel_size=0.1)
    imagej = tmp_path / "stack_ij.tif"
    tifffile.imwrite(imagej, blurred, imagej=True, resolution=(10.0, 10.0),
                     metadata={"spacing": 0.3, "unit": "um", "axes": "ZYX"})
    psf = tmp_path / "psf3d.tif"
    tifffile.imwrite(psf, _psf3d())
    return {"plain": plain, "imagej": imagej, "psf": psf, "blurred": blurred, "tmp": tmp_path}


def test_a_3d_psf_restores_the_stack_as_a_volume_and_keeps_voxel_sizes(stack, capsys):
    out, views = stack["tmp"] / "restored.tif", stack["tmp"] / "views.png"
    assert main(["deconvolve", str(stack["imagej"]), "--psf", str(stack["psf"]), "--method",
                 "rl", "--iterations", "6", "-o", str(out), "--views", str(views)]) == 0
    restored, metadata = read_image(out)
    psf = _psf3d().astype(np.float64)
    expected = richardson_lucy_volume(stack["blurred"], Convolution(psf / psf.sum()),
                                      iterations=6)
    np.testing.assert_allclose(restored, expected, rtol=1e-4, atol=1e-5)
    assert metadata["pixel_size"] == pytest.approx(0.1)
    with tifffile.TiffFile(out) as tif:
        description = json.loads(tif.pages[0].description)
    assert description["z_step"] == pytest.approx(0.3) and description["volume"] is True
    assert views.stat().st_size > 1000 and views.read_bytes()[:4] == b"\x89PNG"
    assert "volume(s) of 10x24x20 (z-step 0.3 µm)" in capsys.readouterr().out


def test_z_step_is_required_when_the_metadata_has_none(stack, capsys):
    out = stack["tmp"] / "r.tif"
    assert main(["deconvolve", str(stack["plain"]), "--psf", str(stack["psf"]), "-o",
                 str(out)]) != 0
    assert "pass --z-step" in capsys.readouterr().err
    assert main(["deconvolve", str(stack["plain"]), "--psf", str(stack["psf"]), "--z-step",
                 "0.3", "--iterations", "2", "--accelerate", "-o", str(out)]) == 0
    assert read_image(out)[0].shape == (10, 24, 20)


def test_plane_by_plane_keeps_the_former_behaviour(stack, capsys):
    out = stack["tmp"] / "planes.tif"
    assert main(["deconvolve", str(stack["plain"]), "--psf", str(stack["psf"]),
                 "--plane-by-plane", "--iterations", "2", "-o", str(out)]) == 0
    assert "deconvolved 10 frame(s)" in capsys.readouterr().out


def test_bad_stacks_fail_with_one_sentence(stack, capsys):
    four = stack["tmp"] / "four.tif"
    tifffile.imwrite(four, np.ones((2, 10, 24, 20), dtype=np.float32))
    assert main(["deconvolve", str(four), "--psf", str(stack["psf"]), "--z-step", "0.3",
                 "-o", str(stack["tmp"] / "x.tif")]) != 0
    assert "cannot tell which axis" in capsys.readouterr().err
    shallow = stack["tmp"] / "shallow.tif"
    tifffile.imwrite(shallow, np.ones((3, 24, 20), dtype=np.float32), photometric="minisblack")
    assert main(["deconvolve", str(shallow), "--psf", str(stack["psf"]), "--z-step", "0.3",
                 "-o", str(stack["tmp"] / "y.tif")]) != 0
    assert "deeper than the stack" in capsys.readouterr().err


def test_a_psf_with_another_z_step_is_refused(stack, capsys):
    psf = stack["tmp"] / "psf_1um.tif"
    write_image(psf, _psf3d(), pixel_size=0.1, z_step=1.0)
    out = stack["tmp"] / "r.tif"
    assert main(["deconvolve", str(stack["imagej"]), "--psf", str(psf), "-o", str(out)]) == 1
    assert "has a z-step of 1 µm, the stack 0.3 µm" in capsys.readouterr().err
    assert not out.exists()
    # the stack's step given on the command line is compared the same way
    assert main(["deconvolve", str(stack["plain"]), "--psf", str(psf), "--z-step", "0.3",
                 "-o", str(out)]) == 1
    assert "same axial sampling" in capsys.readouterr().err
    assert main(["deconvolve", str(stack["plain"]), "--psf", str(psf), "--z-step", "1.0",
                 "--iterations", "1", "-o", str(out)]) == 0


def test_a_3d_psf_gets_the_checks_of_a_2d_one(stack, capsys):
    """A measured 3-D PSF on its camera background is flagged as a 2-D one is (it was taken
    silently: 57 % of a real bead's cropped flux was background); negative values are refused
    naming --clip-psf, and clipped with a warning under it."""
    base = ["deconvolve", str(stack["imagej"]), "--iterations", "2", "-o",
            str(stack["tmp"] / "r.tif"), "--quiet"]
    assert main([*base, "--psf", str(stack["psf"])]) == 0
    assert capsys.readouterr().err == ""
    raw = stack["tmp"] / "raw3d.tif"
    tifffile.imwrite(raw, 100 * _psf3d() + 1.0)
    assert main([*base, "--psf", str(raw)]) == 0
    warning = capsys.readouterr().err
    assert "border level of --psf raw3d.tif" in warning and "subtract the background" in warning
    noisy = stack["tmp"] / "noisy3d.tif"
    psf = _psf3d()
    psf[0, 0, 0] = -1e-4
    tifffile.imwrite(noisy, psf)
    assert main([*base, "--psf", str(noisy)]) == 1
    assert "--clip-psf" in capsys.readouterr().err
    assert main([*base, "--psf", str(noisy), "--clip-psf"]) == 0
    assert "--clip-psf set 1 negative values" in capsys.readouterr().err


def test_a_raw_bead_psf_is_cropped_and_freed_of_its_background(stack, capsys):
    """A measured PSF as it comes: a field wider than the stack, on a camera background.
    Refused with the option to use; with --psf-crop and --psf-background it restores exactly
    as the clean PSF does, and the output says what was done."""
    raw = np.ones((5, 40, 40), np.float32)
    raw[:, 10:17, 20:27] += 100 * _psf3d()
    raw_file = stack["tmp"] / "raw_field.tif"
    tifffile.imwrite(raw_file, raw)
    clean, prepared = stack["tmp"] / "clean.tif", stack["tmp"] / "prepared.tif"
    base = ["deconvolve", str(stack["imagej"]), "--iterations", "3", "--quiet"]
    assert main([*base, "--psf", str(raw_file), "-o", str(prepared)]) == 1
    assert "--psf-crop" in capsys.readouterr().err and not prepared.exists()
    assert main([*base, "--psf", str(stack["psf"]), "-o", str(clean)]) == 0
    assert main([*base, "--psf", str(raw_file), "--psf-crop", "7", "--psf-background",
                 "-o", str(prepared)]) == 0
    assert capsys.readouterr().err == ""  # no pedestal left to warn about
    np.testing.assert_allclose(read_image(prepared)[0], read_image(clean)[0], rtol=1e-4,
                               atol=1e-5)
    with tifffile.TiffFile(prepared) as tif:
        blur = json.loads(tif.pages[0].description)["blur"]
    assert "cropped to 7 px, background subtracted" in blur
    assert main([*base, "--psf", str(raw_file), "--psf-crop", "8", "-o", str(prepared)]) == 2
    assert "odd number" in capsys.readouterr().err
