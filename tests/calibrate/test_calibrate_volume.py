"""3-D calibration from bead z-stacks: a depth- and field-variant operator recovered from beads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psfmap.calibrate import CalibrationOptions, eigen_psfs, fit_thin_plate_spline
from psfmap.calibrate.volume_calibration import (
    calibrate_volume,
    collect_volume_patches,
    estimate_psf_sigma_3d,
    fit_volume_operator,
)
from psfmap.calibrate.volume_detection import detect_beads_3d
from psfmap.calibrate.volume_synthetic import (
    gaussian_psf_3d,
    point_volume,
    synthetic_bead_volume,
)
from psfmap.operators import Convolution
from psfmap.operators.volume import VolumeProductConvolution

SETTINGS = {"psf_size": 13, "psf_depth": 11, "psf_sigma": 1.0, "psf_sigma_z": 1.3,
            "min_coverage": 0.2}


def relative_error(reference, other, volume) -> float:
    a, b = reference.forward(volume), other.forward(volume)
    return float((a - b).norm() / a.norm())


@pytest.fixture(scope="module")
def gaussian_beads():
    """Beads through Gaussian PSFs that widen with depth and turn elliptic across the field."""
    return synthetic_bead_volume((28, 80, 80), grid=(3, 2), psf_shape=(7, 9, 9),
                                 margin=(8, 9, 9), spacing=16, model="gaussian",
                                 astigmatism=0.2, photons=1e6, psf_sigma=1.0, psf_sigma_z=1.3,
                                 seed=1)


def test_calibrated_operator_recovers_a_depth_and_field_variant_psf(gaussian_beads):
    sample = gaussian_beads
    operator = calibrate_volume(sample.stack, z_step=0.5, pixel_size=0.5, **SETTINGS)
    report = operator.metadata["calibration"]
    assert isinstance(operator, VolumeProductConvolution)
    assert operator.image_shape == sample.stack.shape and operator.kernel_shape == (11, 13, 13)
    assert report["n_beads"] == len(sample.positions) and report["depth_variant"]
    assert operator.metadata["z_step"] == 0.5
    volume = torch.from_numpy(point_volume(sample.stack.shape, seed=3))
    error = relative_error(sample.operator, operator, volume)
    # one invariant PSF (the truth at the centre of the volume) misses the variation
    centre = tuple(n // 2 for n in sample.stack.shape)
    invariant = relative_error(sample.operator, Convolution(sample.operator.psf_at(*centre)),
                               volume)
    assert error <= 0.06, error
    assert invariant > 2.5 * error, (invariant, error)


def test_bead_centres_are_found_to_a_tenth_of_a_voxel(gaussian_beads):
    options = CalibrationOptions(**SETTINGS)
    patches = collect_volume_patches(gaussian_beads.stack, options)
    truth = gaussian_beads.positions
    nearest = np.array([np.abs(truth - p).sum(axis=1).argmin() for p in patches.positions])
    assert len(set(nearest)) == len(truth)
    assert np.abs(patches.positions - truth[nearest]).max() < 0.1
    assert patches.patches.shape[1:] == (11, 13, 13)
    assert np.allclose(patches.patches.sum(axis=(1, 2, 3)), 1.0)


def test_beads_on_one_tilted_surface_give_a_field_only_operator():
    """Beads on a tilted coverslip cannot tell depth from field: the maps vary in (y, x) only."""
    rng = np.random.default_rng(0)
    shape = (24, 96, 96)
    stack = rng.poisson(5.0, shape).astype(np.float32)
    psf = gaussian_psf_3d((7, 9, 9), (1.3, 1.0, 1.0)).numpy()
    positions = []
    for y in range(14, 84, 14):
        for x in range(14, 84, 14):
            z = 11 + round(2 * x / 96)  # a tilted surface
            stack[z - 3:z + 4, y - 4:y + 5, x - 4:x + 5] += rng.poisson(1e5 * psf)
            positions.append((z, y, x))
    sigma, sigma_z = estimate_psf_sigma_3d(stack)
    assert sigma == pytest.approx(1.0, rel=0.15) and sigma_z == pytest.approx(1.3, rel=0.15)
    operator = calibrate_volume(stack, **SETTINGS)
    report = operator.metadata["calibration"]
    assert not report["depth_variant"] and report["grid"][0] == 1
    assert report["n_beads"] >= 0.9 * len(positions)
    weights = operator.weights
    assert torch.allclose(weights[:, 0], weights[:, -1])
    # one PSF everywhere: the calibrated PSF is the bead's, everywhere in the field
    truth = np.zeros((11, 13, 13))
    truth[2:9, 2:11, 2:11] = psf
    local = operator.psf_at(3, 40, 70).numpy()
    assert np.linalg.norm(local - truth) / np.linalg.norm(truth) < 0.03


def test_saved_operator_loads_with_the_same_psfs(gaussian_beads, tmp_path):
    operator = calibrate_volume(gaussian_beads.stack, **SETTINGS)
    path = operator.save(tmp_path / "beads.psfmap")
    loaded = VolumeProductConvolution.load(path)
    assert loaded.is_factored
    assert torch.allclose(loaded.psf_at(10, 30, 50), operator.psf_at(10, 30, 50))
    assert loaded.metadata["calibration"]["n_beads"] == \
        operator.metadata["calibration"]["n_beads"]


def test_holding_beads_out_calibrates_on_the_rest(gaussian_beads):
    options = CalibrationOptions(**SETTINGS)
    patches = collect_volume_patches(gaussian_beads.stack, options)
    keep = np.arange(len(patches)) % 4 != 3
    operator = fit_volume_operator(patches.select(keep), gaussian_beads.stack.shape, options)
    assert operator.metadata["calibration"]["n_beads"] == int(keep.sum())


def test_eigen_psfs_and_splines_in_three_dimensions():
    rng = np.random.default_rng(1)
    # patches mixing three PSFs: rank three exactly
    basis = np.stack([gaussian_psf_3d((5, 7, 7), (1.2, w, w)).numpy() for w in (0.9, 1.2, 1.6)])
    patches = np.einsum("nk,kdhw->ndhw", rng.dirichlet(np.ones(3), 12), basis)
    result = eigen_psfs(patches, n_components=3)
    assert result.kernels.shape == (3, 5, 7, 7)
    rebuilt = np.einsum("ni,idhw->ndhw", result.coefficients, result.kernels)
    assert np.abs(rebuilt - patches).max() < 1e-10
    # a 3-D spline without smoothing interpolates a linear function exactly
    nodes = rng.uniform(0, 50, (20, 3))
    values = 1 + 0.1 * nodes[:, 0] - 0.05 * nodes[:, 2]
    spline = fit_thin_plate_spline(nodes, values, smoothing=0.0, scale=50)
    points = rng.uniform(0, 50, (5, 3))
    assert np.allclose(spline(points)[:, 0], 1 + 0.1 * points[:, 0] - 0.05 * points[:, 2])
    flat = np.column_stack([rng.uniform(0, 50, (10, 2)), np.full(10, 7.0)])
    with pytest.raises(ValueError, match="coplanar"):
        fit_thin_plate_spline(flat, np.ones(10))


def test_detection_finds_every_bead_at_its_voxel():
    stack = np.zeros((20, 40, 40), dtype=np.float32)
    psf = gaussian_psf_3d((7, 7, 7), (1.3, 1.0, 1.0)).numpy()
    for z, y, x in ((6, 10, 12), (12, 28, 30), (9, 25, 9)):
        stack[z - 3:z + 4, y - 3:y + 4, x - 3:x + 4] += 1000 * psf
    stack += np.random.default_rng(0).normal(0, 0.05, stack.shape).astype(np.float32)
    found = detect_beads_3d(stack, 1.0, 1.3, margin=3)
    assert sorted(map(tuple, found.positions.tolist())) == [(6, 10, 12), (9, 25, 9), (12, 28, 30)]


def test_bad_inputs_get_one_clear_sentence(gaussian_beads):
    with pytest.raises(ValueError, match="z-stack"):
        calibrate_volume(np.zeros((64, 64)), **SETTINGS)
    with pytest.raises(ValueError, match="z_step"):
        calibrate_volume(gaussian_beads.stack, pixel_size=0.1, **SETTINGS)
    with pytest.raises(ValueError, match="no beads"):
        calibrate_volume(np.random.default_rng(0).normal(10, 1, (28, 80, 80)), **SETTINGS)
    with pytest.raises(ValueError, match="psf_depth"):
        calibrate_volume(gaussian_beads.stack, **{**SETTINGS, "psf_depth": 10})
    with pytest.raises(ValueError, match="NaN"):
        calibrate_volume(np.full((28, 80, 80), np.nan), **SETTINGS)
    with pytest.raises(TypeError, match="unknown calibration setting"):
        calibrate_volume(gaussian_beads.stack, psf_planes=11)


@pytest.mark.slow
def test_widefield_depth_variant_psf_0_to_20_um_is_recovered_within_5_percent():
    """Oil objective (NA 1.0) into water, beads 4–20 µm deep, astigmatism across the field."""
    shape = (52, 160, 160)
    sample = synthetic_bead_volume(shape, z_step=0.4, grid=(5, 3), psf_shape=(13, 15, 15),
                                   spacing=22, seed=0)
    operator = calibrate_volume(sample.stack, z_step=0.4, pixel_size=0.13, psf_size=19,
                                psf_depth=15, psf_sigma=1.0, psf_sigma_z=1.5, min_coverage=0.2)
    assert operator.metadata["calibration"]["depth_variant"]
    low, high = operator.metadata["calibration"]["bead_planes"]
    volume = point_volume(shape, seed=2)
    volume[: int(np.ceil(low))] = 0  # the test object lies where the beads are
    volume[int(high) + 1:] = 0
    error = relative_error(sample.operator, operator, torch.from_numpy(volume))
    assert error <= 0.05, error
