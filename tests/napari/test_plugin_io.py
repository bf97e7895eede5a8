"""The plugin's manifest, reader, writer and sample data (no viewer needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psfmap.calibrate import OperatorFamily
from psfmap.io import read_image
from psfmap.napari._io import get_reader, sample_data, write_image_layer
from psfmap.napari._layers import PSF_MAP_KEY, psf_map_layers, support_crop
from psfmap.operators import from_psf_grid
from psfmap.operators.psf_map import PSFMap, save_psf_maps
from psfmap.psf import gaussian


def test_manifest_is_valid_and_its_commands_import():
    """What ``npe2 validate psfmap --imports`` checks, through npe2's API."""
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("psfmap")
    manifest.validate_imports()  # every python_name resolves
    contributions = manifest.contributions
    assert manifest.name == "psfmap"
    assert sorted(w.display_name for w in contributions.widgets) == [
        "Blind deblur", "Calibrate from beads", "Deconvolve", "Simulate"]
    assert contributions.readers[0].filename_patterns == ["*.psfmap"]
    assert ".tif" in contributions.writers[0].filename_extensions
    assert contributions.sample_data[0].key == "confocal_neuron"


def _map(grid=(2, 3), shape=(40, 60)):
    widths = 0.8 + 0.2 * np.arange(grid[0] * grid[1]).reshape(*grid, 1)
    return PSFMap("gaussian1", widths, shape, validity=np.full(grid, 0.5))


def test_psf_map_layers_put_every_cell_on_its_centre():
    psf_map = _map()
    layers = psf_map_layers(psf_map, "cells", scale=(0.5, 0.25), translate=(10.0, 20.0))
    names = [kwargs["name"] for _, kwargs, _ in layers]
    assert names == ["cells PSF map", "cells width", "cells validity"]
    mosaic, kwargs, kind = layers[0]
    # tiles: the central window of the PSFs that holds 95 % of their flux (odd side)
    kernel = mosaic.shape[0] // 2
    assert kind == "image" and mosaic.shape == (2 * kernel, 3 * kernel) and kernel % 2 == 1
    assert kernel < psf_map.psfs().shape[-1]
    assert kwargs["metadata"][PSF_MAP_KEY] is psf_map
    # each tile is its PSF normalised to its peak (gamma 0.5): peak 1 at the tile's centre
    tile = mosaic[kernel:, 2 * kernel:]
    assert tile[kernel // 2, kernel // 2] == pytest.approx(1.0)
    # world position of the tile's centre pixel = world position of the cell centre
    rows, cols = psf_map.centres
    scale, translate = np.array(kwargs["scale"]), np.array(kwargs["translate"])
    world = translate + scale * np.array([kernel + kernel // 2, 2 * kernel + kernel // 2])
    expected = np.array([10.0, 20.0]) + np.array([0.5, 0.25]) * np.array([rows[1], cols[2]])
    np.testing.assert_allclose(world, expected)
    # heat map: one value per cell, drawn on the cell centre
    heat, heat_kwargs, _ = layers[1]
    np.testing.assert_allclose(heat, psf_map.params[..., 0])
    origin = np.array(heat_kwargs["translate"]) + np.array(heat_kwargs["scale"]) * [1, 2]
    np.testing.assert_allclose(origin, expected)


def test_support_crop_keeps_the_flux_of_every_psf():
    psfs = np.stack([gaussian(33, 1.0).numpy(), gaussian(33, 3.0).numpy()])
    window = support_crop(psfs)
    side = window.shape[-1]
    assert side % 2 == 1 and 7 <= side < 33
    assert np.all(window.sum(axis=(-2, -1)) >= 0.95 * psfs.sum(axis=(-2, -1)))
    # one pixel less on each side would lose more than 5 % of the wide PSF
    assert window[1, 1:-1, 1:-1].sum() < 0.95 * psfs[1].sum()


def test_reader_opens_psf_maps_operators_and_families(tmp_path):
    map_path = _map().save(tmp_path / "one.psfmap")
    stack_path = save_psf_maps(tmp_path / "stack.psfmap", [_map(), _map()])
    psfs = gaussian(9, 1.5).expand(2, 2, 9, 9)
    operator_path = from_psf_grid(psfs, (32, 32)).save(tmp_path / "op.psfmap")
    rng = np.random.default_rng(0)
    family = OperatorFamily(rng.random((2, 7, 7)), rng.random((3, 4, 4)),
                            rng.random((5, 2, 3)), (16, 20))
    family_path = family.save(tmp_path / "beads.psfmap")

    assert get_reader(str(tmp_path / "image.tif")) is None  # napari asks the next plugin
    one = get_reader(str(map_path))(str(map_path))
    assert [k["name"] for _, k, _ in one] == ["one PSF map", "one width", "one validity"]
    stack = get_reader(str(stack_path))(str(stack_path))
    assert stack[0][0].shape[0] == 2 and stack[1][0].shape == (2, 2, 3)
    operator = get_reader(str(operator_path))(str(operator_path))
    assert [(k["name"], d.shape) for d, k, _ in operator] == [
        ("op kernels", (4, 9, 9)), ("op weights", (4, 32, 32))]
    np.testing.assert_allclose(operator[1][0].sum(axis=0), 1.0, atol=1e-5)
    read = get_reader(str(family_path))(str(family_path))
    assert [(k["name"], d.shape) for d, k, _ in read] == [
        ("beads eigen-PSFs", (2, 7, 7)), ("beads coefficient maps", (5, 2, 16, 20)),
        ("beads spatial basis", (3, 16, 20))]
    np.testing.assert_allclose(read[1][0][3], family.weights(family.gammas[3]).numpy())
    many = get_reader([str(map_path), str(operator_path)])
    assert len(many([str(map_path), str(operator_path)])) == 5


def test_reader_refuses_a_foreign_file_in_one_sentence(tmp_path):
    path = tmp_path / "notes.psfmap"
    path.write_text("not an archive")
    with pytest.raises(ValueError, match="is not a readable psfmap file"):
        get_reader(str(path))(str(path))


def test_writer_saves_a_tiff_with_the_pixel_size(tmp_path):
    data = np.arange(12 * 16, dtype=np.float32).reshape(12, 16)
    meta = {"name": "restored", "scale": (0.25, 0.25), "units": ("micrometer", "micrometer")}
    written = write_image_layer(str(tmp_path / "restored.tif"), data, meta)
    assert written == [str(tmp_path / "restored.tif")]
    back, info = read_image(written[0])
    np.testing.assert_array_equal(back, data)
    assert info["pixel_size"] == pytest.approx(0.25)
    # pixel units: no physical pixel size is claimed
    written = write_image_layer(str(tmp_path / "pixels.tif"), data,
                                {"name": "x", "scale": (1, 1), "units": ("pixel", "pixel")})
    assert read_image(written[0])[1]["pixel_size"] is None


def test_sample_is_the_shipped_confocal_image():
    (data, kwargs, kind), = sample_data()
    assert kind == "image" and data.shape == (256, 256)
    assert kwargs["name"] == "confocal neuron (MIP)"
    assert float(torch.as_tensor(data).std()) > 0
