"""3D restoration of dask volumes in chunks (issue 24): chunked over y and x with the full z
extent (or with a halo in z too when chunked in z), the 3D operator restricted to every
grown box, within 0.5 % relative L2 of the whole-volume result; the CLI keeps voxel sizes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

import psfmap
from psfmap.operators import from_psf_grid
from psfmap.operators.volume_region import restrict_volume

da = pytest.importorskip("dask.array")

SHAPE = (12, 64, 64)


def gaussian_3d(sigma_z: float, sigma_xy: float) -> np.ndarray:
    z, y, x = np.mgrid[-3:4, -4:5, -4:5]
    psf = np.exp(-(z**2 / (2 * sigma_z**2) + (y**2 + x**2) / (2 * sigma_xy**2)))
    return psf / psf.sum()


def psf_grid() -> np.ndarray:
    """(2, 2, 2, 7, 9, 9): wider with depth and across the field."""
    return np.stack([np.stack([np.stack([gaussian_3d(1.0 + 0.3 * a, 1.0 + 0.4 * b + 0.2 * c)
                                         for c in range(2)]) for b in range(2)])
                     for a in range(2)])


@pytest.fixture(scope="module")
def blurred() -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(5)
    sharp = (rng.random(SHAPE) < 0.004) * 50.0 + gaussian_filter(rng.random(SHAPE), 2)
    operator = from_psf_grid(torch.tensor(psf_grid(), dtype=torch.float32), SHAPE)
    clean = operator.forward(torch.tensor(sharp, dtype=torch.float32)).numpy()
    return np.clip(clean, 0, None) + 0.1


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_restricted_volume_operator_equals_the_whole_one_on_its_box():
    whole = from_psf_grid(torch.tensor(psf_grid()), SHAPE)
    box = (2, 10, 8, 40, 30, 64)
    part = restrict_volume(whole, box)
    assert part.image_shape == (8, 32, 34) and part.metadata["region"] == list(box)
    for z, y, x in ((0, 0, 0), (7, 31, 33), (3, 10, 20)):
        torch.testing.assert_close(part.psf_at(z, y, x),
                                   whole.psf_at(z + box[0], y + box[2], x + box[4]))
    # a source inside the box is blurred as in the whole volume (away from the box's edge)
    point = torch.zeros(SHAPE, dtype=torch.float64)
    point[6, 24, 47] = 1.0
    inside = point[2:10, 8:40, 30:64]
    torch.testing.assert_close(part.forward(inside)[2:6, 10:22, 12:22],
                               whole.forward(point)[4:8, 18:30, 42:52])
    with pytest.raises(ValueError, match="region must be"):
        restrict_volume(whole, (0, 13, 0, 8, 0, 8))


@pytest.mark.parametrize("kind", ["psf", "grid"])
def test_chunked_volume_within_half_a_percent_of_one_piece(blurred, kind):
    operator = gaussian_3d(1.2, 1.3) if kind == "psf" else psf_grid()
    whole = psfmap.deconvolve(blurred, operator, "rl-tv", 8, 0.002)
    lazy = psfmap.deconvolve(da.from_array(blurred, chunks=(12, 32, 32)), operator, "rl-tv",
                             8, 0.002, overlap=16)
    assert isinstance(lazy, da.Array) and lazy.chunks == ((12,), (32, 32), (32, 32))
    assert relative(lazy.compute(), whole) <= 5e-3


def test_chunked_in_z_with_a_halo_in_z_and_a_time_axis(blurred):
    stack = np.stack([blurred, 2 * blurred])  # (T, Z, Y, X): the volumes are independent
    psf = gaussian_3d(1.0, 1.2)
    whole = psfmap.deconvolve(stack, psf, "rl", 6)
    lazy = psfmap.deconvolve(da.from_array(stack, chunks=(1, 6, 64, 32)), psf, "rl", 6,
                             overlap=6)
    assert lazy.chunks == ((1, 1), (6, 6), (64,), (32, 32))
    assert relative(lazy.compute(), whole) <= 5e-3


def test_volume_chunks_thinner_than_the_halo_are_rechunked_with_a_note(blurred):
    with pytest.warns(UserWarning, match="volume has chunks of 4 planes"):
        lazy = psfmap.deconvolve(da.from_array(blurred, chunks=(4, 64, 64)),
                                 gaussian_3d(1.0, 1.0), "rl", 2, overlap=8)
    assert lazy.chunks == ((4, 4, 4), (64,), (64,))


def test_cli_restores_a_zarr_stack_in_chunks_keeping_voxel_sizes(tmp_path, blurred):
    from psfmap.cli import main
    from psfmap.io import read_image, write_image

    write_image(tmp_path / "stack.ome.zarr", blurred.astype(np.float32), pixel_size=0.1,
                axes="ZYX", z_step=0.3)
    tifffile.imwrite(tmp_path / "stack.tif", blurred.astype(np.float32), imagej=True,
                     resolution=(10.0, 10.0), metadata={"spacing": 0.3, "unit": "um"})
    tifffile.imwrite(tmp_path / "psf3d.tif", gaussian_3d(1.2, 1.3).astype(np.float32))
    common = ["--psf", str(tmp_path / "psf3d.tif"), "--method", "rl", "--iterations", "6",
              "--quiet"]
    assert main(["deconvolve", str(tmp_path / "stack.tif"), "-o", str(tmp_path / "ref.tif"),
                 *common]) == 0
    assert main(["deconvolve", str(tmp_path / "stack.ome.zarr"), "-o",
                 str(tmp_path / "out.ome.zarr"), "--chunk", "32", "--overlap", "16",
                 *common]) == 0
    restored, meta = read_image(tmp_path / "out.ome.zarr")
    assert meta["axes"] == "ZYX" and restored.chunksize == (12, 32, 32)
    assert meta["pixel_size"] == pytest.approx(0.1) and meta["z_step"] == pytest.approx(0.3)
    assert meta["description"]["volume"] is True
    reference = read_image(tmp_path / "ref.tif")[0]
    assert relative(np.asarray(restored.compute()), reference) <= 5e-3
