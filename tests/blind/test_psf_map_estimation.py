"""Sliding-window PSF map estimation (psfmap.blind.psf_maps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import psfmap
from psfmap.blind.psf_maps import (
    estimate_psf_map,
    fill_invalid,
    grid_size,
    median_filter_grid,
    resample_params,
    window_starts,
)
from psfmap.operators.psf_map import PSFMap


class MeanWidthEstimator:
    """Stand-in PSF estimator with a known answer: the Gaussian width of a patch is its mean
    intensity, and a patch is valid when it has texture (non-zero standard deviation)."""

    def __init__(self, patch_size: int = 16):
        self.family = psfmap.psf.model("gaussian1", size=9)
        self.patch_size = patch_size
        self.calls = 0

    def predict(self, patches):
        self.calls += 1
        tensor = torch.as_tensor(patches, dtype=torch.float64)
        width = tensor.mean(dim=(-2, -1)).clamp(0.5, 4.0)
        validity = (tensor.flatten(1).std(dim=1) > 1e-3).to(torch.float64)
        return width[:, None], validity


def _ramp_image(height: int, width: int) -> np.ndarray:
    """Width field 1 + 2 x / W (+ a zero-mean checkerboard texture on even windows)."""
    cols = np.arange(width)
    ramp = np.broadcast_to(1.0 + 2.0 * cols / width, (height, width))
    checker = 0.05 * (-1.0) ** (np.add.outer(np.arange(height), cols))
    return ramp + checker


@pytest.mark.parametrize(
    ("length", "window", "stride"), [(64, 16, 8), (100, 16, 16), (37, 16, 5), (16, 16, 8)]
)
def test_windows_cover_the_image(length, window, stride):
    n_cells = grid_size(length, window, stride)
    starts = window_starts(length, window, n_cells)
    covered = np.zeros(length, dtype=bool)
    for start in starts:
        assert 0 <= start <= length - window
        covered[start:start + window] = True
    assert covered.all()
    assert n_cells == max(1, int(np.ceil((length - window) / stride)) + 1)


def test_map_positions_follow_the_grid_convention():
    estimator = MeanWidthEstimator()
    image = _ramp_image(48, 80)
    psf_map = estimate_psf_map(image, estimator, window=16, stride=8)
    assert isinstance(psf_map, PSFMap)
    gy, gx = psf_map.grid
    assert (gy, gx) == (grid_size(48, 16, 8), grid_size(80, 16, 8))
    np.testing.assert_allclose(psf_map.metadata["centres_x"], (np.arange(gx) + 0.5) * 80 / gx)
    # every window is centred on its cell (or pushed inwards at the border)
    for start, centre in zip(psf_map.metadata["window_cols"], psf_map.metadata["centres_x"]):
        assert abs(start + 8 - centre) <= 0.5 or start in (0, 80 - 16)
    assert psf_map.metadata["model"] == "gaussian1"
    assert psf_map.metadata["window"] == 16


def test_known_spatially_varying_params_give_the_right_map():
    estimator = MeanWidthEstimator()
    image = _ramp_image(64, 96)
    psf_map = estimate_psf_map(image, estimator, window=16, stride=8, batch_size=7)
    # the expected width of a cell is the mean of the ramp over its window
    cols = np.asarray(psf_map.metadata["window_cols"])
    expected = 1.0 + 2.0 * (cols + 7.5) / 96
    for row in range(psf_map.grid[0]):
        np.testing.assert_allclose(psf_map.params[row, :, 0], expected, atol=1e-6)
    assert np.all(psf_map.validity == 1)
    assert estimator.calls > 1  # batched
    assert psf_map.operator().image_shape == (64, 96)


def test_grid_and_larger_windows_average_sub_patches():
    estimator = MeanWidthEstimator(patch_size=8)
    image = _ramp_image(64, 64)
    psf_map = estimate_psf_map(image, estimator, window=20, grid=(3, 4))
    assert psf_map.grid == (3, 4)
    cols = np.asarray(psf_map.metadata["window_cols"])
    np.testing.assert_allclose(psf_map.params[1, :, 0], 1 + 2 * (cols + 9.5) / 64, atol=1e-6)


def test_invalid_cells_filled_by_inverse_distance_weighting():
    params = np.array([1.0, 0.0, 0.0, 0.0, 5.0])[None, :, None]
    valid = np.array([[True, False, False, False, True]])
    filled = fill_invalid(params, valid)
    # 1/d weighting between the two ends interpolates linearly along a row
    np.testing.assert_allclose(filled[0, :, 0], [1, 2, 3, 4, 5])
    # a cell in no valid row or column is filled in a second pass
    grid = np.zeros((3, 3, 2))
    grid[0, 0] = (2.0, 7.0)
    mask = np.zeros((3, 3), dtype=bool)
    mask[0, 0] = True
    np.testing.assert_allclose(fill_invalid(grid, mask), np.broadcast_to([2.0, 7.0], (3, 3, 2)))
    with pytest.raises(ValueError, match="no valid cell"):
        fill_invalid(grid, np.zeros((3, 3), dtype=bool))


def test_textureless_windows_are_filled_from_textured_ones():
    estimator = MeanWidthEstimator()
    image = _ramp_image(32, 96)
    image[:, 40:] = 2.0  # flat right part: no texture
    psf_map = estimate_psf_map(image, estimator, window=16, stride=16)
    valid = psf_map.validity >= 0.5
    assert valid[:, 0].all() and not valid[:, -1].any()
    last_valid = np.nonzero(valid[0])[0].max()
    # filled cells take the nearest valid cell's parameters (only one side is valid)
    np.testing.assert_allclose(psf_map.params[:, last_valid + 1:, 0],
                               psf_map.params[0, last_valid, 0], atol=1e-9)
    assert psf_map.metadata["n_valid"] == int(valid.sum())


def test_median_filter_removes_an_outlier():
    grid = np.full((5, 5, 1), 2.0)
    grid[2, 2] = 4.0
    np.testing.assert_allclose(median_filter_grid(grid, 3), 2.0)
    assert median_filter_grid(grid, 0) is grid
    estimator = MeanWidthEstimator()
    image = _ramp_image(64, 64)
    image[16:32, 16:32] += 1.5  # one window with a much wider "PSF"
    raw = estimate_psf_map(image, estimator, window=16, stride=16)
    smooth = estimate_psf_map(image, estimator, window=16, stride=16, median=3)
    assert raw.params[1:3, 1:3].max() > 3.0
    assert smooth.params[1:3, 1:3].max() < 3.0
    assert smooth.metadata["median"] == 3


def test_image_smaller_than_a_window_is_a_clear_error():
    with pytest.raises(ValueError, match="smaller than one 16x16 window"):
        estimate_psf_map(np.ones((10, 40)), MeanWidthEstimator())
    with pytest.raises(ValueError, match="at least the estimator's patch size"):
        estimate_psf_map(np.ones((40, 40)), MeanWidthEstimator(), window=8)
    with pytest.raises(ValueError, match="stride must be at most the window"):
        estimate_psf_map(_ramp_image(40, 40), MeanWidthEstimator(), stride=20)
    with pytest.raises(ValueError, match="2-D"):
        estimate_psf_map(np.ones((2, 40, 40)), MeanWidthEstimator())
    with pytest.raises(TypeError, match="PSFEstimator"):
        estimate_psf_map(np.ones((40, 40)), object())


def test_constant_image_is_a_clear_error_not_a_crash():
    class AlwaysValid(MeanWidthEstimator):
        def predict(self, patches):  # a network may be fooled by flat input: we are not
            width, _ = super().predict(patches)
            return width, torch.ones(width.shape[0], dtype=torch.float64)

    for estimator in (MeanWidthEstimator(), AlwaysValid()):
        with pytest.raises(ValueError, match="no texture"):
            estimate_psf_map(np.full((40, 40), 3.0, dtype=np.float32), estimator)


def test_torch_float64_input_and_save_load(tmp_path):
    image = torch.from_numpy(_ramp_image(32, 32))
    psf_map = estimate_psf_map(image, MeanWidthEstimator())
    path = psf_map.save(tmp_path / "map.psfmap")
    loaded = PSFMap.load(path)
    np.testing.assert_allclose(loaded.params, psf_map.params)
    assert loaded.metadata["window_rows"] == psf_map.metadata["window_rows"]


def test_resample_params_is_bilinear_between_cell_centres():
    params = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])[..., None]
    psf_map = PSFMap("gaussian1", params, (40, 60))
    np.testing.assert_allclose(resample_params(psf_map, (2, 3)), params)
    finer = resample_params(psf_map, (4, 6))[..., 0]
    np.testing.assert_allclose(finer[0], [1, 1.25, 1.75, 2.25, 2.75, 3])
    np.testing.assert_allclose(finer[:, 0], [1, 1.75, 3.25, 4])


def test_psf_estimator_psf_map_method():
    from psfmap.blind.estimator import PSFEstimator
    from psfmap.blind.network import PSFRegressor

    if not hasattr(PSFEstimator, "psf_map"):
        pytest.skip("PSFEstimator.psf_map not attached yet")
    family = psfmap.psf.model("gaussian1", size=9)
    network_config = {"patch_size": 16, "n_params": 1, "width": 4, "blocks": [1], "hidden": 8}
    network = PSFRegressor.from_config(network_config)
    with torch.no_grad():
        network.head[-1].bias[-1] = 6.0  # untrained, but every textured patch 'valid'
    estimator = PSFEstimator(network, {"family": family.config(), "network": network_config})
    psf_map = estimator.psf_map(_ramp_image(48, 64), window=16, stride=16)
    assert isinstance(psf_map, PSFMap) and psf_map.grid == (3, 4)
    assert np.all((psf_map.params >= family.low) & (psf_map.params <= family.high))


class AxisEstimator:
    """Stand-in zernike3 estimator: horizontal astigmatism whose axis reads just above 0 in
    bright patches and just below π in dark ones (the same PSF, on both sides of the wrap)."""

    def __init__(self):
        self.family = psfmap.psf.model("zernike3", size=9)
        self.patch_size = 16

    def predict(self, patches):
        tensor = torch.as_tensor(patches, dtype=torch.float64)
        bright = tensor.mean(dim=(-2, -1)) > 0.5
        axis = torch.where(bright, 0.04, np.pi - 0.04)
        params = torch.stack([torch.full_like(axis, 0.1), torch.full_like(axis, 0.2), axis], 1)
        validity = (tensor.flatten(1).std(dim=1) > 1e-3).to(torch.float64)
        return params, validity


def test_astigmatism_axis_is_pooled_filled_and_filtered_across_its_wrap():
    rng = np.random.default_rng(3)
    image = 0.05 * rng.standard_normal((64, 64))
    image += np.where((np.arange(64) // 8) % 2 == 0, 0.2, 0.8)[None, :]  # stripes of brightness
    image[:16, :16] = 0.5  # one flat, invalid corner, filled from both kinds of neighbours
    for window, median in ((16, 3), (32, 0)):  # median filter; sub-patch pooling
        psf_map = estimate_psf_map(image, AxisEstimator(), window=window, stride=8,
                                   median=median)
        axis = np.asarray(psf_map.params)[..., 2]
        # every cell stays horizontal (within the two readings); a number average gives π/2
        assert np.all(np.minimum(axis, np.pi - axis) <= 0.04 + 1e-5), axis
        np.testing.assert_allclose(np.asarray(psf_map.params)[..., 1], 0.2, atol=0.01)
    resampled = resample_params(psf_map, (5, 5))
    assert np.all(np.minimum(resampled[..., 2], np.pi - resampled[..., 2]) <= 0.04 + 1e-5)
