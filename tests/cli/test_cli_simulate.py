"""`psfmap simulate` and `psfmap demo` through psfmap.cli.main."""

from __future__ import annotations

import numpy as np
import pytest

from psfmap.cli import main
from psfmap.io import read_image, write_image
from psfmap.operators.psf_map import PSFMap
from psfmap.simulate import cells


@pytest.fixture
def sharp_file(tmp_path):
    image = (cells((48, 48), n_cells=4, seed=0) * 1000).astype(np.float32)
    return write_image(tmp_path / "sharp.ome.tif", image, pixel_size=0.1)


def test_simulate_writes_blurred_image_and_truth(tmp_path, sharp_file, capsys):
    status = main([
        "simulate", str(sharp_file), "--model", "gaussian2", "--field", "radial", "--grid",
        "2x3", "--photons", "200", "--read-noise", "1", "-o", str(tmp_path / "blurred.tif"),
        "--save-truth", str(tmp_path / "truth.psfmap"), "--seed", "3",
    ])
    assert status == 0
    blurred, meta = read_image(tmp_path / "blurred.tif")
    assert blurred.shape == (48, 48) and blurred.dtype == np.float32
    assert meta["pixel_size"] == pytest.approx(0.1)
    truth = PSFMap.load(tmp_path / "truth.psfmap")
    assert truth.grid == (2, 3) and truth.family.name == "gaussian2"
    assert "blurred.tif" in capsys.readouterr().out


def test_simulate_is_reproducible_and_quiet(tmp_path, sharp_file, capsys):
    for name in ("a.tif", "b.tif"):
        assert main(["simulate", str(sharp_file), "--model", "gaussian1", "--grid", "2",
                     "--photons", "100", "--seed", "1", "-o", str(tmp_path / name),
                     "--quiet"]) == 0
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif")[0],
                                  read_image(tmp_path / "b.tif")[0])
    assert capsys.readouterr().out == ""


def test_a_run_without_seed_records_the_one_it_drew_and_zernike_uses_the_pixel_size(
        tmp_path, sharp_file):
    first = tmp_path / "first.tif"
    assert main(["simulate", str(sharp_file), "--model", "zernike1", "--grid", "2",
                 "--photons", "100", "-o", str(first), "--save-truth",
                 str(tmp_path / "truth.psfmap"), "--quiet"]) == 0
    seed = read_image(first)[1]["description"]["seed"]
    assert isinstance(seed, int)
    again = tmp_path / "again.tif"
    assert main(["simulate", str(sharp_file), "--model", "zernike1", "--grid", "2",
                 "--photons", "100", "--seed", str(seed), "-o", str(again), "--quiet"]) == 0
    np.testing.assert_array_equal(read_image(first)[0], read_image(again)[0])
    # the pupil was sampled at the image's 0.1 µm pixels, not the family's default 0.2
    assert PSFMap.load(tmp_path / "truth.psfmap").family.optics["pixel_size"] == 0.1


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--help"])
    assert exit_info.value.code == 0
    assert "example:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    assert "psfmap demo -o" in capsys.readouterr().out


def test_refuses_to_overwrite_input(sharp_file, capsys):
    before = sharp_file.read_bytes()
    assert main(["simulate", str(sharp_file), "-o", str(sharp_file)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert sharp_file.read_bytes() == before


def test_corrupted_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00this is no tiff")
    status = main(["simulate", str(broken), "-o", str(tmp_path / "out.tif"),
                   "--save-truth", str(tmp_path / "truth.psfmap")])
    assert status == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "corrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.tif"]


def test_stack_input_is_refused(tmp_path, capsys):
    stack = write_image(tmp_path / "stack.tif", np.ones((2, 16, 16), np.float32))
    assert main(["simulate", str(stack), "-o", str(tmp_path / "out.tif")]) == 1
    error = capsys.readouterr().err
    assert "2-D" in error and "take one frame with --plane" in error
    assert not (tmp_path / "out.tif").exists()


def test_plane_blurs_one_frame_of_a_stack(tmp_path, sharp_file, capsys):
    """--plane counts the frames of every leading axis (a TCYX file has T·C of them): frame 3
    of a (2, 2, H, W) stack is blurred exactly as that frame alone; out of range, or with a
    3-D --psf, a usage error."""
    plane = read_image(sharp_file)[0]
    stack = np.stack([plane * (k + 1) for k in range(4)]).reshape(2, 2, 48, 48)
    stack_file = write_image(tmp_path / "tc.tif", stack)
    alone_file = write_image(tmp_path / "alone.tif", stack[1, 1])
    common = ["--model", "gaussian1", "--photons", "100", "--seed", "4", "--quiet"]
    assert main(["simulate", str(stack_file), "--plane", "3", "-o", str(tmp_path / "a.tif"),
                 *common]) == 0
    assert main(["simulate", str(alone_file), "-o", str(tmp_path / "b.tif"), *common]) == 0
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif")[0],
                                  read_image(tmp_path / "b.tif")[0])
    assert main(["simulate", str(stack_file), "--plane", "4", "-o", str(tmp_path / "c.tif"),
                 *common]) == 2
    assert "--plane must be in [0, 3]" in capsys.readouterr().err
    assert main(["simulate", str(stack_file), "--plane", "0", "--psf", str(stack_file),
                 "-o", str(tmp_path / "c.tif"), *common]) == 2
    assert "whole z-stack" in capsys.readouterr().err
    assert not (tmp_path / "c.tif").exists()


