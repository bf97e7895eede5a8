"""The Deconvolve widget with the blurs beyond one 2-D PSF, in a real viewer: z-stacks restored
as volumes with a 3-D PSF, and operator families (identification from beads, or the mean
member), each compared with :func:`psfmap.deconvolve` called directly on the same data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from psfmap import deconvolve
from psfmap.calibrate import OperatorFamily
from psfmap.calibrate.spikes import identify_from_spikes
from psfmap.io import write_image
from psfmap.napari import DeconvolveWidget
from psfmap.psf import gaussian

SHIPPED_FAMILY = (Path(__file__).resolve().parents[2] / "src" / "psfmap" / "pretrained"
                  / "deepblur-beads12.family.psfmap")


def _psf3d(depth=7, size=9, sigma_z=1.5, sigma=1.2) -> np.ndarray:
    """A Gaussian 3-D PSF ``(depth, size, size)``, wider in z than in x and y, sum 1."""
    z, y, x = np.meshgrid(*(np.arange(n) - n // 2 for n in (depth, size, size)), indexing="ij")
    psf = np.exp(-z ** 2 / (2 * sigma_z ** 2) - (y ** 2 + x ** 2) / (2 * sigma ** 2))
    return (psf / psf.sum()).astype(np.float32)


def _volume(shape=(12, 48, 48), seed=0) -> np.ndarray:
    """Bright points in a volume on a dim background, blurred by :func:`_psf3d`."""
    from psfmap.operators import Convolution

    rng = np.random.default_rng(seed)
    sharp = np.full(shape, 0.05, dtype=np.float32)
    for _ in range(15):
        sharp[tuple(rng.integers(1, n - 1) for n in shape)] = 5.0
    blurred = Convolution(_psf3d()).forward(torch.from_numpy(sharp)).numpy()
    return np.clip(blurred, 0, None).astype(np.float32)


def test_a_volume_with_a_3d_psf_is_restored_as_a_volume(viewer, wait_for):
    volume = _volume()
    image = viewer.add_image(volume, name="cells", scale=(0.4, 0.1, 0.1),
                             translate=(1.0, 2.0, 3.0), units=("micrometer",) * 3)
    psf = viewer.add_image(_psf3d(), name="psf 3d", scale=(0.4, 0.1, 0.1),
                           units=("micrometer",) * 3)
    widget = DeconvolveWidget(viewer)
    widget.image.value, widget.psf.value = image, psf
    widget.method.value, widget.iterations.value, widget.tv.value = "rl-tv", 4, 0.01
    job = widget.run()
    assert job is not None
    wait_for(widget)
    assert widget.last_error is None, widget.last_error
    restored = viewer.layers["cells deconvolved"]
    assert restored.data.shape == (12, 48, 48)
    np.testing.assert_allclose(restored.scale, (0.4, 0.1, 0.1))
    np.testing.assert_allclose(restored.translate, (1.0, 2.0, 3.0))
    # psfmap's 3-D Richardson–Lucy on the whole volume, not a frame-by-frame restoration
    expected = deconvolve(volume, _psf3d(), "rl-tv", 4, 0.01)
    np.testing.assert_allclose(restored.data, expected, rtol=1e-4, atol=1e-5 * expected.max())
    assert restored.metadata["psfmap"]["volume"] is True
    assert restored.metadata["psfmap"]["z_step"] == pytest.approx(0.4)
    assert job.ticker.steps == 4 and "restored as volumes" in widget.status


def test_a_3d_operator_opened_by_the_reader_restores_a_time_series_of_volumes(
        viewer, wait_for, tmp_path):
    """The kernels layer of a 3-D operator file (its operator in the layer's metadata) on a
    (T, Z, Y, X) layer: every time point is restored as a volume."""
    from psfmap.operators import Convolution

    path = Convolution(_psf3d()).save(tmp_path / "scope3d.psfmap", {"z_step": 0.4})
    viewer.open(str(path), plugin="psfmap")
    series = np.stack([_volume((8, 24, 24), seed=s) for s in range(2)])
    image = viewer.add_image(series, name="series", scale=(5.0, 0.4, 0.1, 0.1))
    widget = DeconvolveWidget(viewer)
    widget.image.value, widget.psf.value = image, viewer.layers["scope3d kernels"]
    widget.method.value, widget.iterations.value = "rl", 3
    widget.accelerate.value = True
    widget.run()
    wait_for(widget)
    assert widget.last_error is None, widget.last_error
    restored = viewer.layers["series deconvolved"]
    np.testing.assert_allclose(restored.scale, (5.0, 0.4, 0.1, 0.1))
    expected = deconvolve(series, _psf3d(), "rl", 3, accelerate=True)
    np.testing.assert_allclose(restored.data, expected, rtol=1e-4, atol=1e-5 * expected.max())
    assert restored.metadata["psfmap"]["accelerate"] is True


def test_a_2d_psf_on_a_z_stack_still_restores_frame_by_frame(viewer, wait_for):
    stack = _volume((5, 32, 32))
    image = viewer.add_image(stack, name="stack", scale=(0.4, 0.1, 0.1))
    widget = DeconvolveWidget(viewer)
    widget.image.value = image
    widget.psf.value = viewer.add_image(gaussian(9, 1.2).numpy(), name="psf")
    widget.method.value, widget.iterations.value = "rl", 3
    widget.run()
    wait_for(widget)
    restored = viewer.layers["stack deconvolved"]
    np.testing.assert_allclose(restored.data, deconvolve(stack, gaussian(9, 1.2).numpy(), "rl", 3),
                               rtol=1e-4, atol=1e-6)
    assert "volume" not in restored.metadata["psfmap"]


def _bead_frame(family: OperatorFamily, condition: int, seed: int = 0) -> np.ndarray:
    """Isolated beads blurred by the family's operator of ``condition``, Poisson noise."""
    rng = np.random.default_rng(seed)
    sharp = np.full(family.image_shape, 2.0, dtype=np.float32)
    for _ in range(30):
        sharp[tuple(rng.integers(20, n - 20) for n in family.image_shape)] += 3000.0
    blurred = family.operator(family.gammas[condition]).forward(torch.from_numpy(sharp))
    return rng.poisson(np.clip(blurred.numpy(), 0, None)).astype(np.float32)


def test_an_operator_family_file_gives_each_frame_its_operator(viewer, wait_for,
                                                                notifications):
    """Frame 0 holds beads: its operator is identified from them (the calibrated condition
    that blurred it is found); frame 1 has none: the family's mean member is used."""
    family = OperatorFamily.load(SHIPPED_FAMILY)
    rows, cols = np.mgrid[0:256, 0:256]
    smooth = (20 + 30 * np.exp(-((rows - 128) ** 2 + (cols - 100) ** 2) / (2 * 60.0 ** 2)))
    stack = np.stack([_bead_frame(family, 2), smooth.astype(np.float32)])
    image = viewer.add_image(stack, name="sample")
    widget = DeconvolveWidget(viewer)
    widget.image.value, widget.psf_file.value = image, SHIPPED_FAMILY
    widget.method.value, widget.iterations.value = "rl", 3
    assert widget.family_mode.value == "auto"
    job = widget.run()
    assert job is not None
    wait_for(widget)
    assert widget.last_error is None, widget.last_error
    restored = viewer.layers["sample deconvolved"]
    reports = restored.metadata["psfmap"]["family"]
    assert [r["operator"] for r in reports] == ["identified", "mean"]
    assert "usable isolated beads in image" in reports[1]["reason"]
    # the identification finds the condition that blurred the beads (relative error < 5 %)
    truth = family.gammas[2].numpy()
    identified = np.asarray(reports[0]["gamma"])
    assert np.linalg.norm(identified - truth) < 0.05 * np.linalg.norm(truth)
    api = identify_from_spikes(stack[0], family)
    np.testing.assert_allclose(identified, api.identification.gamma)
    np.testing.assert_allclose(reports[1]["gamma"], family.gammas.numpy().mean(axis=0))
    # the restored frames are the API's with the reported coefficients
    for index, report in enumerate(reports):
        operator = family.operator(np.asarray(report["gamma"]))
        expected = deconvolve(stack[index], operator, "rl", 3)
        np.testing.assert_allclose(restored.data[index], expected, rtol=1e-4,
                                   atol=1e-5 * expected.max())
    assert job.ticker.steps == 6
    shown = [m for m in notifications() if "identified from" in m]
    assert shown and "mean of the 9 calibrated operators" in shown[-1]


def _tiny_family() -> OperatorFamily:
    """A family of two Gaussian eigen-PSFs, three smooth maps, calibrated on 24×32 images."""
    eigen = np.stack([gaussian(7, 1.0, dtype=torch.float64).numpy(),
                      gaussian(7, 1.8, dtype=torch.float64).numpy()])
    yy, xx = np.meshgrid(np.linspace(0, 1, 4), np.linspace(0, 1, 5), indexing="ij")
    gammas = np.array([[[0.8, 0.1, 0.0], [0.2, 0.0, 0.1]],
                       [[0.3, 0.0, 0.1], [0.7, 0.1, 0.0]]])
    return OperatorFamily(eigen, np.stack([np.ones_like(yy), yy, xx]), gammas, (24, 32))


def test_the_family_layer_of_the_reader_gives_its_mean_member(viewer, wait_for, tmp_path,
                                                             notifications):
    family = _tiny_family()
    path = family.save(tmp_path / "scope.psfmap")
    viewer.open(str(path), plugin="psfmap")
    assert "scope eigen-PSFs" in viewer.layers
    data = gaussian_filter(np.random.default_rng(1).random((24, 32)), 2).astype(np.float32)
    widget = DeconvolveWidget(viewer)
    widget.image.value = viewer.add_image(data, name="tissue", scale=(0.2, 0.2))
    widget.psf.value = viewer.layers["scope eigen-PSFs"]
    widget.method.value, widget.iterations.value = "rl", 5
    widget.family_mode.value = "mean"
    widget.run()
    wait_for(widget)
    assert widget.last_error is None, widget.last_error
    restored = viewer.layers["tissue deconvolved"]
    report = restored.metadata["psfmap"]["family"]
    assert report["operator"] == "mean" and "reason" not in report
    np.testing.assert_allclose(report["gamma"], family.gammas.numpy().mean(axis=0))
    expected = deconvolve(data, family.operator(family.gammas.numpy().mean(axis=0)), "rl", 5)
    np.testing.assert_allclose(restored.data, expected, rtol=1e-4, atol=1e-6)
    # identification required, and no bead in the image: the reason, in the viewer
    widget.family_mode.value = "beads"
    assert widget.run() is not None
    wait_for(widget)
    assert widget.status == "error"
    assert "cannot identify the family's operator: no beads found" in widget.last_error
    assert notifications()[-1] == widget.last_error


def test_bad_volume_and_family_inputs_show_a_message(viewer, wait_for, tmp_path,
                                                     notifications):
    """Refused before any work (layers, a family's header) or by the worker's read of a
    file: one sentence in the viewer, no traceback, no layer."""
    flat = viewer.add_image(_volume((5, 32, 32))[2], name="flat")
    shallow = viewer.add_image(_volume((8, 32, 32)), name="shallow", scale=(0.4, 0.1, 0.1))
    psf = viewer.add_image(_psf3d(), name="psf 3d")
    deep = viewer.add_image(_psf3d(depth=9), name="deep psf")
    movie = viewer.add_image(_volume((8, 32, 32)), name="movie", axis_labels=("t", "y", "x"))
    widget = DeconvolveWidget(viewer)
    cases = [
        (movie, psf, "rl", "the image's axis 0 is labelled 't', not z"),
        (flat, psf, "rl", "'psf 3d' is a 3-D PSF (7×9×9) and restores z-stacks; the image is "
                          "2-D (32×32 px)"),
        (shallow, deep, "rl", "is 9 planes deep, deeper than the stack's 8 planes"),
        (shallow, psf, "sparse-smooth", "method sparse-smooth restores 2-D images"),
    ]
    for image, kernel, method, expected in cases:
        widget.image.value, widget.psf.value, widget.method.value = image, kernel, method
        assert widget.run() is None, expected
        assert expected in widget.last_error, (expected, widget.last_error)
        assert notifications()[-1] == widget.last_error
    # a family calibrated on other images: refused from the file's header alone
    family_path = _tiny_family().save(tmp_path / "scope.psfmap")
    widget.psf_file.value, widget.method.value = family_path, "rl"
    assert widget.run() is None
    assert "calibrated on 24×32 px images; the image frames are 32×32 px" in widget.last_error
    # a 3-D PSF file whose z-step is not the stack's: refused once the worker has read it
    psf_path = write_image(tmp_path / "psf.ome.tif", _psf3d(), pixel_size=0.1, z_step=1.0)
    widget.psf_file.value = psf_path
    assert widget.run() is not None
    wait_for(widget)
    assert widget.status == "error"
    assert "has a z-step of 1, the stack 0.4" in widget.last_error
    assert notifications()[-1] == widget.last_error
    assert not any(layer.name.endswith("deconvolved") for layer in viewer.layers)
