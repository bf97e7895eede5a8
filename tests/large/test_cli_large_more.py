"""``psfmap deblur`` and ``psfmap simulate`` with the large-data options of deconvolve:
.ome.zarr in and out with --workers equals the in-memory TIFF run, and an existing output
store without --resume/--overwrite is a usage error (exit 2)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import psfmap
from psfmap.cli import main
from psfmap.io import read_image, write_image
from psfmap.operators.psf_map import PSFMap

pytest.importorskip("dask.array")
pytest.importorskip("distributed")


@pytest.fixture
def job(tmp_path, rng):
    image = (rng.random((64, 64)) * 50 + 5).astype(np.float32)
    write_image(tmp_path / "in.ome.zarr", image, pixel_size=0.1, axes="YX")
    tifffile.imwrite(tmp_path / "in.tif", image)
    widths = np.linspace(1.0, 2.0, 4).reshape(2, 2, 1)
    PSFMap(psfmap.psf.model("gaussian1", size=9), widths, (64, 64)).save(tmp_path / "map.psfmap")
    return tmp_path


def deblur(job, source: str, output: str, *extra: str) -> int:
    return main(["deblur", str(job / source), "--psf-map", str(job / "map.psfmap"),
                 "--iterations", "3", "-o", str(job / output), "--quiet", *extra])


def simulate(job, source: str, output: str, *extra: str) -> int:
    return main(["simulate", str(job / source), "--model", "gaussian1", "--grid", "2x2",
                 "--seed", "3", "-o", str(job / output), "--quiet", *extra])


def assert_same(job, zarr_output: str, tiff_output: str) -> None:
    lazy = np.asarray(read_image(job / zarr_output)[0].compute())
    eager = np.asarray(read_image(job / tiff_output)[0])
    np.testing.assert_allclose(lazy.reshape(eager.shape), eager, rtol=1e-6)


# a LocalCluster of one worker: about 3 s each
@pytest.mark.parametrize("command", [deblur, simulate])
def test_zarr_with_workers_equals_the_tiff_run(job, command):
    assert command(job, "in.tif", "ref.tif") == 0
    assert command(job, "in.ome.zarr", "out.ome.zarr", "--workers", "1") == 0
    assert_same(job, "out.ome.zarr", "ref.tif")


@pytest.mark.parametrize("command", [deblur, simulate])
def test_zarr_on_threads_equals_the_tiff_run(job, command):
    assert command(job, "in.tif", "ref.tif") == 0
    assert command(job, "in.ome.zarr", "out.ome.zarr") == 0
    assert_same(job, "out.ome.zarr", "ref.tif")


@pytest.mark.parametrize("command", [deblur, simulate])
def test_existing_store_is_refused_then_overwritten(job, command, capsys):
    assert command(job, "in.ome.zarr", "out.ome.zarr") == 0
    capsys.readouterr()
    assert command(job, "in.ome.zarr", "out.ome.zarr") == 2
    assert "pass --resume to complete it or --overwrite" in capsys.readouterr().err
    assert command(job, "in.ome.zarr", "out.ome.zarr", "--overwrite") == 0
    assert command(job, "in.ome.zarr", "out.ome.zarr", "--resume") == 0


@pytest.mark.parametrize("command", [deblur, simulate])
def test_resume_with_a_tiff_output_is_a_usage_error(job, command, capsys):
    assert command(job, "in.ome.zarr", "out.tif", "--resume") == 2
    assert "--resume applies to .ome.zarr outputs" in capsys.readouterr().err
