"""The widgets in a real napari viewer (Qt offscreen): results as layers over their input,
cancel, and bad inputs answered with a message in the viewer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from psfmap.calibrate import OperatorFamily
from psfmap.napari import (
    BlindDeblurWidget,
    CalibrateWidget,
    DeconvolveWidget,
    SimulateWidget,
)
from psfmap.napari._layers import psf_map_of
from psfmap.operators.psf_map import PSFMap
from psfmap.psf import gaussian


def _points(shape=(48, 48), seed=0) -> np.ndarray:
    """Sparse bright points on a dim background, blurred by a Gaussian of width 1.5 px."""
    rng = np.random.default_rng(seed)
    sharp = np.full(shape, 0.05, dtype=np.float32)
    for _ in range(12):
        sharp[tuple(rng.integers(6, n - 6) for n in shape)] = 5.0
    return sharp


def _blurred(shape=(48, 48), seed=0) -> np.ndarray:
    return gaussian_filter(_points(shape, seed), 1.5, mode="constant").astype(np.float32)


def test_deconvolve_adds_the_restored_layer_over_its_input(viewer, wait_for):
    blurred = _blurred()
    image = viewer.add_image(blurred, name="beads", scale=(0.5, 0.25), translate=(3.0, 4.0))
    psf = viewer.add_image(gaussian(15, 1.5).numpy(), name="psf")
    widget = DeconvolveWidget(viewer)
    widget.image.value, widget.psf.value = image, psf
    widget.method.value, widget.iterations.value = "rl", 30
    job = widget.run()
    assert job is not None
    wait_for(widget)
    restored = viewer.layers["beads deconvolved"]
    assert restored.data.shape == blurred.shape
    np.testing.assert_allclose(restored.scale, image.scale)
    np.testing.assert_allclose(restored.translate, image.translate)
    # Richardson–Lucy with the true PSF concentrates the points again
    assert restored.data.max() > 1.5 * blurred.max()
    assert widget.status.startswith("done") and job.ticker.steps == 30


def test_deconvolve_keeps_a_stacks_axes_and_scale(viewer, wait_for):
    stack = np.stack([_blurred(seed=s) for s in range(3)])
    image = viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.5))
    viewer.add_image(gaussian(11, 1.5).numpy(), name="psf")
    widget = DeconvolveWidget(viewer)
    widget.image.value, widget.psf.value = image, viewer.layers["psf"]
    widget.iterations.value = 5
    widget.run()
    wait_for(widget)
    restored = viewer.layers["stack deconvolved"]
    assert restored.data.shape == (3, 48, 48)
    np.testing.assert_allclose(restored.scale, (2.0, 0.5, 0.5))
    # a re-run updates the same layer rather than adding "stack deconvolved [1]"
    widget.run()
    wait_for(widget)
    assert [layer.name for layer in viewer.layers].count("stack deconvolved") == 1
    assert len(viewer.layers) == 3


def test_simulate_gives_the_blurred_layer_and_its_true_map(viewer, wait_for):
    sharp = viewer.add_image(_points((64, 64)), name="points", scale=(0.2, 0.2))
    widget = SimulateWidget(viewer)
    widget.image.value = sharp
    widget.model.value, widget.field.value = "gaussian1", "radial"
    widget.grid_y.value, widget.grid_x.value = 2, 3
    widget.run()
    wait_for(widget)
    blurred = viewer.layers["points blurred"]
    assert blurred.data.shape == (64, 64) and blurred.data.max() < sharp.data.max()
    mosaic = viewer.layers["points true PSF map"]
    psf_map = psf_map_of(mosaic)
    assert isinstance(psf_map, PSFMap) and psf_map.grid == (2, 3)
    kernel = mosaic.data.shape[0] // 2  # one tile per cell
    assert mosaic.data.shape == (2 * kernel, 3 * kernel)
    heat = viewer.layers["points true width"]
    assert heat.data.shape == (2, 3)
    # the heat map's first cell lies on the first cell centre, in the image's world units
    np.testing.assert_allclose(heat.translate, 0.2 * np.array([16.0, 64 / 6]))
    # and Deconvolve takes the map layer as its PSF
    restore = DeconvolveWidget(viewer)
    restore.image.value, restore.psf.value = blurred, mosaic
    restore.iterations.value = 5
    restore.run()
    wait_for(restore)
    assert viewer.layers["points blurred deconvolved"].data.shape == (64, 64)


@pytest.mark.slow
def test_blind_deblur_adds_the_image_its_psf_map_and_parameter_maps(viewer, wait_for):
    from psfmap.io import read_image
    from psfmap.napari._io import SAMPLE

    data = read_image(SAMPLE)[0][:96, :128]
    image = viewer.add_image(data, name="neuron", scale=(0.3, 0.3))
    widget = BlindDeblurWidget(viewer)
    widget.image.value, widget.model.value = image, "gaussian1"
    widget.iterations.value = 3
    widget.run()
    wait_for(widget)
    assert widget.last_error is None, widget.last_error
    assert viewer.layers["neuron deblurred"].data.shape == (96, 128)
    psf_map = psf_map_of(viewer.layers["neuron PSF map"])
    assert psf_map.image_shape == (96, 128)
    gy, gx = psf_map.grid
    assert viewer.layers["neuron width"].data.shape == (gy, gx)
    np.testing.assert_allclose(viewer.layers["neuron width"].data, psf_map.params[..., 0],
                               rtol=1e-6)
    mosaic = viewer.layers["neuron PSF map"]
    tile = mosaic.data.shape[0] // gy
    assert mosaic.data.shape == (gy * tile, gx * tile)
    # the mosaic covers the image: its extent in world units is the image's
    np.testing.assert_allclose(np.array(mosaic.data.shape) * mosaic.scale, (96 * 0.3, 128 * 0.3))


def _bead_images(n_conditions=3, shape=(96, 96)) -> np.ndarray:
    """Gaussian beads on a grid whose width grows with the distance to the centre and with
    the condition, with Poisson noise."""
    rng = np.random.default_rng(0)
    images = []
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    for k in range(n_conditions):
        image = np.full(shape, 2.0)
        for r in range(10, shape[0] - 8, 14):
            for c in range(10, shape[1] - 8, 14):
                y, x = r + rng.uniform(-0.5, 0.5), c + rng.uniform(-0.5, 0.5)
                sigma = 1.2 + 0.3 * k + 0.6 * np.hypot(y - 48, x - 48) / 48
                image += 800 * np.exp(-((rows - y) ** 2 + (cols - x) ** 2) / (2 * sigma ** 2))
        images.append(rng.poisson(image).astype(np.float32))
    return np.stack(images)


@pytest.mark.slow
def test_calibrate_saves_a_family_and_shows_its_eigen_psfs(viewer, wait_for, tmp_path):
    beads = viewer.add_image(_bead_images(), name="beads", scale=(1.0, 0.1, 0.1))
    widget = CalibrateWidget(viewer)
    widget.beads.value = [beads]
    widget.psf_size.value = 13
    widget.output.value = tmp_path / "scope"
    widget.run()
    wait_for(widget)
    assert widget.last_error is None, widget.last_error
    family = OperatorFamily.load(tmp_path / "scope.psfmap")
    assert family.n_conditions == 3 and family.kernel_shape == (13, 13)
    eigen = viewer.layers["beads eigen-PSFs"]
    assert eigen.data.shape == (family.n_eigen_psfs, 13, 13)
    coefficients = viewer.layers["beads coefficient maps"]
    assert coefficients.data.shape == (3, family.n_eigen_psfs, 96, 96)
    np.testing.assert_allclose(coefficients.scale[-2:], (0.1, 0.1))


def test_cancel_stops_the_work_and_adds_no_layer(viewer, wait_for, qtbot, notifications):
    image = viewer.add_image(_blurred((64, 64)), name="cells")
    viewer.add_image(gaussian(9, 1.5).numpy(), name="psf")
    widget = DeconvolveWidget(viewer)
    widget.image.value, widget.psf.value = image, viewer.layers["psf"]
    widget.method.value, widget.iterations.value = "rl", 100_000
    job = widget.run()
    qtbot.waitUntil(lambda: job.ticker.steps >= 3, timeout=20_000)
    assert widget.is_running
    widget.cancel()
    wait_for(widget, timeout=20)
    assert "cells deconvolved" not in viewer.layers
    assert widget.status == "cancelled" and job.ticker.steps < 100_000
    assert "Deconvolve: cancelled" in notifications()
    # napari's own cancel (its activity dock asks the worker to quit) stops it the same way
    job = widget.run()
    qtbot.waitUntil(lambda: job.ticker.steps >= 3, timeout=20_000)
    job.worker.quit()
    wait_for(widget, timeout=20)
    assert widget.status == "cancelled" and "cells deconvolved" not in viewer.layers


def test_bad_inputs_show_a_message_in_the_viewer(viewer, notifications):
    """Inputs refused before any work: one sentence in the viewer, no traceback, no layer."""
    widget = DeconvolveWidget(viewer)
    assert widget.run() is None  # an empty viewer: no image layer to choose
    assert "Deconvolve: choose the image" in widget.last_error
    assert notifications()[-1] == widget.last_error
    small = viewer.add_image(_blurred((16, 16)), name="small")
    colour = viewer.add_image(np.ones((16, 16, 3), np.float32), name="colour", rgb=True)
    psf = viewer.add_image(gaussian(7, 1.0).numpy(), name="psf")
    large = viewer.add_image(gaussian(31, 1.0).numpy(), name="large psf")
    points = viewer.add_points(np.zeros((2, 2)), name="spots")
    cases = [
        (small, None, "choose a PSF layer or a PSF file"),
        (small, large, "(31×31 px) is larger than the image frames (16×16 px)"),
        (colour, psf, "'colour' is an RGB image"),
        # a layer of another kind handed to the widget in place of an image
        (points, psf, "must be an image layer, got the Points layer 'spots'"),
    ]
    for image, kernel, expected in cases:
        widget.image.choices = [(image.name, image)]
        widget.image.value, widget.psf.value = image, kernel
        assert widget.run() is None, expected
        assert expected in widget.last_error, (expected, widget.last_error)
        assert notifications()[-1] == widget.last_error
    assert not any(layer.name.endswith("deconvolved") for layer in viewer.layers)


def test_an_error_of_the_verb_comes_back_as_a_message(viewer, wait_for, notifications):
    """Refused by psfmap in the worker (a negative image): the verb's own sentence."""
    widget = DeconvolveWidget(viewer)
    widget.image.value = viewer.add_image(_blurred((16, 16)) - 1.0, name="offset")
    widget.psf.value = viewer.add_image(gaussian(7, 1.0).numpy(), name="psf")
    assert widget.run() is not None
    wait_for(widget)
    assert widget.status == "error" and "negative" in widget.last_error
    assert notifications()[-1] == widget.last_error
    assert widget.last_error.startswith("Deconvolve: ")
    assert "offset deconvolved" not in viewer.layers


