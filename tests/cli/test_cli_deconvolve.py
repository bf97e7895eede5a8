"""``psfmap deconvolve``: files in, restored files out, frame by frame, metadata kept."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from psfmap.cli import main
from psfmap.io import read_image, write_image
from psfmap.operators import Convolution, from_psf_grid
from psfmap.psf import gaussian
from psfmap.restore import deconvolve, richardson_lucy, sparse_smooth


@pytest.fixture
def scene(tmp_path, rng):
    """A 3-frame stack blurred by a Gaussian, its PSF and a 2x2 PSF-grid operator, on disk."""
    truth = np.zeros((3, 40, 48), dtype=np.float32)
    for frame in truth:
        frame[rng.integers(5, 35, 6), rng.integers(5, 43, 6)] = 50.0
        frame += 1.0
    psf = gaussian(9, 1.3).numpy()
    blurred = Convolution(psf)(torch.from_numpy(truth)).numpy().clip(0, None)
    image_path = tmp_path / "stack.tif"
    write_image(image_path, blurred, pixel_size=0.065)
    psf_path = tmp_path / "psf.tif"
    tifffile.imwrite(psf_path, psf)
    grid = np.stack([gaussian(9, w).numpy() for w in (1.0, 1.3, 1.3, 1.6)]).reshape(2, 2, 9, 9)
    operator = from_psf_grid(grid, (40, 48))
    operator_path = operator.save(tmp_path / "blur.psfmap")
    return {
        "image": image_path,
        "blurred": blurred,
        "psf": psf_path,
        "psf_array": psf,
        "operator": operator,
        "operator_path": operator_path,
        "tmp": tmp_path,
    }


def test_psf_rl_tv_stack_frame_by_frame(scene, capsys):
    out = scene["tmp"] / "restored.tif"
    code = main(
        ["deconvolve", str(scene["image"]), "--psf", str(scene["psf"]), "--method", "rl-tv",
         "--iterations", "5", "--tv", "0.02", "-o", str(out)]
    )  # fmt: skip
    assert code == 0
    restored, metadata = read_image(out)
    assert restored.shape == scene["blurred"].shape
    assert metadata.get("pixel_size") == pytest.approx(0.065)
    psf = scene["psf_array"].astype(np.float64)  # the CLI normalises the PSF in float64
    expected = richardson_lucy(
        scene["blurred"], Convolution(psf / psf.sum()), iterations=5, tv=0.02
    )
    np.testing.assert_allclose(restored, expected, rtol=1e-5, atol=1e-6)
    assert "deconvolved 3 frame(s)" in capsys.readouterr().out
    # --plane: one frame, restored exactly as in the whole stack, and recorded; not read as
    # an abbreviation of --plane-by-plane (the parsers take no prefixes)
    one = scene["tmp"] / "one.tif"
    assert main(["deconvolve", str(scene["image"]), "--plane", "2", "--psf", str(scene["psf"]),
                 "--method", "rl-tv", "--iterations", "5", "--tv", "0.02", "-o", str(one)]) == 0
    frame, described = read_image(one)
    np.testing.assert_allclose(frame, restored[2], rtol=1e-6, atol=1e-7)
    assert described["description"]["plane"] == 2
    assert main(["deconvolve", str(scene["image"]), "--plane", "3", "--psf", str(scene["psf"]),
                 "-o", str(one)]) == 2
    assert "--plane must be in [0, 2]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["deconvolve", str(scene["image"]), "--plane-by", "--psf", str(scene["psf"]),
              "-o", str(one)])


def test_operator_file_and_sparse_smooth_components(scene):
    out = scene["tmp"] / "rl.tif"
    assert main(["deconvolve", str(scene["image"]), "--operator", str(scene["operator_path"]),
                 "--method", "rl", "--iterations", "4", "-o", str(out),
                 "--quiet"]) == 0  # fmt: skip
    restored, _ = read_image(out)
    expected = richardson_lucy(scene["blurred"], scene["operator"], iterations=4)
    np.testing.assert_allclose(restored, expected, rtol=1e-4, atol=1e-4)

    spikes = scene["tmp"] / "spikes.tif"
    total = scene["tmp"] / "total.tif"
    code = main(
        ["deconvolve", str(scene["image"]), "--operator", str(scene["operator_path"]),
         "--method", "sparse-smooth", "--iterations", "10", "--sparse", "0.05",
         "--sparse-out", str(spikes), "-o", str(total), "--quiet"]
    )  # fmt: skip
    assert code == 0
    result = sparse_smooth(scene["blurred"], scene["operator"], sparse=0.05, iterations=10)
    np.testing.assert_allclose(read_image(spikes)[0], result.sparse, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(read_image(total)[0], result.restored, rtol=1e-4, atol=1e-4)


def test_psf_map_file(scene):
    from psfmap.operators.psf_map import PSFMap

    psf_map = PSFMap("gaussian1", np.array([[[1.0], [1.4]], [[1.2], [1.8]]]), (40, 48))
    map_path = psf_map.save(scene["tmp"] / "map.psfmap")
    out = scene["tmp"] / "from_map.tif"
    assert main(["deconvolve", str(scene["image"]), "--psf-map", str(map_path),
                 "--iterations", "3", "-o", str(out), "--quiet"]) == 0  # fmt: skip
    # the default method is the verb's: RL with TV (DEFAULT_TV)
    expected = deconvolve(scene["blurred"], psf_map.operator((40, 48)), iterations=3)
    np.testing.assert_allclose(read_image(out)[0], expected, rtol=1e-5, atol=1e-6)
    # a map made for another image size is refused, not stretched over this one
    other = PSFMap("gaussian1", psf_map.params, (80, 96)).save(scene["tmp"] / "other.psfmap")
    assert main(["deconvolve", str(scene["image"]), "--psf-map", str(other), "-o",
                 str(scene["tmp"] / "stretched.tif"), "--quiet"]) == 1
    assert not (scene["tmp"] / "stretched.tif").exists()


def test_bad_command_lines(scene, capsys):
    image = str(scene["image"])
    out = str(scene["tmp"] / "out.tif")
    # usage errors (exit 2)
    assert main(["deconvolve", image, "--psf", str(scene["psf"]), "--method", "rl",
                 "--tv", "0.1", "-o", out]) == 2  # fmt: skip
    assert main(["deconvolve", image, "--psf", str(scene["psf"]), "-o", image]) == 2
    assert main(["deconvolve", image, "--psf", str(scene["psf"]), "--iterations", "0",
                 "-o", out]) == 2  # fmt: skip
    with pytest.raises(SystemExit) as error:  # argparse: --psf and --operator exclusive
        main(["deconvolve", image, "--psf", "a.tif", "--operator", "b.psfmap", "-o", out])
    assert error.value.code == 2
    # bad data (exit 1, one line)
    capsys.readouterr()
    small = scene["tmp"] / "small.tif"
    write_image(small, np.ones((20, 20), dtype=np.float32))
    assert main(["deconvolve", str(small), "--operator", str(scene["operator_path"]),
                 "-o", out]) == 1  # fmt: skip
    message = capsys.readouterr().err.strip()
    assert "acts on images of shape (40, 48)" in message and len(message.splitlines()) == 1
    assert not (scene["tmp"] / "out.tif").exists()


def test_a_psf_on_a_background_pedestal_is_flagged(scene, capsys):
    out = scene["tmp"] / "out.tif"
    arguments = ["--iterations", "2", "-o", str(out), "--quiet"]
    assert main(["deconvolve", str(scene["image"]), "--psf", str(scene["psf"]), *arguments]) == 0
    assert capsys.readouterr().err == ""
    tight = scene["tmp"] / "tight_psf.tif"  # a clean PSF cropped close: bright edges, dark corners
    tifffile.imwrite(tight, gaussian(9, 2.0).numpy())
    assert main(["deconvolve", str(scene["image"]), "--psf", str(tight), *arguments]) == 0
    assert capsys.readouterr().err == ""
    # a raw bead crop: the camera's background level under a small peak
    raw = scene["tmp"] / "raw_psf.tif"
    tifffile.imwrite(raw, 100 * scene["psf_array"] + 1.0)
    assert main(["deconvolve", str(scene["image"]), "--psf", str(raw), *arguments]) == 0
    warning = capsys.readouterr().err
    assert "border level" in warning and "subtract the background" in warning


def test_an_early_stop_by_tol_is_reported(scene, capsys):
    out = scene["tmp"] / "early.tif"
    assert main(["deconvolve", str(scene["image"]), "--psf", str(scene["psf"]), "--tol", "10",
                 "--iterations", "30", "-o", str(out)]) == 0
    assert "30 iterations, stopped by --tol at 1" in capsys.readouterr().out
    assert read_image(out)[1]["description"]["iterations_run"] == 1


def test_the_input_description_is_nested_not_mixed_in(scene):
    simulated = scene["tmp"] / "simulated.tif"
    write_image(simulated, scene["blurred"], pixel_size=0.065,
                metadata={"psfmap": "simulate", "field": "tilt"})
    out = scene["tmp"] / "restored.tif"
    assert main(["deconvolve", str(simulated), "--psf", str(scene["psf"]), "--iterations", "1",
                 "-o", str(out), "--quiet"]) == 0
    description = read_image(out)[1]["description"]
    assert description["psfmap_command"] == "deconvolve" and "field" not in description
    assert description["input"] == {"psfmap": "simulate", "field": "tilt"}


def test_accelerate_on_images_equals_the_api_and_is_refused_for_sparse_smooth(scene, capsys):
    out = scene["tmp"] / "accelerated.tif"
    code = main(["deconvolve", str(scene["image"]), "--psf", str(scene["psf"]), "--method", "rl",
                 "--iterations", "6", "--accelerate", "-o", str(out)])
    assert code == 0
    psf = scene["psf_array"].astype(np.float64)
    expected = richardson_lucy(scene["blurred"], Convolution(psf / psf.sum()), iterations=6,
                               accelerate=True)
    plain = richardson_lucy(scene["blurred"], Convolution(psf / psf.sum()), iterations=6)
    restored, _ = read_image(out)
    np.testing.assert_allclose(restored, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(restored, plain, rtol=1e-3)  # the acceleration did act
    refused = scene["tmp"] / "refused.tif"
    code = main(["deconvolve", str(scene["image"]), "--psf", str(scene["psf"]), "--method",
                 "sparse-smooth", "--accelerate", "-o", str(refused)])
    assert code == 2 and not refused.exists()
    assert "--accelerate applies to Richardson-Lucy" in capsys.readouterr().err
