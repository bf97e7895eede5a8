"""psfmap.calibrate and OperatorFamily: synthetic validation, API, files, bad input, real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import psfmap
from psfmap.calibrate import OperatorFamily, calibrate
from psfmap.calibrate.synthetic import field_error, synthetic_calibration_set
from psfmap.operators import ProductConvolution

PSF_SIZE = 21


@pytest.fixture(scope="module")
def synthetic():
    model, conditions, images, positions = synthetic_calibration_set(
        5, (256, 256), 60, psf_size=17, seed=0
    )
    family = calibrate(images, psf_size=PSF_SIZE, metadata=model.optics)
    return model, conditions, images, family


def test_every_calibrated_operator_matches_the_known_family(synthetic):
    """Issue 4 §5, scaled down (K = 5 images of 256² with ~50 beads; full size in benchmarks)."""
    model, conditions, _, family = synthetic
    operators = family.operators()
    assert len(operators) == len(conditions)
    for condition, operator in zip(conditions, operators, strict=True):
        reference, positions = model.field_psfs(condition, grid=8, size=PSF_SIZE)
        assert field_error(operator, reference, positions) < 0.04


def test_family_shapes_spectra_and_report(synthetic):
    _, conditions, _, family = synthetic
    report = family.metadata["calibration"]
    assert family.eigen_psfs.shape == (family.n_eigen_psfs, PSF_SIZE, PSF_SIZE)
    assert family.spatial_basis.shape == (family.n_spatial, 256, 256)
    assert family.gammas.shape == (len(conditions), family.n_eigen_psfs, family.n_spatial)
    assert 2 <= family.n_eigen_psfs <= 12 and 2 <= family.n_spatial <= 16
    assert report["n_eigen"] == family.n_eigen_psfs
    assert all(n >= 30 for n in report["beads_per_image"])
    singular = np.asarray(report["eigen_singular_values"])
    assert np.all(np.diff(singular) <= 1e-12)
    assert report["eigen_explained"][family.n_eigen_psfs - 1] > 0.99
    eigen = family.eigen_psfs.double().reshape(family.n_eigen_psfs, -1)
    assert torch.allclose(eigen @ eigen.T, torch.eye(family.n_eigen_psfs, dtype=eigen.dtype),
                          atol=1e-5)
    assert len(family.patches) == sum(report["beads_per_image"])


def test_operators_are_product_convolutions_whose_psfs_sum_to_one(synthetic):
    _, _, _, family = synthetic
    operator = family.operators()[2]
    assert isinstance(operator, ProductConvolution)
    assert operator.image_shape == (256, 256)
    assert operator.metadata["na"] == pytest.approx(1.2)
    for row, col in [(10, 10), (128, 128), (240, 30)]:
        assert float(operator.psf_at(row, col).sum()) == pytest.approx(1.0, abs=0.03)
    blurred = operator.forward(torch.ones(256, 256))
    assert float(blurred[100:150, 100:150].mean()) == pytest.approx(1.0, abs=0.03)
    operator64 = family.operator(family.gammas[0], dtype=torch.float64)
    assert operator64.dtype == torch.float64
    plain = family.operator(family.gammas[0], dtype=torch.float64, factored=False)
    assert plain.n_kernels == family.n_eigen_psfs
    assert operator64.n_kernels <= min(family.n_eigen_psfs, family.n_spatial)
    image = torch.rand(256, 256, dtype=torch.float64)
    assert torch.allclose(operator64.forward(image), plain.forward(image), atol=1e-10)


def test_projection_on_the_cone(synthetic):
    _, _, _, family = synthetic
    gammas = family.gammas.numpy()
    inside = 0.3 * gammas[0] + 0.7 * gammas[3]
    assert np.allclose(family.project(inside), inside, atol=1e-8)
    outside = -gammas[1]
    projected = family.project(outside)
    assert np.linalg.norm(projected - outside) <= np.linalg.norm(outside) + 1e-12
    assert np.all(family.cone_coefficients(outside) >= 0)
    with pytest.raises(ValueError, match="gamma must have shape"):
        family.project(np.ones((1, 1, 1, 7)))
    assert gammas[0].shape[0] != gammas[0].shape[1]  # so a transposed Γ has another shape
    with pytest.raises(ValueError, match="gamma must have shape"):
        family.operator(gammas[0].T)
    np.testing.assert_array_equal(family.project(gammas[0].ravel()), family.project(gammas[0]))


def test_save_and_load_round_trip(synthetic, tmp_path):
    _, _, _, family = synthetic
    path = family.save(tmp_path / "family.psfmap")
    loaded = psfmap.OperatorFamily.load(path)
    assert loaded.image_shape == family.image_shape
    assert torch.equal(loaded.eigen_psfs, family.eigen_psfs)
    assert torch.equal(loaded.gammas, family.gammas)
    assert loaded.metadata["pixel_size"] == pytest.approx(0.08)
    assert loaded.metadata["calibration"]["n_spatial"] == family.n_spatial
    a = loaded.operators()[1].forward(torch.ones(256, 256))
    b = family.operators()[1].forward(torch.ones(256, 256))
    assert torch.allclose(a, b)
    ProductConvolution(torch.ones(1, 3, 3) / 9, torch.ones(1, 8, 8)).save(tmp_path / "op.psfmap")
    with pytest.raises(ValueError, match="operator_family"):
        OperatorFamily.load(tmp_path / "op.psfmap")


def test_calibrate_accepts_a_torch_stack_through_the_top_level_verb(synthetic):
    model, _, images, _ = synthetic
    stack = torch.from_numpy(np.stack(images[:2])).float()
    family = psfmap.calibrate(stack, psf_size=PSF_SIZE, psf_sigma=1.35)
    assert isinstance(family, psfmap.OperatorFamily)
    assert family.n_conditions == 2


@pytest.mark.slow
def test_figure_is_written(synthetic, tmp_path, check_figure):
    from psfmap.calibrate import plot_family

    _, _, _, family = synthetic
    plot_family(family, tmp_path / "calibration.png", condition=1)
    check_figure(tmp_path / "calibration.png")


# ---------------------------------------------------------------- bad input


def test_images_of_different_shapes_are_refused(synthetic):
    _, _, images, _ = synthetic
    with pytest.raises(ValueError, match=r"images\[1\] has shape \(200, 256\)"):
        calibrate([images[0], images[1][:200]])
    with pytest.raises(ValueError, match="3-D stack"):
        calibrate(np.zeros((2, 2, 32, 32)))
    with pytest.raises(TypeError, match="list of 2-D images"):
        calibrate("beads.tif")
    with_nan = np.array(images[1], dtype=np.float32)
    with_nan[5, 7] = np.nan
    with pytest.raises(ValueError, match=r"images\[1\] contains NaN"):
        calibrate([images[0], with_nan])
    for option, match in (({"grid_step": 0}, "grid_step"), ({"background_degree": -1},
                          "background_degree"), ({"saturation": -1.0}, "saturation"),
                          ({"metadata": "x"}, "metadata"), ({"progress": 3}, "progress"),
                          ({"n_eigen": 0}, "n_eigen"), ({"spatial_rank": -2}, "spatial_rank")):
        with pytest.raises((ValueError, TypeError), match=match):
            calibrate(images, **option)


def test_no_beads_is_a_clear_error(rng):
    noise = rng.poisson(20.0, (128, 128)).astype(float)
    with pytest.raises(ValueError, match=r"no beads found in images\[0\]"):
        calibrate([noise], psf_sigma=1.5)


def test_saturated_images_are_a_clear_error(synthetic):
    _, _, images, _ = synthetic
    clipped = np.clip(images[0] / 2, 0, 255).astype(np.uint8)  # every bead peak clipped
    with pytest.raises(ValueError, match="saturated"):
        calibrate([clipped], psf_sigma=1.35, psf_size=PSF_SIZE)


def test_clustered_beads_are_a_clear_error():
    from psfmap.calibrate.synthetic import ZernikeFieldFamily

    model = ZernikeFieldFamily(image_shape=(256, 256), psf_size=17)
    corner_model = ZernikeFieldFamily(image_shape=(90, 90), psf_size=17)
    corner = corner_model.random_positions(12, 24, 12, np.random.default_rng(2))  # one corner
    image, _ = model.bead_image((0.0, 0.0), 12, positions=corner, seed=1)
    with pytest.raises(ValueError, match="clustered"):
        calibrate([image], psf_sigma=1.35, psf_size=PSF_SIZE)
    grid = np.stack(np.meshgrid(np.arange(30, 230, 9.0), np.arange(30, 230, 9.0)), -1)
    packed, _ = model.bead_image((0.0, 0.0), 0, positions=grid.reshape(-1, 2), seed=1)
    with pytest.raises(ValueError, match="isolated.*a smaller one .down to 11"):
        calibrate([packed], psf_sigma=1.35, psf_size=PSF_SIZE)


def test_too_few_beads_for_the_requested_ranks(synthetic):
    _, _, images, _ = synthetic
    with pytest.raises(ValueError, match="n_eigen=500 eigen-PSFs need at least 500"):
        calibrate(images[:1], psf_size=PSF_SIZE, n_eigen=500)
    with pytest.raises(ValueError, match="spatial_rank=9 needs at least 9 coefficient maps"):
        calibrate(images[:1], psf_size=PSF_SIZE, n_eigen=2, spatial_rank=9)
    with pytest.raises(ValueError, match="spatial maps need at least 500"):
        calibrate(images[:1], psf_size=PSF_SIZE, min_beads=500)


# ---------------------------------------------------------------- real data


@pytest.mark.slow
def test_real_leica_beads_smoke(shared_data):
    """A few slices near focus (z ≈ 31) of the Leica confocal stack, cropped to 640²."""
    tifffile = pytest.importorskip("tifffile")
    stack = tifffile.imread(shared_data / "beads" / "leica_confocal_beads_zstack.tif")
    crop = stack[:, :640, :640]
    family = calibrate([crop[z] for z in (29, 30, 32, 33)], psf_sigma=2.7)
    report = family.metadata["calibration"]
    assert family.n_conditions == 4
    assert min(report["beads_per_image"]) >= 20
    assert 1 <= family.n_eigen_psfs <= 8
    psf = family.operators()[1].psf_at(320, 320)
    h = psf.shape[0] // 2
    assert float(psf.sum()) == pytest.approx(1.0, abs=0.1)
    assert int(torch.argmax(psf)) in {(h + dr) * psf.shape[1] + h + dc
                                      for dr in (-1, 0, 1) for dc in (-1, 0, 1)}
    # the calibrated model predicts the bead patches of slice 30 to the noise level
    patches = family.patches.select(family.patches.image_index == 1)
    predicted = family.psfs_at(family.gammas[1], patches.positions)
    error = np.linalg.norm((predicted - patches.patches).reshape(len(patches), -1), axis=1)
    error /= np.linalg.norm(patches.patches.reshape(len(patches), -1), axis=1)
    assert np.median(error) < 0.25


@pytest.mark.slow
def test_real_crowded_multimode_fibre_beads(shared_data):
    """35 beads through a multimode fibre: the default patch leaves none isolated, and the
    error names the way out; with 21² patches the calibration holds most of them."""
    tifffile = pytest.importorskip("tifffile")
    image = tifffile.imread(shared_data / "beads" / "multimode_fibre_beads.tif")
    with pytest.raises(ValueError, match=r"none of the \d+ beads .* a smaller one"):
        calibrate(image)
    family = calibrate(image, psf_size=21)
    assert family.metadata["calibration"]["beads_per_image"][0] >= 25
    assert family.eigen_psfs.shape[1:] == (21, 21)


def test_local_psfs_agree_with_the_operator(synthetic):
    _, _, _, family = synthetic
    positions = np.array([[0, 0], [255, 255], [37, 158], [120, 3]])
    values = family.basis_at(positions)
    full = family.spatial_basis.numpy()[:, positions[:, 0], positions[:, 1]].T
    assert np.allclose(values, full, atol=1e-5)
    gamma = family.gammas[3].numpy()
    operator = family.operator(gamma)
    local = family.psfs_at(gamma, positions)
    for psf, (row, col) in zip(local, positions, strict=True):
        assert np.allclose(operator.psf_at(row, col).numpy(), psf, atol=1e-5)
