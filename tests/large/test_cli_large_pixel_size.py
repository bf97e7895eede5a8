"""A chunked run of an OME-Zarr store without pixel sizes, with an operator that was built for
a known pixel size (issue 24): a warning names the size assumed, and the output store keeps
it; a store with another pixel size is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psfmap.cli import main
from psfmap.io import read_image, write_image
from psfmap.operators import from_psf_grid
from psfmap.psf import gaussian

pytest.importorskip("dask.array")


@pytest.fixture
def job(tmp_path, rng):
    image = (rng.random((64, 64)) * 50 + 5).astype(np.float32)
    write_image(tmp_path / "bare.ome.zarr", image)  # no pixel size
    write_image(tmp_path / "other.ome.zarr", image, pixel_size=0.2)
    psfs = torch.stack([torch.stack([gaussian(9, 1.0 + 0.3 * (r + c)) for c in range(2)])
                        for r in range(2)])
    operator = from_psf_grid(psfs, (64, 64))
    operator.metadata["pixel_size"] = 0.1
    operator.save(tmp_path / "op.psfmap")
    return tmp_path


def deconvolve(job, source: str, output: str) -> int:
    return main(["deconvolve", str(job / source), "--operator", str(job / "op.psfmap"),
                 "--method", "rl", "--iterations", "2", "-o", str(job / output), "--quiet"])


def test_store_without_pixel_size_warns_with_the_assumed_value(job, capsys):
    assert read_image(job / "bare.ome.zarr")[1]["pixel_size"] is None
    assert deconvolve(job, "bare.ome.zarr", "out.ome.zarr") == 0
    assert "bare.ome.zarr gives no pixel size; assuming the operator's 0.1 µm" in \
        capsys.readouterr().err
    assert read_image(job / "out.ome.zarr")[1]["pixel_size"] == pytest.approx(0.1)


def test_store_with_another_pixel_size_is_refused(job, capsys):
    assert deconvolve(job, "other.ome.zarr", "out.ome.zarr") != 0
    assert "has pixels of 0.2 µm, the operator was built for 0.1 µm" in capsys.readouterr().err
    assert not (job / "out.ome.zarr").exists()
