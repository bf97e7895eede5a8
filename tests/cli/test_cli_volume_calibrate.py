"""psfmap calibrate --volume and psfmap simulate of z-stacks on the command line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from psfmap.calibrate.volume_synthetic import gaussian_psf_3d, synthetic_bead_volume
from psfmap.cli import main
from psfmap.io import read_image, write_image
from psfmap.operators import Convolution, load
from psfmap.operators.volume import VolumeProductConvolution

SIZES = ["--psf-size", "13", "--psf-depth", "11", "--psf-sigma", "1.0", "--psf-sigma-z", "1.3"]


@pytest.fixture(scope="module")
def beads(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_volume_calibrate")
    sample = synthetic_bead_volume((28, 80, 80), grid=(3, 2), psf_shape=(7, 9, 9),
                                   margin=(8, 9, 9), spacing=16, model="gaussian",
                                   astigmatism=0.2, photons=1e6, psf_sigma=1.0, psf_sigma_z=1.3,
                                   seed=1)
    write_image(folder / "beads.tif", sample.stack, pixel_size=0.1, z_step=0.25, axes="ZYX")
    write_image(folder / "plain.tif", sample.stack, axes="ZYX")
    return folder, sample


def test_calibrate_volume_writes_a_3d_operator(beads, capsys):
    folder, sample = beads
    output = folder / "beads3d.psfmap"
    assert main(["calibrate", str(folder / "beads.tif"), "--volume", "-o", str(output),
                 *SIZES]) == 0
    assert "calibrated a 3-D operator from 16 beads" in capsys.readouterr().out
    operator = load(output)
    assert isinstance(operator, VolumeProductConvolution)
    assert operator.image_shape == sample.stack.shape and operator.kernel_shape == (11, 13, 13)
    assert operator.metadata["z_step"] == pytest.approx(0.25)
    assert operator.metadata["pixel_size"] == pytest.approx(0.1)
    assert operator.metadata["calibration"]["depth_variant"]


@pytest.mark.slow
def test_calibrate_volume_draws_orthogonal_views(beads, check_figure):
    folder, _ = beads
    figure = folder / "views.png"
    assert main(["calibrate", str(folder / "beads.tif"), "--volume", "--slices", "0:28", "-o",
                 str(folder / "views.psfmap"), "--figure", str(figure), *SIZES]) == 0
    check_figure(figure)


def test_calibrate_volume_needs_a_z_step(beads, capsys):
    folder, _ = beads
    assert main(["calibrate", str(folder / "plain.tif"), "--volume", "-o",
                 str(folder / "none.psfmap"), *SIZES]) == 2
    assert "pass --z-step" in capsys.readouterr().err
    assert not (folder / "none.psfmap").exists()
    assert main(["calibrate", str(folder / "plain.tif"), "--z-step", "0.3", "-o",
                 str(folder / "none.psfmap")]) == 2
    assert "add --volume" in capsys.readouterr().err


def test_simulate_blurs_a_z_stack_with_a_3d_psf_and_keeps_voxel_sizes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    sharp = (rng.random((12, 40, 40)) < 0.01).astype(np.float32)
    psf = gaussian_psf_3d((7, 9, 9), (1.5, 1.0, 1.0)).numpy().astype(np.float32)
    write_image(tmp_path / "sharp.tif", sharp, pixel_size=0.1, z_step=0.3, axes="ZYX")
    write_image(tmp_path / "psf.tif", psf, axes="ZYX")
    assert main(["simulate", str(tmp_path / "sharp.tif"), "--psf", str(tmp_path / "psf.tif"),
                 "-o", str(tmp_path / "blurred.tif")]) == 0
    assert "simulated 3-D blur" in capsys.readouterr().out
    blurred, metadata = read_image(tmp_path / "blurred.tif")
    expected = Convolution(torch.from_numpy(psf)).forward(torch.from_numpy(sharp)).numpy()
    assert np.allclose(blurred, expected, atol=1e-6)
    assert metadata["z_step"] == pytest.approx(0.3)
    assert metadata["pixel_size"] == pytest.approx(0.1)


def test_simulate_with_a_calibrated_operator_adds_seeded_noise(beads, tmp_path, capsys):
    folder, sample = beads
    operator = folder / "op.psfmap"
    sample.operator.save(operator, metadata={"z_step": 0.25})
    sharp = np.zeros(sample.stack.shape, dtype=np.float32)
    sharp[14, 40, 40] = 1.0
    write_image(tmp_path / "sharp.tif", sharp, axes="ZYX")
    outputs = []
    for name in ("a.tif", "b.tif"):
        assert main(["simulate", str(tmp_path / "sharp.tif"), "--operator", str(operator),
                     "--photons", "200", "--seed", "3", "-o", str(tmp_path / name)]) == 0
        outputs.append(read_image(tmp_path / name))
    assert np.array_equal(outputs[0][0], outputs[1][0])
    assert outputs[0][1]["z_step"] == pytest.approx(0.25)  # from the operator's metadata
    clean = sample.operator.forward(torch.from_numpy(sharp)).numpy()
    assert np.corrcoef(outputs[0][0].ravel(), clean.ravel())[0, 1] > 0.9


def test_simulate_refuses_a_z_stack_without_a_3d_blur(tmp_path, capsys):
    write_image(tmp_path / "sharp.tif", np.ones((6, 32, 32), np.float32), axes="ZYX")
    assert main(["simulate", str(tmp_path / "sharp.tif"), "-o", str(tmp_path / "o.tif")]) == 1
    assert "--psf or --operator" in capsys.readouterr().err
    write_image(tmp_path / "flat.tif", np.ones((32, 32), np.float32))
    assert main(["simulate", str(tmp_path / "sharp.tif"), "--psf", str(tmp_path / "flat.tif"),
                 "-o", str(tmp_path / "o.tif")]) == 1
    assert "3-D PSF" in capsys.readouterr().err
    write_image(tmp_path / "psf.tif", gaussian_psf_3d((5, 7, 7), (1, 1, 1)).numpy(),
                z_step=0.5, axes="ZYX")
    assert main(["simulate", str(tmp_path / "sharp.tif"), "--psf", str(tmp_path / "psf.tif"),
                 "--z-step", "0.2", "-o", str(tmp_path / "o.tif")]) == 1
    assert "same axial sampling" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "sharp.tif"), "--model", "nope", "-o",
                 str(tmp_path / "o.tif")]) == 2
    assert "--model must be one of" in capsys.readouterr().err


def test_the_command_modules_do_not_load_torch():
    code = ("import argparse, sys\n"
            "import psfmap.cli.simulate as s, psfmap.cli.calibrate as c\n"
            "sub = argparse.ArgumentParser().add_subparsers()\n"
            "s.add_parser(sub); c.add_parser(sub)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
