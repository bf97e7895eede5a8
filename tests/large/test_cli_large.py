"""The CLI with OME-Zarr and dask (issue 24): .ome.zarr in and out, --chunk, an existing
store refused without --resume/--overwrite, --resume completing a partial store, flags
checked before any work."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from psfmap._zarr import MARKERS, zarr_state
from psfmap.cli import main
from psfmap.io import read_image, write_image
from psfmap.psf import gaussian

pytest.importorskip("dask.array")


@pytest.fixture
def job(tmp_path, rng):
    image = (rng.random((2, 96, 112)) * 50 + 5).astype(np.float32)
    write_image(tmp_path / "in.ome.zarr", image, pixel_size=0.1, axes="TYX")
    tifffile.imwrite(tmp_path / "in.tif", image)
    tifffile.imwrite(tmp_path / "psf.tif", gaussian(9, 1.5).numpy())
    return tmp_path


def deconvolve(job, source: str, output: str, *extra: str) -> int:
    return main(["deconvolve", str(job / source), "--psf", str(job / "psf.tif"), "--method",
                 "rl", "--iterations", "4", "-o", str(job / output), "--quiet", *extra])


def test_zarr_in_and_out_equals_the_tiff_run(job):
    assert deconvolve(job, "in.tif", "ref.tif") == 0
    assert deconvolve(job, "in.ome.zarr", "out.ome.zarr") == 0
    restored, meta = read_image(job / "out.ome.zarr")
    assert meta["pixel_size"] == pytest.approx(0.1) and meta["axes"] == "TYX"
    assert meta["description"]["psfmap_command"] == "deconvolve"
    assert np.array_equal(restored.compute(), read_image(job / "ref.tif")[0])
    # a TIFF input restored in chunks, into a TIFF
    assert deconvolve(job, "in.tif", "chunks.tif", "--chunk", "48", "--overlap", "24") == 0
    assert np.abs(read_image(job / "chunks.tif")[0] - read_image(job / "ref.tif")[0]).max() \
        < 1e-3 * read_image(job / "ref.tif")[0].max()


def test_existing_store_is_refused_then_overwritten(job, capsys):
    assert deconvolve(job, "in.ome.zarr", "out.ome.zarr") == 0
    capsys.readouterr()
    assert deconvolve(job, "in.ome.zarr", "out.ome.zarr") == 2
    assert "exists (complete); pass --resume to complete it or --overwrite" in \
        capsys.readouterr().err
    assert deconvolve(job, "in.ome.zarr", "out.ome.zarr", "--overwrite") == 0
    assert zarr_state(job / "out.ome.zarr") == "complete"


def test_resume_completes_a_partial_store_to_the_same_result(job):
    assert deconvolve(job, "in.ome.zarr", "full.ome.zarr") == 0
    assert deconvolve(job, "in.ome.zarr", "part.ome.zarr") == 0
    # as an interrupted run leaves it: frame 1 never written, its marker absent
    path = job / "part.ome.zarr"
    group = zarr.open_group(str(path), mode="r+")
    group["0"][1] = 0.0
    (path / MARKERS).mkdir()
    (path / MARKERS / "0.0.0").touch()
    group.attrs["psfmap"] = {**group.attrs["psfmap"], "complete": False}
    assert deconvolve(job, "in.ome.zarr", "part.ome.zarr", "--resume") == 0
    assert np.array_equal(read_image(path)[0].compute(),
                          read_image(job / "full.ome.zarr")[0].compute())


@pytest.mark.parametrize("extra, message", [
    (["--workers", "0"], "--workers must be >= 1"),
    (["--workers", "2", "--scheduler", "tcp://x:1"], "pass one of them"),
    (["--resume", "--overwrite"], "exclude each other"),
    (["--chunk", "8"], "--chunk must be >= 32"),
])
def test_bad_large_flags_are_usage_errors(job, capsys, extra, message):
    assert deconvolve(job, "in.ome.zarr", "bad.ome.zarr", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (job / "bad.ome.zarr").exists()


def test_resume_with_a_tiff_output_is_a_usage_error(job, capsys):
    assert deconvolve(job, "in.tif", "out.tif", "--resume") == 2
    assert "--resume applies to .ome.zarr outputs" in capsys.readouterr().err
