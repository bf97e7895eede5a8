"""psfmap.simulate: samples, parameter fields, Poisson–Gaussian noise, the simulate verb."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psfmap.operators import cell_centres, from_psf_grid
from psfmap.psf import model
from psfmap.simulate import (
    beads,
    bundled_sample,
    cells,
    fields,
    parameter_field,
    poisson_gaussian,
    random_points,
    simulate,
    texture,
)

# ---------------------------------------------------------------- fields


def test_tilt_is_linear_from_low_to_high():
    family = model("gaussian1")
    params = parameter_field(family, "tilt", (3, 5))[..., 0]
    np.testing.assert_allclose(params[:, 0], family.low[0])
    np.testing.assert_allclose(params[:, -1], family.high[0])
    np.testing.assert_allclose(np.diff(params, axis=1), np.diff(params, axis=1)[0, 0])
    along_y = fields.tilt((4, 2), angle=np.pi / 2)
    np.testing.assert_allclose(along_y[:, 0], [0, 1 / 3, 2 / 3, 1])


def test_radial_grows_off_axis_and_axis_follows_azimuth():
    unit = fields.radial((5, 5))
    assert unit[2, 2] == 0 and unit.max() <= 1
    assert unit[0, 0] > unit[1, 1] > unit[2, 2]
    params = parameter_field(model("zernike3"), "radial", (5, 5))
    axis = params[..., 2]
    assert axis[2, 4] == pytest.approx(0.0)  # right of centre: radial direction along x
    assert axis[0, 2] == pytest.approx(np.pi / 2)  # above centre: along y


def test_smooth_random_is_seeded_in_range_and_independent_per_parameter():
    family = model("gaussian2")
    first = parameter_field(family, "smooth_random", (6, 6), seed=3)
    np.testing.assert_array_equal(first, parameter_field(family, "smooth_random", (6, 6), seed=3))
    assert not np.allclose(first, parameter_field(family, "smooth_random", (6, 6), seed=4))
    assert np.all(first >= family.low) and np.all(first <= family.high)
    assert not np.allclose(first[..., 0], first[..., 1])
    # the same continuous surface at any sampling: a 1x1 grid equals the centre of a 3x3 grid
    np.testing.assert_allclose(fields.smooth_random((1, 1), seed=2)[0, 0],
                               fields.smooth_random((3, 3), seed=2)[1, 1])


def test_constant_field_and_errors():
    family = model("gaussian1")
    params = parameter_field(family, "constant", (2, 3), value=0.25)
    expected = family.low[0] + 0.25 * (family.high[0] - family.low[0])
    np.testing.assert_allclose(params[..., 0], expected)
    with pytest.raises(ValueError, match="unknown field"):
        parameter_field(family, "wavy", (2, 2))
    with pytest.raises(ValueError, match="grid"):
        parameter_field(family, "tilt", (0, 2))
    with pytest.raises(ValueError, match="low"):
        parameter_field(family, "tilt", (2, 2), low=[np.nan])


# ---------------------------------------------------------------- noise


def test_poisson_gaussian_statistics():
    clean = np.full((200, 200), 2.0)
    noisy = poisson_gaussian(clean, photons=100, seed=0)
    assert noisy.dtype == clean.dtype and noisy.shape == clean.shape
    assert noisy.mean() == pytest.approx(2.0, rel=0.01)
    # Poisson in photons: variance of the rescaled image is x / s = 2 / 50
    assert noisy.var() == pytest.approx(2.0 / 50, rel=0.05)
    read = poisson_gaussian(clean, photons=100, read_noise=5.0, quantum_efficiency=0.5,
                            seed=0)
    # electrons ~ P(0.5 * 50 * 2) + N(0, 25): rescaled variance (50 + 25) / 25^2
    assert read.var() == pytest.approx(75 / 625, rel=0.05)


def test_poisson_gaussian_counts_seed_and_torch():
    clean = torch.rand(32, 32, dtype=torch.float32) + 0.5
    counts = poisson_gaussian(clean, photons=1000, offset=100.0, rescale=False, seed=1)
    assert isinstance(counts, torch.Tensor) and counts.dtype == torch.float32
    assert float(counts.min()) > 100
    again = poisson_gaussian(clean, photons=1000, offset=100.0, rescale=False, seed=1)
    assert torch.equal(counts, again)
    generator = torch.Generator().manual_seed(1)
    assert torch.equal(counts, poisson_gaussian(clean, photons=1000, offset=100.0,
                                                rescale=False, seed=generator))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"photons": 0}, "photons"),
        ({"photons": 10, "quantum_efficiency": 1.5}, "quantum_efficiency"),
        ({"photons": 10, "read_noise": -1}, "read_noise"),
        ({"photons": 10, "offset": float("nan")}, "offset"),
    ],
)
def test_poisson_gaussian_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        poisson_gaussian(np.ones((4, 4)), **kwargs)


def test_poisson_gaussian_bad_images():
    with pytest.raises(ValueError, match="negative"):
        poisson_gaussian(-np.ones((4, 4)), photons=10)
    with pytest.raises(ValueError, match="NaN"):
        poisson_gaussian(np.full((4, 4), np.nan), photons=10)
    with pytest.raises(ValueError, match="all zero"):
        poisson_gaussian(np.zeros((4, 4)), photons=10)


# ---------------------------------------------------------------- samples


def test_beads_are_separated_and_described():
    result = beads((96, 96), 12, min_separation=15, margin=6, seed=2)
    positions, amplitudes = result.positions, result.amplitudes
    assert len(positions) == 12 and amplitudes.shape == (12,)
    distances = np.hypot(*(positions[:, None] - positions[None]).transpose(2, 0, 1))
    assert distances[~np.eye(12, dtype=bool)].min() >= 15
    assert positions.min() >= 6 and positions.max() < 90
    np.testing.assert_array_equal(result.image[positions[:, 0], positions[:, 1]], amplitudes)
    assert np.count_nonzero(result.image) == 12
    np.testing.assert_array_equal(result.image, beads((96, 96), 12, min_separation=15,
                                                      margin=6, seed=2).image)


def test_beads_too_many_returns_what_fits():
    result = beads((32, 32), 50, min_separation=12, margin=4, seed=0)
    assert 1 <= len(result.positions) < 50


def test_cells_points_textures_and_bundled_sample():
    image = cells((64, 80), n_cells=5, seed=0)
    assert image.shape == (64, 80) and image.min() >= 0 and image.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(image, cells((64, 80), n_cells=5, seed=0))
    points = random_points((50, 50), density=0.01, seed=0)
    assert 5 < np.count_nonzero(points) < 60
    grass = texture("grass", (40, 60))
    assert grass.shape == (40, 60) and 0 <= grass.min() and grass.max() <= 1
    assert texture("astronaut", (700, 700)).shape == (700, 700)  # upsampled when too small
    sample = bundled_sample()
    assert sample.shape == (256, 256) and sample.min() == 0 and sample.max() == 1


def test_sample_errors():
    with pytest.raises(ValueError, match="shape"):
        cells((0, 10))
    with pytest.raises(ValueError, match="n_beads"):
        beads((32, 32), -1)
    with pytest.raises(ValueError, match="unknown texture"):
        texture("lena")
    with pytest.raises(ValueError, match="unknown bundled"):
        bundled_sample("nope")
    with pytest.raises(ValueError, match="density"):
        random_points((8, 8), density=2)


# ---------------------------------------------------------------- simulate


def test_simulate_numpy_in_numpy_out_and_operator_is_the_truth():
    sharp = cells((48, 64), n_cells=4, seed=1).astype(np.float32)
    result = simulate(sharp, "gaussian1", "tilt", (2, 3), photons=500, seed=0)
    assert isinstance(result.blurred, np.ndarray) and result.blurred.dtype == np.float32
    assert result.blurred.shape == sharp.shape
    assert result.params.shape == (2, 3, 1) and result.psf_map.grid == (2, 3)
    expected = from_psf_grid(result.psf_map.psfs(), sharp.shape).forward(torch.from_numpy(sharp))
    np.testing.assert_allclose(result.clean, expected.clamp_min(0).numpy(), atol=1e-6)
    assert not np.allclose(result.blurred, result.clean)
    again = simulate(sharp, "gaussian1", "tilt", (2, 3), photons=500, seed=0)
    np.testing.assert_array_equal(result.blurred, again.blurred)


def test_point_at_cell_centre_is_blurred_by_that_cell_psf():
    shape = (40, 60)
    rows, cols = cell_centres(2, shape[0]), cell_centres(3, shape[1])
    row, col = int(rows[1]), int(cols[2])
    sharp = np.zeros(shape)
    sharp[row, col] = 1.0
    result = simulate(sharp, "gaussian2", "smooth_random", (2, 3), seed=5, size=9)
    psf = result.psf_map.psfs(dtype=torch.float64)[1, 2].numpy()
    np.testing.assert_allclose(result.clean[row - 4:row + 5, col - 4:col + 5], psf, atol=1e-10)
    np.testing.assert_array_equal(result.blurred, result.clean)  # photons=None: no noise


def test_simulate_torch_in_torch_out_explicit_field_and_zernike():
    sharp = torch.rand(24, 24, dtype=torch.float64)
    params = np.array([[[0.0, 0.1, 0.3]], [[0.3, 0.0, 0.0]]])  # (2, 1, 3) zernike3
    result = simulate(sharp, "zernike3", params, photons=200, seed=1, size=11)
    assert isinstance(result.blurred, torch.Tensor) and result.blurred.dtype == torch.float64
    np.testing.assert_array_equal(result.params, params)
    assert result.settings["field"] == "explicit"


@pytest.mark.parametrize(
    "sharp, kwargs, error, message",
    [
        (np.full((8, 8), np.nan), {}, ValueError, "NaN"),
        (np.ones((2, 8, 8)), {}, ValueError, r"\(H, W\)"),
        (-np.ones((8, 8)), {}, ValueError, "negative"),
        (np.ones((8, 8)), {"model": "airy9"}, ValueError, "unknown PSF model"),
        (np.ones((8, 8)), {"field": "wavy"}, ValueError, "unknown field"),
        (np.ones((8, 8)), {"grid": (0, 2)}, ValueError, "grid"),
        (np.ones((8, 8)), {"model": 3}, TypeError, "model"),
        (np.ones((8, 8)), {"photons": -5}, ValueError, "photons"),
        ("image.tif", {}, TypeError, "sharp"),
    ],
)
def test_simulate_bad_input(sharp, kwargs, error, message):
    options = {"model": "gaussian1", "size": 5, "grid": (2, 2), **kwargs}
    with pytest.raises(error, match=message):
        simulate(sharp, **options)


def test_top_level_verb_and_subpackage_share_the_name():
    import psfmap

    result = psfmap.simulate(np.ones((16, 16)), "gaussian1", "constant", (2, 2), size=5)
    assert result.psf_map.grid == (2, 2)
    assert psfmap.simulate.cells((8, 8), 1, seed=0).shape == (8, 8)


def test_seeds_are_checked_and_generators_give_a_replayable_seed():
    sharp = cells((32, 32), n_cells=2, seed=0)
    for bad, error in ((-1, ValueError), (2**70, ValueError), (True, TypeError),
                       ("3", TypeError)):
        with pytest.raises(error, match="seed"):
            simulate(sharp, "gaussian1", "tilt", (2, 2), seed=bad)
    with pytest.raises(ValueError, match="seed"):
        cells((32, 32), seed=-5)
    drawn = simulate(sharp, "gaussian1", "smooth_random", (2, 2), photons=50,
                     seed=torch.Generator().manual_seed(3))
    replay = simulate(sharp, "gaussian1", "smooth_random", (2, 2), photons=50, seed=drawn.seed)
    assert isinstance(drawn.seed, int)
    np.testing.assert_array_equal(drawn.blurred, replay.blurred)
