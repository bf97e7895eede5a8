"""``psfmap deblur`` on the chunked path (issue 24) with --save-map, --figure and --plane: the
maps are estimated once per frame on the whole frame, saved, drawn (over a downsampled view
for large frames) and used for the restoration, which equals the in-memory TIFF run."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from psfmap.cli import main
from psfmap.io import read_image, write_image
from psfmap.operators.psf_map import load_psf_maps

pytest.importorskip("dask.array")


def scene(rng, shape) -> np.ndarray:
    """Blobs and points blurred a little: texture the estimator accepts."""
    from scipy.ndimage import gaussian_filter

    sharp = rng.random(shape) < 0.01
    image = gaussian_filter(sharp.astype(float) + gaussian_filter(rng.random(shape), 3),
                            (0,) * (len(shape) - 2) + (1.5, 1.5))
    return (image / image.max() * 100).astype(np.float32)


@pytest.fixture
def job(tmp_path, rng):
    stack = scene(rng, (2, 96, 96))
    write_image(tmp_path / "in.ome.zarr", stack, pixel_size=0.1, axes="TYX")
    tifffile.imwrite(tmp_path / "in.tif", stack)
    return tmp_path


def deblur(job, source: str, output: str, *extra: str) -> int:
    return main(["deblur", str(job / source), "--iterations", "3", "-o", str(job / output),
                 "--quiet", *extra])


def same_maps(first, second) -> None:
    first, second = load_psf_maps(first), load_psf_maps(second)
    assert len(first) == len(second)
    for one, other in zip(first, second):
        assert one.image_shape == other.image_shape
        np.testing.assert_allclose(one.params, other.params, rtol=1e-5, atol=1e-6)


def test_save_map_and_figure_of_a_time_lapse_store(job):
    assert deblur(job, "in.tif", "ref.tif", "--save-map", str(job / "ref.psfmap")) == 0
    assert deblur(job, "in.ome.zarr", "out.ome.zarr", "--save-map", str(job / "out.psfmap"),
                  "--figure", str(job / "maps.png")) == 0
    same_maps(job / "out.psfmap", job / "ref.psfmap")
    assert len(load_psf_maps(job / "out.psfmap")) == 2  # one per frame
    assert (job / "maps.png").stat().st_size > 0
    restored, meta = read_image(job / "out.ome.zarr")
    assert meta["axes"] == "TYX" and meta["pixel_size"] == pytest.approx(0.1)
    np.testing.assert_allclose(restored.compute(), read_image(job / "ref.tif")[0],
                               rtol=1e-4, atol=1e-3)
    # the saved per-frame maps given back with --psf-map: the same restoration
    assert deblur(job, "in.ome.zarr", "again.ome.zarr", "--psf-map",
                  str(job / "out.psfmap")) == 0
    np.testing.assert_array_equal(read_image(job / "again.ome.zarr")[0].compute(),
                                  restored.compute())


def test_plane_selects_one_frame_of_the_store(job):
    assert deblur(job, "in.tif", "ref.tif", "--plane", "1", "--save-map",
                  str(job / "ref.psfmap")) == 0
    assert deblur(job, "in.ome.zarr", "out.ome.zarr", "--plane", "1", "--save-map",
                  str(job / "out.psfmap"), "--figure", str(job / "map.png")) == 0
    restored, meta = read_image(job / "out.ome.zarr")
    assert restored.shape == (96, 96) and meta["axes"] == "YX"
    assert meta["description"]["plane"] == 1
    same_maps(job / "out.psfmap", job / "ref.psfmap")
    np.testing.assert_allclose(restored.compute(), read_image(job / "ref.tif")[0],
                               rtol=1e-4, atol=1e-3)
    assert (job / "map.png").stat().st_size > 0


def test_figure_of_a_large_frame_is_drawn_over_a_downsampled_view(job, monkeypatch):
    import psfmap.cli.deblur as command

    monkeypatch.setattr(command, "OVERVIEW_SIDE", 40)  # 96 px frames shown at 32 px
    assert deblur(job, "in.ome.zarr", "out.ome.zarr", "--plane", "0", "--chunk", "48",
                  "--save-map", str(job / "map.psfmap"), "--figure", str(job / "map.png")) == 0
    assert load_psf_maps(job / "map.psfmap")[0].image_shape == (96, 96)  # saved full size
    assert (job / "map.png").stat().st_size > 0
    assert read_image(job / "out.ome.zarr")[0].chunksize == (48, 48)


@pytest.mark.parametrize("plane, message", [("5", "--plane must be in [0, 1]")])
def test_bad_plane_is_a_usage_error(job, capsys, plane, message):
    assert deblur(job, "in.ome.zarr", "out.ome.zarr", "--plane", plane) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_maps_estimated_on_a_local_cluster_equal_the_threaded_run(job):
    pytest.importorskip("distributed")
    assert deblur(job, "in.ome.zarr", "ref.ome.zarr", "--save-map", str(job / "ref.psfmap")) == 0
    assert deblur(job, "in.ome.zarr", "out.ome.zarr", "--workers", "1", "--save-map",
                  str(job / "out.psfmap")) == 0
    same_maps(job / "out.psfmap", job / "ref.psfmap")
    np.testing.assert_allclose(read_image(job / "out.ome.zarr")[0].compute(),
                               read_image(job / "ref.ome.zarr")[0].compute(), rtol=1e-5,
                               atol=1e-4)
