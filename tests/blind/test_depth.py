"""Depth from astigmatism (psfmap.blind: depth formulas, calibrations, depth maps)."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
import torch

import psfmap
from psfmap.blind import (
    DepthCalibration,
    astigmatic_depth,
    best_axis_offset,
    calibrate_depth,
    depth_map,
    fit_depth,
    fit_depth_calibration,
    fit_psf_params,
    twin_invariant_depth,
)
from psfmap.operators.psf_map import PSFMap


def test_formula():
    params = np.array([[0.2, 0.1, 0.0], [0.2, 0.1, math.pi / 2], [0.3, 0.0, 3 * math.pi / 4],
                       [0.0, 0.2, 1.0]])
    expected = [0.2 * -1, 0.0, 0.3 * 0.5, 0.0]
    np.testing.assert_allclose(astigmatic_depth(params), expected, atol=1e-12)
    # torch in, torch out; the axis offset rotates the axis (period pi)
    tensor = torch.tensor([[0.2, 0.1, math.pi / 4]], dtype=torch.float64)
    shifted = astigmatic_depth(tensor, axis_offset=math.pi / 2)
    assert isinstance(shifted, torch.Tensor)
    # (pi/4 - pi/2) mod pi = 3 pi / 4 -> 0.2 * 0.5
    torch.testing.assert_close(shifted, torch.tensor([0.1], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        astigmatic_depth(np.zeros((4, 2)))


def test_affine_calibration_recovers_a_known_map(rng):
    raw = rng.uniform(-0.3, 0.3, 40)
    z = 4.5 * raw - 1.25
    calibration = fit_depth_calibration(raw, z)
    assert calibration.slope == pytest.approx(4.5)
    assert calibration.intercept == pytest.approx(-1.25)
    assert calibration.rms_error < 1e-12
    np.testing.assert_allclose(calibration.apply(raw), z)
    with pytest.raises(ValueError, match="do not resolve depth"):
        fit_depth_calibration(np.ones(5), np.arange(5.0))
    with pytest.raises(ValueError, match="one depth per raw depth"):
        fit_depth_calibration(raw, z[:-1])


def test_best_axis_offset_finds_the_instrument_axis():
    # astigmatism along 0 / pi/2 (not on the diagonals): focus |z|, axis flips at focus
    z = np.linspace(-1, 1, 21)
    params = np.stack([np.abs(z) * 0.3, np.full_like(z, 0.1),
                       np.where(z > 0, math.pi / 2, 0.0)], axis=1)
    offset = best_axis_offset(params, z)
    calibration = fit_depth_calibration(astigmatic_depth(params, offset), z)
    assert calibration.rms_error < 1e-9
    # the published formula (offset 0) cannot resolve this orientation
    assert fit_depth_calibration(astigmatic_depth(params, 0.0), z).rms_error > 0.1


def _scan_reports(z, b, axis, twins):
    """Z-3 parameters a blind estimator reports along an astigmatic z-scan: defocus
    a = z (in units of 2√3 waves), instrument astigmatism b (units of √6 waves) on ``axis``;
    below focus the same PSF reads as focus |a| with the axis turned by π/2; where ``twins``
    it reports the focus/astigmatism twin (C/√2, √2 f, φ) instead."""
    focus = np.abs(z) / (2 * math.sqrt(3))
    cylinder = np.full_like(z, b / math.sqrt(6))
    angle = np.where(z >= 0, axis, np.remainder(axis + math.pi / 2, math.pi))
    params = np.stack([focus, cylinder, angle], axis=1)
    params[twins] = np.stack([cylinder[twins] / math.sqrt(2), math.sqrt(2) * focus[twins],
                              angle[twins]], axis=1)
    return params


def test_twin_invariant_depth_survives_focus_astigmatism_mix_ups(rng):
    z = np.linspace(-1.0, 1.0, 41)
    z = z[z != 0]
    twins = rng.uniform(size=z.size) < 0.5
    params = _scan_reports(z, b=0.4, axis=0.3, twins=twins)
    # the twin is the same phase up to the sign of one principal curvature
    raw, side = twin_invariant_depth(params, axis_offset=0.3)
    np.testing.assert_allclose(raw, z + 0.4 * np.sign(z), atol=1e-12)
    np.testing.assert_allclose(side, np.sign(z))
    offset = best_axis_offset(params, 2.5 * z + 1.0, formula="twin-invariant")
    calibration = fit_depth(params, 2.5 * z + 1.0, axis_offset=offset,
                            formula="twin-invariant")
    assert calibration.formula == "twin-invariant" and calibration.rms_error < 1e-9
    np.testing.assert_allclose(calibration.depth(params), 2.5 * z + 1.0, atol=1e-9)
    tensor = calibration.depth(torch.from_numpy(params))
    assert isinstance(tensor, torch.Tensor)
    # the papers' formula reads a twin's astigmatism as depth (without twins it fits, up to
    # the 5° grid of axis offsets)
    paper = fit_depth(params, z, axis_offset=best_axis_offset(params, z))
    assert paper.rms_error > 0.15
    assert fit_depth(params[~twins], z[~twins],
                     axis_offset=best_axis_offset(params[~twins], z[~twins])).rms_error < 0.03
    with pytest.raises(ValueError, match="use .depth"):
        calibration.apply(raw)
    with pytest.raises(ValueError, match="axis_offset must be a finite"):
        astigmatic_depth(np.ones((2, 3)), axis_offset=float("nan"))
    with pytest.raises(TypeError, match="axis_offset must be a number"):
        twin_invariant_depth(np.ones((2, 3)), axis_offset="0.5")
    with pytest.raises(ValueError, match="formula must be one of"):
        fit_depth(params, z, formula="linear")
    with pytest.raises(ValueError, match="side must be"):
        fit_depth_calibration(raw, z, side=side[:-1])


def test_save_load_and_newer_format(tmp_path):
    calibration = DepthCalibration(slope=2.0, intercept=0.5, axis_offset=0.7,
                                   z_range=(0.0, 2.0), rms_error=0.03, metadata={"n": 3})
    path = calibration.save(tmp_path / "cal.psfmap")
    loaded = DepthCalibration.load(path)
    assert loaded == calibration
    twin = DepthCalibration(slope=1.5, intercept=0.1, axis_offset=0.2, step=-0.3,
                            formula="twin-invariant", rms_error=0.05, metadata={})
    assert DepthCalibration.load(twin.save(tmp_path / "twin.psfmap")) == twin
    # a file from a newer format version -> clear error
    with zipfile.ZipFile(path) as archive:
        header = json.loads(np.frombuffer(archive.read("__header__.npy")[128:], np.uint8)
                            .tobytes().decode())
    newer = tmp_path / "newer.psfmap"
    header["version"] = 99
    with open(newer, "wb") as handle:  # a file object: np.savez would append .npz to a path
        np.savez(handle, __header__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
    with pytest.raises(ValueError, match="newer than the version"):
        DepthCalibration.load(newer)
    # another kind of psfmap file -> clear error
    other = PSFMap("gaussian1", np.ones((1, 1, 1)), (8, 8))
    other.save(tmp_path / "map.psfmap")
    with pytest.raises(ValueError, match="expected 'depth_calibration'"):
        DepthCalibration.load(tmp_path / "map.psfmap")


class DepthOracle:
    """Stand-in zernike3 estimator: focus = patch mean / 10, axis 0 below 0.5, pi/2 above —
    a bright image plays 'above focus'; patches with texture are valid."""

    def __init__(self):
        self.family = psfmap.psf.model("zernike3", size=9)
        self.patch_size = 16

    def predict(self, patches):
        tensor = torch.as_tensor(patches, dtype=torch.float64)
        mean = tensor.mean(dim=(-2, -1))
        signed = mean - 0.5
        params = torch.stack([signed.abs() * 0.5, torch.full_like(mean, 0.1),
                              torch.where(signed > 0, math.pi / 2, 0.0)], dim=1)
        validity = (tensor.flatten(1).std(dim=1) > 1e-6).to(torch.float64)
        return params, validity


def test_calibrate_depth_and_depth_map_with_a_stand_in_estimator(rng, tmp_path):
    z_um = np.linspace(-1.0, 1.0, 7)
    texture = 0.01 * rng.standard_normal((32, 32))
    images = [0.5 + 0.4 * z + texture for z in z_um]  # mean encodes depth
    calibration = calibrate_depth(images, z_um, model=DepthOracle(), window=16, stride=16)
    assert calibration.rms_error < 0.02
    assert calibration.metadata["n_used"] == 7
    depth = depth_map(images[5], DepthOracle(), window=16, stride=16, median=0,
                      calibration=calibration)
    np.testing.assert_allclose(depth, z_um[5], atol=0.05)
    saved = calibration.save(tmp_path / "depth.psfmap")  # a calibration file works as well
    np.testing.assert_array_equal(depth_map(images[5], DepthOracle(), window=16, stride=16,
                                            median=0, calibration=str(saved)), depth)
    full = depth_map(torch.from_numpy(images[1]), DepthOracle(), calibration=calibration,
                     full_size=True)
    assert isinstance(full, torch.Tensor) and full.shape == (32, 32)
    with pytest.raises(ValueError, match="zernike3"):
        depth_map(images[0], _GaussianOracle())
    with pytest.raises(ValueError, match="one depth per image"):
        calibrate_depth(images, z_um[:3], model=DepthOracle())
    # three images fit slope, intercept and axis exactly: an error of 0 that means nothing
    with pytest.raises(ValueError, match="fits 3 numbers and needs at least 4 images;"):
        calibrate_depth(images[:3], z_um[:3], model=DepthOracle(), window=16, stride=16)
    known_axis = calibrate_depth(images[:3], z_um[:3], model=DepthOracle(), window=16,
                                 stride=16, axis_offset=0.0)
    assert known_axis.metadata["n_used"] == 3
    with pytest.raises(ValueError, match="not all equal"):
        calibrate_depth(images, np.zeros(7), model=DepthOracle())
    with pytest.raises(ValueError, match="images is empty"):
        calibrate_depth([], [], model=DepthOracle())
    with pytest.raises(ValueError, match="one 2-D image"):
        depth_map(np.stack(images[:2]), DepthOracle())
    with pytest.raises(ValueError, match="fits 3 numbers and needs at least 3 depths"):
        fit_depth(np.ones((2, 3)), [0.0, 1.0], formula="twin-invariant")
    with pytest.raises(ValueError, match="formula must be one of"):
        DepthCalibration(slope=1.0, intercept=0.0, formula="foo")


class _GaussianOracle(DepthOracle):
    def __init__(self):
        super().__init__()
        self.family = psfmap.psf.model("gaussian1")


def test_model_based_fit_recovers_zernike3_params():
    family = psfmap.psf.model("zernike3", size=15, na=1.2, wavelength=0.6, pixel_size=0.1,
                              immersion_index=1.33)
    true = np.array([[0.25, 0.15, 0.6], [0.1, 0.2, 2.0]])
    patches = 50 * family(torch.from_numpy(true)).numpy() + 3.0
    fitted = fit_psf_params(patches, family, steps=(9, 7, 12), refine=2)
    np.testing.assert_allclose(astigmatic_depth(fitted), astigmatic_depth(true), atol=0.03)


def test_image_parameters_take_the_median_across_the_axis_wrap():
    from psfmap.blind.depth_images import _image_params
    from psfmap.operators.psf_map import PSFMap

    family = psfmap.psf.model("zernike3", size=9)
    axes = np.array([0.03, np.pi - 0.02, 0.05, np.pi - 0.04, 1.5])  # last cell invalid
    params = np.stack([np.full(5, 0.2), np.full(5, 0.1), axes], 1).reshape(1, 5, 3)
    validity = np.array([[1.0, 1.0, 1.0, 1.0, 0.0]])
    median = _image_params(PSFMap(family, params, (16, 80), validity=validity))
    # the four valid cells are all nearly horizontal: so is their median (a plain median of
    # the numbers would give (0.05 + π − 0.04) / 2 ≈ π/2, vertical)
    assert min(median[2], np.pi - median[2]) < 0.05
    np.testing.assert_allclose(median[:2], [0.2, 0.1], atol=2e-3)
