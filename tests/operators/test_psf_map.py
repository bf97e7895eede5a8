"""PSFMap: parameters of a PSF family on a grid; operator, files, figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import psfmap
from psfmap.operators import cell_centres, from_psf_grid
from psfmap.operators.psf_map import PSFMap
from psfmap.psf import model


def _map(**kwargs) -> PSFMap:
    params = np.linspace(0.8, 2.0, 6).reshape(2, 3, 1)
    options = {"validity": np.full((2, 3), 0.5), "metadata": {"pixel_size": 0.1}, **kwargs}
    return PSFMap(model("gaussian1", size=9), params, (40, 60), **options)


def test_psfs_operator_and_geometry():
    psf_map = _map()
    assert psf_map.grid == (2, 3) and psf_map.names == ("width",)
    psfs = psf_map.psfs()
    assert psfs.shape == (2, 3, 9, 9)
    torch.testing.assert_close(psfs[1, 2], model("gaussian1", size=9)(torch.tensor([[2.0]]))[0])
    operator = psf_map.operator()
    assert operator.image_shape == (40, 60)
    x = torch.rand(40, 60)
    torch.testing.assert_close(operator.forward(x), from_psf_grid(psfs, (40, 60)).forward(x))
    assert operator.metadata["pixel_size"] == 0.1
    assert operator.metadata["psf_model"]["name"] == "gaussian1"
    rows, cols = psf_map.centres
    np.testing.assert_allclose(rows, cell_centres(2, 40))
    np.testing.assert_allclose(psf_map.positions[1, 2], [rows[1], cols[2]])
    assert psf_map.operator((80, 90)).image_shape == (80, 90)
    assert psf_map.psfs(dtype=torch.float64).dtype == torch.float64


def test_family_by_name_or_config_and_default_validity():
    psf_map = PSFMap("zernike1", np.zeros((1, 2, 1)), (16, 16))
    np.testing.assert_array_equal(psf_map.validity, np.ones((1, 2)))
    again = PSFMap(psf_map.family.config(), torch.zeros(1, 2, 1), (16, 16))
    assert again.family.config() == psf_map.family.config()
    assert psfmap.blind.PSFMap is PSFMap


def test_save_load_round_trip(tmp_path):
    psf_map = _map()
    path = psf_map.save(tmp_path / "map.psfmap")
    loaded = PSFMap.load(path)
    np.testing.assert_array_equal(loaded.params, psf_map.params)
    np.testing.assert_array_equal(loaded.validity, psf_map.validity)
    assert loaded.image_shape == (40, 60)
    assert loaded.family.config() == psf_map.family.config()
    assert loaded.metadata == {"pixel_size": 0.1}
    torch.testing.assert_close(loaded.psfs(), psf_map.psfs())
    assert loaded.std is None
    # an uncertainty per cell travels with the map
    with_std = PSFMap("gaussian1", psf_map.params, (40, 60), std=np.full((2, 3, 1), 0.2))
    np.testing.assert_array_equal(PSFMap.load(with_std.save(tmp_path / "std.psfmap")).std,
                                  with_std.std)


def test_load_rejects_other_kinds(tmp_path):
    operator = _map().operator()
    operator.save(tmp_path / "op.psfmap")
    with pytest.raises(ValueError, match="psf_map"):
        PSFMap.load(tmp_path / "op.psfmap")
    (tmp_path / "junk.psfmap").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        PSFMap.load(tmp_path / "junk.psfmap")


def test_repr_is_readable():
    text = repr(_map())
    assert "gaussian1" in text and "2x3" in text and "width" in text


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"params": np.ones((2, 3))}, ValueError, r"\(gy, gx, 1\)"),
        ({"params": np.ones((2, 3, 2))}, ValueError, r"\(gy, gx, 1\)"),
        ({"params": np.full((2, 3, 1), np.nan)}, ValueError, "NaN"),
        ({"validity": np.full((2, 3), 1.5)}, ValueError, r"\[0, 1\]"),
        ({"validity": np.ones((3, 2))}, ValueError, "validity must have shape"),
        ({"image_shape": (1, 60)}, ValueError, "grid needs"),
        ({"image_shape": (40,)}, ValueError, "image_shape"),
        ({"family": 7}, TypeError, "family"),
        ({"family": "gaussian7"}, ValueError, "unknown PSF model"),
        ({"std": np.ones((2, 3))}, ValueError, "std must have the shape of params"),
        ({"std": np.full((2, 3, 1), -0.1)}, ValueError, "std must be >= 0"),
        ({"std": np.full((2, 3, 1), np.inf)}, ValueError, "std"),
    ],
)
def test_bad_input(kwargs, error, message):
    options = {"family": "gaussian1", "params": np.ones((2, 3, 1)), "image_shape": (40, 60),
               **kwargs}
    with pytest.raises(error, match=message):
        PSFMap(**options)


def test_plot_psf_map_writes_a_figure(tmp_path, check_figure):
    from matplotlib import pyplot as plt

    from psfmap.figures import plot_psf_map

    image = np.random.default_rng(0).random((40, 60))
    psf_map = _map()
    figure = plot_psf_map(image, psf_map, tmp_path / "map.png")
    check_figure(tmp_path / "map.png")
    assert len(figure.axes[0].images) == 1 + 6  # background + one per cell
    plt.close(figure)
    figure = plot_psf_map(torch.from_numpy(image), psf_map.operator(), grid=(2, 2))
    assert len(figure.axes[0].images) == 1 + 4
    plt.close(figure)
    with pytest.raises(ValueError, match="shape"):
        plot_psf_map(image[:20], psf_map)
    with pytest.raises(ValueError, match="NaN"):
        plot_psf_map(np.full((40, 60), np.nan), psf_map)
    with pytest.raises(ValueError, match="expected one of"):
        plot_psf_map(image, psf_map, tmp_path / "map.xyz")
    assert not (tmp_path / "map.xyz").exists()


def _frame_maps(count: int = 3) -> list[PSFMap]:
    return [
        PSFMap("gaussian1", np.full((2, 3, 1), 1.0 + index), (40, 60),
               validity=np.full((2, 3), 0.2 * (index + 1)), metadata={"frame": index})
        for index in range(count)
    ]


def test_psf_maps_of_a_stack_round_trip(tmp_path):
    from psfmap.operators.psf_map import load_psf_maps, save_psf_maps

    maps = _frame_maps()
    path = save_psf_maps(tmp_path / "stack.psfmap", maps)
    loaded = load_psf_maps(path)
    assert len(loaded) == 3
    for before, after in zip(maps, loaded):
        np.testing.assert_array_equal(after.params, before.params)
        np.testing.assert_array_equal(after.validity, before.validity)
        assert after.metadata == before.metadata and after.image_shape == (40, 60)
    assert all(after.std is None for after in loaded)
    with_std = [PSFMap(m.family, m.params, m.image_shape, validity=m.validity,
                       std=np.full(m.params.shape, 0.1 * (i + 1))) for i, m in enumerate(maps)]
    for before, after in zip(with_std, load_psf_maps(save_psf_maps(tmp_path / "std.psfmap",
                                                                   with_std))):
        np.testing.assert_array_equal(after.std, before.std)
    # a one-map file reads as a list of one; a stack file is not one map
    single = load_psf_maps(maps[1].save(tmp_path / "one.psfmap"))
    assert len(single) == 1 and np.all(single[0].params == 2.0)
    alone = save_psf_maps(tmp_path / "alone.psfmap", maps[1])  # one map, not in a list
    assert len(load_psf_maps(alone)) == 1 and np.all(PSFMap.load(alone).params == 2.0)
    with pytest.raises(ValueError, match="PSF maps of 3 frames"):
        PSFMap.load(path)
    assert psfmap.load_psf_maps is load_psf_maps and psfmap.save_psf_maps is save_psf_maps


def test_psf_maps_of_a_stack_bad_input(tmp_path):
    from psfmap.operators.psf_map import load_psf_maps, save_psf_maps

    maps = _frame_maps(2)
    with pytest.raises(ValueError, match="no PSF maps"):
        save_psf_maps(tmp_path / "a.psfmap", [])
    with pytest.raises(TypeError, match=r"maps\[1\] must be a PSFMap"):
        save_psf_maps(tmp_path / "a.psfmap", [maps[0], np.ones(3)])
    other_grid = PSFMap("gaussian1", np.ones((3, 3, 1)), (40, 60))
    with pytest.raises(ValueError, match="must match"):
        save_psf_maps(tmp_path / "a.psfmap", [maps[0], other_grid])
    other_family = PSFMap("zernike1", np.zeros((2, 3, 1)), (40, 60))
    with pytest.raises(ValueError, match="one family"):
        save_psf_maps(tmp_path / "a.psfmap", [maps[0], other_family])
    assert not (tmp_path / "a.psfmap").exists()
    (tmp_path / "junk.psfmap").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="not a readable"):
        load_psf_maps(tmp_path / "junk.psfmap")
    _map().operator().save(tmp_path / "op.psfmap")
    with pytest.raises(ValueError, match="psf_map"):
        load_psf_maps(tmp_path / "op.psfmap")


def test_plot_psf_map_stack_writes_a_figure(tmp_path, check_figure):
    from matplotlib import pyplot as plt

    from psfmap.figures import plot_psf_map_stack

    figure = plot_psf_map_stack(_frame_maps(), tmp_path / "stack.png")
    check_figure(tmp_path / "stack.png")
    median_line = figure.axes[0].lines[0]
    np.testing.assert_allclose(median_line.get_ydata(), [1.0, 2.0, 3.0])
    plt.close(figure)
    with pytest.raises(ValueError, match="no PSF maps"):
        plot_psf_map_stack([])
    with pytest.raises(TypeError, match="PSFMap"):
        plot_psf_map_stack([_map(), "map"])
    with pytest.raises(ValueError, match="zernike1 map"):
        plot_psf_map_stack([_map(), PSFMap("zernike1", np.zeros((2, 3, 1)), (40, 60))])


def test_plot_psf_map_stack_summarises_the_axis_across_its_wrap(tmp_path):
    """Cells at 0.05 and π − 0.05 rad are the same horizontal astigmatism: the frame's median
    axis is drawn near 0 with a narrow 10–90 % band, not at π/2 across the whole range; the
    axis is labelled with its unit."""
    from matplotlib import pyplot as plt

    from psfmap.figures import plot_psf_map_stack

    params = np.zeros((2, 4, 3))
    params[..., 0], params[..., 1] = 0.1, 0.2
    params[0, :, 2], params[1, :, 2] = 0.05, np.pi - 0.05
    figure = plot_psf_map_stack([PSFMap("zernike3", params, (40, 80))])
    axis_panel = figure.axes[2]
    median = axis_panel.lines[0].get_ydata()[0]
    band = axis_panel.collections[0].get_paths()[0].vertices[:, 1]
    assert abs(median) <= 0.05 + 1e-9
    assert band.max() - band.min() <= 0.1 + 1e-9
    assert axis_panel.get_ylabel() == "axis (rad)"
    assert figure.axes[0].get_ylabel() == "focus (waves RMS)"
    plt.close(figure)


def test_plot_psf_map_draws_each_parameter_in_its_unit(tmp_path, check_figure):
    """``parameters=True``: beside the local PSFs, one panel per parameter holding the cell
    values over the image's extent, a colour bar in the parameter's unit, and the cells of low
    validity veiled; an operator (no parameters) keeps the single panel."""
    from matplotlib import pyplot as plt

    from psfmap.figures import plot_psf_map

    params = np.stack(np.meshgrid(np.linspace(0.5, 1.5, 3), [1.0, 2.0], indexing="xy"), -1)
    validity = np.ones((2, 3))
    validity[0, 0] = 0.1
    psf_map = PSFMap("gaussian2", params, (40, 60), validity=validity)
    image = np.random.default_rng(0).random((40, 60))
    figure = plot_psf_map(image, psf_map, tmp_path / "map.png", parameters=True)
    check_figure(tmp_path / "map.png")
    labels = [axis.get_ylabel() for axis in figure.axes]
    assert "width_x (px)" in labels and "width_y (px)" in labels
    panel = figure.axes[1]
    np.testing.assert_allclose(panel.images[0].get_array(), params[..., 0])
    veil = panel.images[1].get_array()
    assert veil[0, 0, 3] > 0 and veil[1, 2, 3] == 0  # only the low-validity cell is veiled
    assert panel.images[0].get_extent() == [-0.5, 59.5, 39.5, -0.5]
    plt.close(figure)
    single = plot_psf_map(image, psf_map.operator(), grid=(2, 2), parameters=True)
    assert len(single.axes) == 1
    plt.close(single)