def test_the_manifest_widgets_dock_in_the_viewer(viewer, wait_for):
    """The widgets as napari makes them from the manifest (npe2 command -> dock widget, with
    napari's public-only viewer proxy), and one run through it."""
    image = viewer.add_image(_points((32, 32)), name="cells")
    docked = {}
    for title in ("Deconvolve", "Blind deblur", "Calibrate from beads", "Simulate"):
        _, docked[title] = viewer.window.add_plugin_dock_widget("psfmap", title)
    assert isinstance(docked["Deconvolve"], DeconvolveWidget)
    assert isinstance(docked["Calibrate from beads"], CalibrateWidget)
    # the layer boxes list the viewer's image layers, and follow its changes
    widget = docked["Simulate"]
    more = viewer.add_image(_blurred(seed=1), name="more")
    viewer.add_points(np.zeros((1, 2)), name="spots")  # not an image: not offered
    assert [layer.name for layer in widget.image.choices] == ["cells", "more"]
    assert [layer.name for layer in docked["Calibrate from beads"].beads.choices] == \
        ["cells", "more"]
    widget.image.value = image
    widget.model.value, widget.grid_y.value, widget.grid_x.value = "gaussian1", 2, 2
    widget.run()
    wait_for(widget)
    assert widget.last_error is None, widget.last_error
    assert viewer.layers["cells blurred"].data.shape == (32, 32)
    assert more.name == "more"