@pytest.mark.parametrize(
    "extra",
    [["--grid", "4xa"], ["--model", "airy"], ["--photons", "many"]],
)
def test_usage_errors_exit_2(tmp_path, sharp_file, extra):
    argv = ["simulate", str(sharp_file), "-o", str(tmp_path / "o.tif"), *extra]
    try:
        status = main(argv)
    except SystemExit as exit_info:  # argparse rejects before running
        status = exit_info.code
    assert status == 2
    assert not (tmp_path / "o.tif").exists()


def test_missing_output_folder_exit_2(tmp_path, sharp_file):
    assert main(["simulate", str(sharp_file), "-o", str(tmp_path / "no" / "o.tif")]) == 2


def test_bad_values_exit_2(tmp_path, sharp_file, capsys):
    # a bad option value is a usage error (exit 2), like every command's (issue 18)
    assert main(["simulate", str(sharp_file), "-o", str(tmp_path / "o.tif"),
                 "--photons", "-3"]) == 2
    assert "--photons must be a finite number > 0, got -3" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


def test_debug_shows_the_traceback(tmp_path):
    negative = tmp_path / "negative.tif"
    write_image(negative, -np.ones((32, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="negative values"):
        main(["simulate", str(negative), "-o", str(tmp_path / "o.tif"), "--debug"])


@pytest.mark.slow
def test_demo_writes_its_outputs(tmp_path, capsys, check_figure):
    output = tmp_path / "demo"
    assert main(["demo", "-o", str(output)]) == 0
    names = sorted(p.name for p in output.iterdir())
    assert names == ["blurred.tif", "estimated.psfmap", "psf_map.png", "psf_map_comparison.png",
                     "real_estimated.psfmap", "real_measurement.tif", "real_psf_map.png",
                     "real_restored.tif", "restored.tif", "sharp.tif", "truth.psfmap"]
    sharp, _ = read_image(output / "sharp.tif")
    blurred, _ = read_image(output / "blurred.tif")
    restored, _ = read_image(output / "restored.tif")
    assert sharp.shape == blurred.shape == restored.shape == (256, 256)
    assert PSFMap.load(output / "truth.psfmap").grid == (4, 4)
    assert PSFMap.load(output / "estimated.psfmap").family.name == "zernike3"
    # the scored part: restoring the unseen procedural scene helps
    from psfmap.metrics import snr

    assert snr(sharp, restored) > snr(sharp, blurred) + 0.5
    # the real part: the bundled measurement, its restoration and map
    measured, _ = read_image(output / "real_measurement.tif")
    real, _ = read_image(output / "real_restored.tif")
    assert measured.shape == real.shape == (512, 512)
    assert PSFMap.load(output / "real_estimated.psfmap").image_shape == (512, 512)
    for figure in ("psf_map.png", "psf_map_comparison.png", "real_psf_map.png"):
        check_figure(output / figure)
    out = capsys.readouterr().out
    assert "never used in training" in out and "SNR" in out


def test_a_zernike_pupil_keeps_its_own_pixel_size_for_an_implausible_file(tmp_path, capsys):
    tiny = write_image(tmp_path / "tiny.tif", np.ones((32, 32), np.float32), pixel_size=0.02)
    assert main(["simulate", str(tiny), "--model", "zernike1", "--grid", "2", "--seed", "0",
                 "-o", str(tmp_path / "b.tif"), "--save-truth", str(tmp_path / "t.psfmap"),
                 "--quiet"]) == 0
    assert "outside 0.03-0.4 µm" in capsys.readouterr().err
    assert PSFMap.load(tmp_path / "t.psfmap").family.optics["pixel_size"] == 0.2
