"""Bead detection, patch cleaning, eigen-PSFs, thin-plate splines and randomized SVD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psfmap.calibrate import detect_beads, eigen_psfs, fit_thin_plate_spline, randomized_svd
from psfmap.calibrate.patches import (
    fit_gaussian_centres,
    outlier_mask,
    psf_patches,
    recentre,
    remove_background,
)
from psfmap.calibrate.spatial import spatial_basis
from psfmap.calibrate.synthetic import ZernikeFieldFamily
from psfmap.psf import gaussian


@pytest.fixture(scope="module")
def bead_field():
    model = ZernikeFieldFamily(image_shape=(160, 160), psf_size=15)
    image, positions = model.bead_image((0.03, 0.01), 20, photons=30000, min_distance=24, seed=3)
    return model, image, positions


def _nearest(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    distance = np.sqrt(((found[:, None, :] - truth[None, :, :]) ** 2).sum(-1))
    return distance.min(axis=1)


def test_detects_every_bead_at_its_position(bead_field):
    _, image, truth = bead_field
    detection = detect_beads(image, psf_sigma=1.3, margin=9)
    inside = (truth >= 9).all(axis=1) & (truth < 160 - 9).all(axis=1)
    assert len(detection.positions) == inside.sum()
    assert _nearest(detection.positions.astype(float), truth).max() <= 1.0
    assert not detection.saturated.any()
    assert np.all(np.diff(detection.strengths) <= 0)  # sorted, strongest first


def test_detection_accepts_torch_and_finds_nothing_in_flat_noise(rng):
    noise = rng.poisson(20.0, (96, 96)).astype(np.float64)
    assert len(detect_beads(noise, 1.5).positions) == 0
    assert len(detect_beads(torch.from_numpy(noise), 1.5).positions) == 0


def test_saturated_beads_are_flagged():
    field = np.full((64, 64), 5.0)
    field[10:25, 10:25] += gaussian(15, 1.5).numpy() * 8000  # peak far above 255: clipped
    field[40:55, 40:55] += gaussian(15, 1.5).numpy() * 2000
    image = field.clip(0, 255).astype(np.uint8)
    detection = detect_beads(image, 1.5, margin=8)
    assert len(detection.positions) == 2
    saturated = {tuple(p) for p in detection.positions[detection.saturated]}
    assert saturated == {(17, 17)}
    assert [tuple(p) for p in detection.good] == [(47, 47)]


def test_detection_rejects_bad_arguments():
    with pytest.raises(ValueError, match="2-D"):
        detect_beads(np.zeros((2, 32, 32)))
    with pytest.raises(ValueError, match="psf_sigma"):
        detect_beads(np.zeros((32, 32)), psf_sigma=-1)
    with pytest.raises(ValueError, match="NaN"):
        detect_beads(np.full((32, 32), np.nan))


def test_background_plane_is_removed_exactly(rng):
    psf = gaussian(21, 1.5).numpy().astype(np.float64) * 1000
    rows, cols = np.mgrid[:21, :21]
    patches = np.stack([psf + 7 + 0.3 * rows - 0.2 * cols, psf + 2.0])
    cleaned, noise = remove_background(patches, degree=1, border=2)
    assert np.allclose(cleaned, psf, atol=0.15)  # the Gaussian's own tails reach the border
    assert noise.max() < 0.1


def test_gaussian_fit_recovers_sub_pixel_offsets():
    offsets = np.array([[0.3, -0.2], [-0.45, 0.1], [0.0, 0.0]])
    patches = np.stack(
        [np.roll(_shifted_gaussian(21, 1.6, off), 0) * 500 + 3 for off in offsets]
    )
    found, widths, converged = fit_gaussian_centres(patches, 1.6)
    assert converged.all()
    assert np.abs(found - offsets).max() < 0.02
    assert np.allclose(widths, 1.6, atol=0.05)


def _shifted_gaussian(size, sigma, offset):
    rows, cols = np.mgrid[:size, :size] - size // 2
    return np.exp(-((rows - offset[0]) ** 2 + (cols - offset[1]) ** 2) / (2 * sigma**2))


def test_recentre_moves_the_peak_to_the_centre():
    patch = _shifted_gaussian(27, 1.8, (0.4, -0.7))[None]
    centred = recentre(patch, np.array([[0.4, -0.7]]), 21)[0]
    rows, cols = np.mgrid[:21, :21] - 10
    total = centred.sum()
    assert abs((centred * rows).sum() / total) < 0.02
    assert abs((centred * cols).sum() / total) < 0.02


def test_patches_are_centred_normalised_and_accurate(bead_field):
    model, image, truth = bead_field
    detection = detect_beads(image, 1.3, margin=12)
    patches = psf_patches(image, detection.good, 19, 1.3, candidates=detection.positions)
    assert len(patches) >= 10
    assert np.allclose(patches.patches.sum(axis=(1, 2)), 1.0)
    assert _nearest(patches.positions, truth).max() < 0.1  # sub-pixel centring
    reference = model.psfs((0.03, 0.01), patches.positions, 19)
    error = np.sqrt(((patches.patches - reference) ** 2).sum((1, 2)) / (reference**2).sum((1, 2)))
    assert np.median(error) < 0.06


def test_close_pairs_are_not_isolated():
    model = ZernikeFieldFamily(image_shape=(96, 96), psf_size=15)
    positions = np.array([[40.0, 40.0], [40.0, 47.0], [20.0, 75.0]])
    image, _ = model.bead_image((0.0, 0.0), 3, positions=positions, photons=20000, seed=1)
    detection = detect_beads(image, 1.3, margin=12, min_distance=2)
    patches = psf_patches(image, detection.good, 17, 1.3, candidates=detection.positions)
    assert _nearest(patches.positions, np.array([[20.0, 75.0]])).max() < 0.5
    assert len(patches) == 1
    assert patches.rejected["not_isolated"] >= 2


def test_outlier_test_rejects_a_double_bead_and_a_wide_one(rng):
    psf = gaussian(15, 1.5).numpy().astype(np.float64)
    wide = gaussian(15, 3.0).numpy().astype(np.float64)
    patches = np.stack([psf + 0.002 * rng.standard_normal(psf.shape) for _ in range(20)] + [wide])
    energy = np.concatenate([rng.uniform(900, 1100, 20), [1000.0]])
    width = np.concatenate([rng.normal(1.5, 0.03, 20), [3.0]])
    energy[3] = 2000.0  # two beads on top of each other
    keep = outlier_mask(patches, energy, width, z_max=4.0)
    assert not keep[3] and not keep[20]
    assert keep.sum() == 19


def test_eigen_psfs_find_the_rank_of_a_low_dimensional_set(rng):
    psfs = torch.stack([gaussian(15, s) for s in np.linspace(1.2, 2.4, 40)]).double().numpy()
    noisy = psfs + 1e-5 * rng.standard_normal(psfs.shape)
    result = eigen_psfs(noisy, energy=0.9999)
    assert 2 <= result.n_components <= 4
    kernels = result.kernels.reshape(result.n_components, -1)
    assert np.allclose(kernels @ kernels.T, np.eye(result.n_components), atol=1e-8)
    approx = result.coefficients @ kernels
    assert np.linalg.norm(approx - noisy.reshape(40, -1)) / np.linalg.norm(noisy) < 0.01
    assert result.explained[-1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="need at least 50"):
        eigen_psfs(noisy, n_components=50)


def test_thin_plate_spline_smooths_noise_and_interpolates_without_smoothing(rng):
    nodes = rng.uniform(0, 200, (80, 2))

    def truth(p):
        return np.sin(p[:, 0] / 60) + 0.5 * np.cos(p[:, 1] / 50)

    noisy = truth(nodes) + 0.05 * rng.standard_normal(80)
    spline = fit_thin_plate_spline(nodes, noisy, scale=200)
    test_points = rng.uniform(20, 180, (400, 2))
    rmse = np.sqrt(np.mean((spline(test_points)[:, 0] - truth(test_points)) ** 2))
    assert rmse < 0.03  # below the noise level 0.05: cross-validation smooths
    assert spline.smoothing[0] > 0
    exact = fit_thin_plate_spline(nodes, truth(nodes), smoothing=0.0, scale=200)
    assert np.allclose(exact(nodes)[:, 0], truth(nodes), atol=1e-8)
    with pytest.raises(ValueError, match="collinear"):
        fit_thin_plate_spline(np.column_stack([np.arange(6.0), np.arange(6.0)]), np.ones(6))


def test_spline_leave_one_out_score_equals_refitting_without_each_node(rng):
    nodes = rng.uniform(0, 200, (25, 2))
    values = np.column_stack([np.sin(nodes[:, 0] / 40), nodes[:, 1] / 100])
    values = values + 0.05 * rng.standard_normal(values.shape)
    smoothing = 1e-4
    spline = fit_thin_plate_spline(nodes, values, smoothing=smoothing, scale=200)
    held_out = []
    for n in range(len(nodes)):
        keep = np.arange(len(nodes)) != n
        # the same penalty weight μ = N λ on the N - 1 remaining nodes
        refit = fit_thin_plate_spline(nodes[keep], values[keep], scale=200,
                                      smoothing=smoothing * len(nodes) / (len(nodes) - 1))
        held_out.append(values[n] - refit(nodes[n:n + 1])[0])
    assert np.allclose(spline.cv_score, np.mean(np.square(held_out), axis=0), rtol=1e-6)
    # the chosen λ minimises that score over the candidates
    chosen = fit_thin_plate_spline(nodes, values, scale=200)
    for column in range(2):
        again = fit_thin_plate_spline(nodes, values[:, column], scale=200,
                                      smoothing=float(chosen.smoothing[column]))
        assert again.cv_score[0] == pytest.approx(chosen.cv_score[column], rel=1e-9)
        other = fit_thin_plate_spline(nodes, values[:, column], scale=200,
                                      smoothing=10 * float(chosen.smoothing[column]))
        assert other.cv_score[0] >= chosen.cv_score[column]


def test_randomized_svd_matches_the_exact_spectrum(rng):
    matrix = rng.standard_normal((40, 6)) @ rng.standard_normal((6, 300))
    u, s, vt = randomized_svd(matrix, 6, seed=0)
    assert np.allclose(s, np.linalg.svd(matrix, compute_uv=False)[:6], rtol=1e-8)
    assert np.allclose(u @ np.diag(s) @ vt, matrix, atol=1e-8)


def test_spatial_basis_reconstructs_maps_of_low_rank(rng):
    grid = np.linspace(0, 1, 12)
    base = np.stack([np.ones((12, 12)), np.add.outer(grid, 0 * grid), np.outer(grid, grid)])
    mixing = rng.standard_normal((4, 2, 3))
    maps = np.einsum("kij,jrc->kirc", mixing, base)
    result = spatial_basis(maps, energy=0.999999)
    assert result.basis.shape[0] == 3
    rebuilt = np.einsum("kij,jrc->kirc", result.gammas, result.basis)
    assert np.allclose(rebuilt, maps, atol=1e-8)
