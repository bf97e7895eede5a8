"""psfmap.io: TIFF / OME-TIFF / PNG reading and atomic, safe TIFF writing."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

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
    assert grey.dtype == np.float32  # 8-bit samples: float32 holds their luminance to 1e-7
    np.testing.assert_allclose(grey, rgb2gray(rgb) * 255, rtol=2e-7)
    rgba = np.dstack([rgb, np.full((10, 12), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "d.png")
    np.testing.assert_allclose(read_image(tmp_path / "d.png")[0], grey)


def test_rgb_tiffs_become_grey_and_complex_ones_are_refused(tmp_path, rng):
    rgb = (rng.random((10, 12, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    grey, meta = read_image(tmp_path / "c.tif")
    assert grey.shape == (10, 12) and meta["axes"] == "YX"
    np.testing.assert_allclose(grey, rgb2gray(rgb) * 255, rtol=2e-7)
    stack = np.stack([rgb, rgb[::-1]])  # a time series of colour frames
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="rgb")
    np.testing.assert_allclose(read_image(tmp_path / "s.tif")[0],
                               np.stack([grey, grey[::-1]]), rtol=2e-7)
    rgba = np.concatenate([stack, np.full((2, 10, 12, 1), 9, np.uint8)], axis=-1)
    tifffile.imwrite(tmp_path / "a.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_allclose(read_image(tmp_path / "a.tif")[0],
                               np.stack([grey, grey[::-1]]), rtol=2e-7)
    # planar (3, H, W) on disk from software other than tifffile: the tag is the writer's word
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(rgb, -1, 0), photometric="rgb",
                     planarconfig="separate", software="libtiff", metadata=None)
    planar, meta = read_image(tmp_path / "p.tif")
    np.testing.assert_allclose(planar, grey, rtol=2e-7)
    assert meta["axes"] == "YX"
    # OME-XML declares its samples: planar RGB there is colour too
    tifffile.imwrite(tmp_path / "p.ome.tif", np.moveaxis(rgb, -1, 0), photometric="rgb",
                     planarconfig="separate", ome=True)
    np.testing.assert_allclose(read_image(tmp_path / "p.ome.tif")[0], grey, rtol=2e-7)
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


# ---------------------------------------------------------------- colour or stack (issue 18)

def _planes(count: int, dtype) -> np.ndarray:
    """``count`` distinct planes (plane k = (k + 1) · base) of ``dtype``."""
    base = np.arange(1, 8 * 9 + 1).reshape(8, 9) % 50 + 1
    return np.stack([(k + 1) * base for k in range(count)]).astype(dtype)


@pytest.mark.parametrize("count", [3, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.uint8])
@pytest.mark.parametrize("how", ["default", "planar-rgb", "minisblack", "imagej", "ome"])
def test_short_stacks_stay_stacks(tmp_path, count, dtype, how):
    stack = _planes(count, dtype)
    path = tmp_path / ("s.ome.tif" if how == "ome" else "s.tif")
    options = {
        "default": {},  # tifffile stores (3|4, H, W) as planar RGB(A) by default
        "planar-rgb": {"photometric": "rgb", "planarconfig": "separate"},
        "minisblack": {"photometric": "minisblack"},
        "imagej": {"imagej": True, "metadata": {"axes": "ZYX"}},
        "ome": {"ome": True, "metadata": {"axes": "ZYX"}},
    }[how]
    with warnings.catch_warnings():  # tifffile's DeprecationWarning about its default
        warnings.simplefilter("ignore")
        tifffile.imwrite(path, stack, **options)
    array, meta = read_image(path)
    assert array.dtype == stack.dtype
    np.testing.assert_array_equal(array, stack)
    assert len(meta["axes"]) == 3 and meta["axes"].endswith("YX")


@pytest.mark.parametrize("count", [3, 4])
def test_deconvolve_keeps_a_short_float32_stack(tmp_path, capsys, count):
    from psfmap.cli import main
    from psfmap.psf import gaussian

    stack = _planes(count, np.float32)
    with warnings.catch_warnings():  # tifffile's default: planar RGB(A), with a warning
        warnings.simplefilter("ignore")
        tifffile.imwrite(tmp_path / "stack.tif", stack)
    tifffile.imwrite(tmp_path / "psf.tif", gaussian(7, 1.0).numpy())
    code = main(["deconvolve", str(tmp_path / "stack.tif"), "--psf", str(tmp_path / "psf.tif"),
                 "-o", str(tmp_path / "out.tif"), "--iterations", "3"])
    assert code == 0
    assert f"deconvolved {count} frame(s) of 8x9" in capsys.readouterr().out
    restored, meta = read_image(tmp_path / "out.tif")
    assert restored.shape == (count, 8, 9) and restored.dtype == np.float32
    # frames restored one by one: plane k is k + 1 times plane 1 (RL is scale-equivariant)
    for k in range(1, count):
        np.testing.assert_allclose(restored[k], (k + 1) * restored[0], rtol=1e-3)


def test_interleaved_colour_is_colour_and_a_float_one_keeps_its_dtype(tmp_path, rng):
    rgb = rng.random((10, 12, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", rgb, photometric="rgb")
    grey, meta = read_image(tmp_path / "f.tif")
    assert grey.dtype == np.float32 and grey.shape == (10, 12) and meta["axes"] == "YX"
    np.testing.assert_allclose(grey, rgb2gray(rgb), rtol=1e-5)
    # grey + alpha (interleaved extra sample): the grey sample, as stored
    grey_alpha = np.dstack([rgb[..., 0], np.ones((10, 12), np.float32)])
    tifffile.imwrite(tmp_path / "ga.tif", grey_alpha, photometric="minisblack",
                     extrasamples=["unassalpha"], planarconfig="contig")
    np.testing.assert_array_equal(read_image(tmp_path / "ga.tif")[0], rgb[..., 0])


def test_a_real_rgb_image_saved_as_tiff_is_colour(tmp_path, shared_data):
    source = shared_data / "blurred" / "fly_wing_tilted.png"
    if not source.is_file():
        pytest.skip("fly_wing_tilted.png not present")
    with Image.open(source) as image:  # Pillow writes interleaved RGB TIFF
        image.convert("RGB").crop((0, 0, 64, 48)).save(tmp_path / "wing.tif")
    with Image.open(tmp_path / "wing.tif") as image:
        rgb = np.asarray(image)
    grey, meta = read_image(tmp_path / "wing.tif")
    assert grey.shape == (48, 64) and meta["axes"] == "YX"
    np.testing.assert_allclose(grey, rgb2gray(rgb) * 255, rtol=2e-7)


# ---------------------------------------------------------------- damaged headers (issue 18)

def _forged(tmp_path, name: str, **fields) -> str:
    """A 16x16 float32 TIFF whose first-page tags are overwritten (``ImageWidth=100000``)."""
    import struct

    path = tmp_path / name
    tifffile.imwrite(path, np.ones((16, 16), np.float32), photometric="minisblack")
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = {tag.name: tag for tag in tif.pages[0].tags.values()}
    for tag_name, value in fields.items():
        tag = tags[tag_name]
        struct.pack_into("<I" if tag.dtype == 4 else "<H", data, tag.valueoffset, value)
    path.write_bytes(bytes(data))
    return str(path)


def test_a_header_claiming_more_than_the_memory_gives_one_sentence(tmp_path, monkeypatch,
                                                                   capfd):
    import psfmap._memory

    monkeypatch.setattr(psfmap._memory, "available_memory", lambda: 8_000_000_000)
    path = _forged(tmp_path, "huge.tif", ImageWidth=100000, ImageLength=100000)
    with pytest.raises(ValueError, match=r"needs 40\.0 GB of memory to read; 8\.0 GB are "
                                         r"available") as error:
        read_image(path)
    assert "100000x100000 float32" in str(error.value)
    assert "\n" not in str(error.value)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # tifffile's log lines are muted


def test_available_memory_is_known_here():
    from psfmap._memory import available_memory

    available = available_memory()
    assert available is None or available > 0
    if Path("/proc/meminfo").is_file():
        assert available is not None and available > 10_000_000


def test_tifffile_is_muted_during_a_read_and_restored_after(tmp_path, caplog):
    logger = logging.getLogger("tifffile")
    path = _forged(tmp_path, "bad.tif", BitsPerSample=13)
    with caplog.at_level(logging.DEBUG, logger="tifffile"):
        with pytest.raises(ValueError, match="bad.tif"):
            read_image(path)
        assert [r for r in caplog.records if r.name == "tifffile"] == []
        assert logger.disabled is False
        logger.warning("after the read")  # the logger works again
    assert [r.getMessage() for r in caplog.records] == ["after the read"]


@pytest.mark.parametrize("name", ["stack.tif", "stack.ome.tif"])
def test_the_z_step_of_a_stack_is_written_and_read_back(tmp_path, name):
    from psfmap.io import read_z_step

    stack = np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)
    path = write_image(tmp_path / name, stack, pixel_size=0.13, z_step=0.3)
    array, metadata = read_image(path)
    assert array.shape == (5, 16, 16)
    assert metadata["z_step"] == pytest.approx(0.3)
    assert metadata["pixel_size"] == pytest.approx(0.13)
    assert read_z_step(path) == pytest.approx(0.3)
    plain = write_image(tmp_path / f"plain-{name}", stack)
    assert read_image(plain)[1]["z_step"] is None and read_z_step(plain) is None
    with pytest.raises(ValueError, match="z_step"):
        write_image(tmp_path / f"bad-{name}", stack, z_step=-1.0)


def test_an_imagej_stack_gives_its_spacing_in_micrometres(tmp_path):
    import tifffile

    from psfmap.io import read_z_step

    path = tmp_path / "imagej.tif"
    tifffile.imwrite(path, np.zeros((4, 8, 8), np.float32), imagej=True,
                     metadata={"spacing": 300.0, "unit": "nm", "axes": "ZYX"})
    assert read_z_step(path) == pytest.approx(0.3)


def test_grey_of_wide_integer_and_float_colour_keeps_precision():
    from psfmap.io import to_grey

    wide = np.array([[[2**31 - 1, 2**30, 7]]], dtype=np.int32)
    assert to_grey(wide).dtype == np.float64
    assert to_grey(np.ones((2, 2, 3), np.uint16)).dtype == np.float32
    assert to_grey(np.ones((2, 2, 3), np.float64)).dtype == np.float64
    assert to_grey(np.ones((2, 2, 3), np.float16)).dtype == np.float32
