"""psfmap.io: TIFF / OME-TIFF / PNG reading and atomic, safe TIFF writing."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from skimage.color import rgb2gray

from psfmap.io import read_image, write_image


def test_tiff_round_trip_with_pixel_size_and_metadata(tmp_path, rng):
    image = rng.random((20, 30)).astype(np.float32)
    path = write_image(tmp_path / "a.tif", image, pixel_size=0.125, metadata={"note": "x"})
    array, meta = read_image(path)
    np.testing.assert_array_equal(array, image)
    assert array.dtype == np.float32
    assert meta["pixel_size"] == pytest.approx(0.125)
    assert meta["axes"] == "YX"
    assert meta["description"]["note"] == "x"


def test_ome_tiff_round_trip_stack(tmp_path):
    stack = np.arange(3 * 8 * 9, dtype=np.uint16).reshape(3, 8, 9)
    path = write_image(tmp_path / "stack.ome.tif", torch.from_numpy(stack.astype(np.int32)),
                       pixel_size=0.065)
    array, meta = read_image(path)
    np.testing.assert_array_equal(array, stack)
    assert meta["format"] == "ome-tiff"
    assert meta["axes"] == "ZYX"
    assert meta["pixel_size"] == pytest.approx(0.065)


def test_tiff_without_pixel_size(tmp_path):
    write_image(tmp_path / "b.tiff", np.ones((4, 4), dtype=np.uint8))
    assert read_image(tmp_path / "b.tiff")[1]["pixel_size"] is None


def test_bundled_ome_tiff_pixel_size():
    from psfmap.simulate import bundled_image

    image, meta = bundled_image("beads")
    assert image.shape == (128, 128)
    assert meta["pixel_size"] == pytest.approx(0.108)


def test_png_rgb_and_rgba_become_grey_luminance(tmp_path, rng):
    rgb = (rng.random((10, 12, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    grey, meta = read_image(tmp_path / "c.png")
    assert grey.shape == (10, 12)
    np.testing.assert_allclose(grey, rgb2gray(rgb) * 255, rtol=1e-10)
    rgba = np.dstack([rgb, np.full((10, 12), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "d.png")
    np.testing.assert_allclose(read_image(tmp_path / "d.png")[0], grey)


def test_rgb_tiffs_become_grey_and_complex_ones_are_refused(tmp_path, rng):
    rgb = (rng.random((10, 12, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    grey, meta = read_image(tmp_path / "c.tif")
    assert grey.shape == (10, 12) and meta["axes"] == "YX"
    np.testing.assert_allclose(grey, rgb2gray(rgb) * 255, rtol=1e-10)
    stack = np.stack([rgb, rgb[::-1]])  # a time series of colour frames
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="rgb")
    np.testing.assert_allclose(read_image(tmp_path / "s.tif")[0],
                               np.stack([grey, grey[::-1]]), rtol=1e-10)
    rgba = np.concatenate([stack, np.full((2, 10, 12, 1), 9, np.uint8)], axis=-1)
    tifffile.imwrite(tmp_path / "a.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_allclose(read_image(tmp_path / "a.tif")[0],
                               np.stack([grey, grey[::-1]]), rtol=1e-10)
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(rgb, -1, 0), photometric="rgb",
                     planarconfig="separate")  # planar: (3, H, W) on disk
    planar, meta = read_image(tmp_path / "p.tif")
    np.testing.assert_allclose(planar, grey, rtol=1e-10)
    assert meta["axes"] == "YX"
    tifffile.imwrite(tmp_path / "z.tif", rgb[..., 0].astype(np.complex64))
    with pytest.raises(ValueError, match="complex pixels"):
        read_image(tmp_path / "z.tif")


def test_grey_png_keeps_dtype(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    array, _ = read_image(tmp_path / "g.png")
    assert array.dtype == np.uint8
    np.testing.assert_array_equal(array, grey)


def test_refuses_to_overwrite_an_input(tmp_path):
    path = write_image(tmp_path / "in.tif", np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="also an input"):
        write_image(tmp_path / "in.tif", np.zeros((4, 4), np.float32), inputs=[path])
    for single in (path, str(path)):  # one path, not a list of them
        with pytest.raises(ValueError, match="also an input"):
            write_image(path, np.zeros((4, 4), np.float32), inputs=single)
    np.testing.assert_array_equal(read_image(path)[0], 1)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((0, 4), np.float32), "non-empty"),
        (np.array([1.0, np.nan]).reshape(1, 2), "NaN"),
        (np.ones(5), "non-empty image"),
        (np.array([["a"]]), "real numbers"),
    ],
)
def test_bad_arrays_are_refused_and_nothing_is_written(tmp_path, array, message):
    with pytest.raises((ValueError, TypeError), match=message):
        write_image(tmp_path / "bad.tif", array)
    assert list(tmp_path.iterdir()) == []


def test_bad_pixel_size_and_extension(tmp_path):
    with pytest.raises(ValueError, match="pixel_size"):
        write_image(tmp_path / "p.tif", np.ones((4, 4)), pixel_size=-1)
    with pytest.raises(ValueError, match="unsupported extension"):
        write_image(tmp_path / "p.bmp", np.ones((4, 4)))
    with pytest.raises(ValueError, match="does not exist"):
        write_image(tmp_path / "missing" / "p.tif", np.ones((4, 4)))
    assert list(tmp_path.iterdir()) == []


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_image(tmp_path / "nothing.tif")
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match="unsupported extension"):
        read_image(tmp_path / "x.gif")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage that is not a tiff")
    with pytest.raises(ValueError, match="corrupted"):
        read_image(tmp_path / "broken.tif")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    with pytest.raises(ValueError, match="corrupted"):
        read_image(tmp_path / "broken.png")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(ValueError, match="empty|corrupted"):
        read_image(tmp_path / "empty.tif")


def test_imagej_tiff_pixel_size(tmp_path):
    import tifffile

    stack = np.zeros((2, 6, 7), np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, resolution=(1 / 0.2, 1 / 0.2),
                     metadata={"axes": "ZYX", "unit": "um"})
    array, meta = read_image(tmp_path / "ij.tif")
    assert array.shape == (2, 6, 7)
    assert meta["axes"] == "ZYX"
    assert meta["format"] == "imagej-tiff"
    assert meta["pixel_size"] == pytest.approx(0.2)


def test_imagej_pixel_size_from_shared_data(shared_data):
    path = shared_data / "beads" / "psfextractor_beads_zstack.tif"
    if not path.is_file():
        pytest.skip("psfextractor_beads_zstack.tif not present")
    array, meta = read_image(path)
    assert array.shape == (34, 512, 512)
    assert meta["axes"] == "ZYX"
    assert meta["pixel_size"] == pytest.approx(0.108, rel=1e-3)


def test_metadata_numbers_from_numpy_are_written_and_a_bad_pixel_size_is_refused(tmp_path):
    image = np.ones((4, 4), np.float32)
    path = write_image(tmp_path / "a.tif", image,
                       metadata={"iterations": np.int64(20), "tv": np.float32(0.5)})
    assert read_image(path)[1]["description"] == {"iterations": 20, "tv": 0.5}
    with pytest.raises(TypeError, match="pixel_size"):
        write_image(tmp_path / "b.tif", image, metadata={"pixel_size": "abc"})
    assert not (tmp_path / "b.tif").exists()


def test_deferred_writes_are_all_or_nothing(tmp_path):
    from psfmap._container import deferred_writes

    old = write_image(tmp_path / "a.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(RuntimeError), deferred_writes():
        write_image(old, np.ones((4, 4), np.float32))
        write_image(tmp_path / "b.tif", np.ones((4, 4), np.float32))
        raise RuntimeError("a later step fails")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]
    np.testing.assert_array_equal(read_image(old)[0], 0)
    with deferred_writes():
        write_image(old, np.ones((4, 4), np.float32))
        np.testing.assert_array_equal(read_image(old)[0], 0)  # renamed at the end only
    np.testing.assert_array_equal(read_image(old)[0], 1)
