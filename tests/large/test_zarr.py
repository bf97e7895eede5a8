"""OME-Zarr images (issue 24): lazy reading (NGFF 0.4 and 0.5) with pixel sizes, writing with
a pyramid, per-chunk markers, resuming an interrupted write, refusing an existing store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from psfmap._zarr import MARKERS, zarr_state
from psfmap.io import read_image, write_image

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")


def test_round_trip_is_lazy_with_pixel_size_axes_and_pyramid(tmp_path, rng):
    image = rng.random((3, 600, 520)).astype(np.float32)
    path = write_image(tmp_path / "a.ome.zarr", image, pixel_size=0.13, axes="TYX",
                       metadata={"step": "test"})
    array, meta = read_image(path)
    assert isinstance(array, da.Array)
    assert meta["axes"] == "TYX" and meta["pixel_size"] == pytest.approx(0.13)
    assert meta["format"] == "ome-zarr 0.5" and meta["description"] == {"step": "test"}
    assert np.array_equal(array.compute(), image)
    group = zarr.open_group(str(path), mode="r")
    assert sorted(group.array_keys()) == ["0", "1"]  # 600x520 -> 300x260, then < 256: stop
    assert group["1"].shape == (3, 300, 260)
    assert np.allclose(group["1"][0, 0, 0], image[0, :2, :2].mean(), rtol=1e-6)
    assert not (path / MARKERS).exists() and zarr_state(path) == "complete"


def test_store_without_pixel_size_reads_none(tmp_path, rng):
    path = write_image(tmp_path / "b.zarr", rng.random((40, 50)).astype(np.float32))
    assert read_image(path)[1]["pixel_size"] is None


def test_reads_ngff_04_on_zarr_v2(tmp_path, rng):
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image as ome_write

    image = (rng.random((2, 64, 80)) * 1000).astype(np.uint16)
    group = zarr.open_group(str(tmp_path / "v04.ome.zarr"), mode="w", zarr_format=2)
    ome_write(image, group, axes="zyx", fmt=FormatV04(), scale_factors=[],
              scale={"z": 0.5, "y": 0.2, "x": 0.2})
    array, meta = read_image(tmp_path / "v04.ome.zarr")
    assert meta["format"].startswith("ome-zarr 0.4")
    assert meta["axes"] == "ZYX" and meta["pixel_size"] == pytest.approx(0.2)
    assert meta["voxel_size"] == pytest.approx([0.5, 0.2, 0.2])
    assert np.array_equal(array.compute(), image)


def test_existing_store_needs_resume_or_overwrite(tmp_path, rng):
    image = rng.random((64, 64)).astype(np.float32)
    path = write_image(tmp_path / "c.ome.zarr", image)
    with pytest.raises(ValueError, match=r"exists \(complete\); pass --resume"):
        write_image(path, image)
    write_image(path, image * 2, zarr_options={"overwrite": True})
    assert np.array_equal(read_image(path)[0].compute(), image * 2)


def test_resume_computes_only_chunks_without_a_marker(tmp_path, rng):
    image = rng.random((2, 96, 96)).astype(np.float32)
    lazy = da.from_array(image, chunks=(1, 48, 48))
    path = tmp_path / "d.ome.zarr"
    write_image(path, lazy)
    # an interrupted run: markers of 3 chunks missing, two of them half-written, not complete
    group = zarr.open_group(str(path), mode="r+")
    group["0"][0, :48, :48] = -1.0
    group["0"][1, 48:, 48:] = 0.0
    (path / MARKERS).mkdir()
    done = [k for k in np.ndindex(2, 2, 2) if k not in [(0, 0, 0), (1, 1, 1), (0, 1, 0)]]
    for key in done:
        (path / MARKERS / ".".join(map(str, key))).touch()
    group.attrs["psfmap"] = {**group.attrs["psfmap"], "complete": False}
    assert zarr_state(path) == "partial"
    computed = []

    def spy(block, block_info=None):
        if block_info is not None:
            computed.append(tuple(block_info[None]["chunk-location"]))
        return block

    seen = []
    write_image(path, lazy.map_blocks(spy), zarr_options={
        "resume": True, "progress": lambda done, total: seen.append((done, total))})
    assert sorted(set(computed)) == [(0, 0, 0), (0, 1, 0), (1, 1, 1)]
    assert seen[0] == (5, 8) and seen[-1] == (8, 8)
    assert np.array_equal(read_image(path)[0].compute(), image)
    assert zarr_state(path) == "complete"


def test_resume_refuses_a_store_of_another_shape(tmp_path, rng):
    path = write_image(tmp_path / "e.ome.zarr", rng.random((64, 64)).astype(np.float32))
    with pytest.raises(ValueError, match=r"cannot resume .* holds \(64, 64\)"):
        write_image(path, rng.random((64, 80)).astype(np.float32),
                    zarr_options={"resume": True})


def test_a_folder_that_is_no_ome_zarr_is_refused(tmp_path):
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(ValueError, match="without OME-NGFF 'multiscales' metadata"):
        read_image(tmp_path / "plain.zarr")
    with pytest.raises(ValueError, match="does not exist"):
        read_image(tmp_path / "missing.ome.zarr")
    assert json.loads((tmp_path / "plain.zarr" / "zarr.json").read_text())["node_type"] == \
        "group"
