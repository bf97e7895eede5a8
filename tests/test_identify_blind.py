"""Blind verbs psfmap.estimate / psfmap.deblur (estimate the PSF map, then RL-TV)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import psfmap
from psfmap.identify.blind import BlindResult, deblur, estimate
from psfmap.operators.psf_map import PSFMap

TRUE_WIDTH = 1.6


class OracleEstimator:
    """Stand-in estimator that knows the blur: Gaussian width TRUE_WIDTH everywhere, valid
    where the patch has texture (the network's job is tested with the shipped weights)."""

    def __init__(self):
        self.family = psfmap.psf.model("gaussian1", size=11)
        self.patch_size = 16

    def predict(self, patches):
        tensor = torch.as_tensor(patches, dtype=torch.float64)
        validity = (tensor.flatten(1).std(dim=1) > 1e-6).to(torch.float64)
        return torch.full((tensor.shape[0], 1), TRUE_WIDTH, dtype=torch.float64), validity


@pytest.fixture
def blurred_pair():
    sharp = psfmap.simulate.samples.bundled_sample("neuron")[96:160, 96:160]
    sharp = (sharp / sharp.max()).astype(np.float32)
    operator = psfmap.Convolution(psfmap.psf.gaussian(11, TRUE_WIDTH, dtype=torch.float64))
    blurred = operator(torch.from_numpy(sharp.astype(np.float64))).numpy().astype(np.float32)
    return sharp, np.clip(blurred, 0, None)


def test_deblur_improves_snr_and_keeps_numpy_float32(blurred_pair):
    sharp, blurred = blurred_pair
    restored = deblur(blurred, OracleEstimator(), iterations=20)
    assert isinstance(restored, np.ndarray)
    assert restored.dtype == np.float32 and restored.shape == blurred.shape
    before = psfmap.metrics.snr(sharp, blurred)
    after = psfmap.metrics.snr(sharp, restored)
    assert after > before + 0.5


def test_deblur_torch_in_torch_out_and_result_object(blurred_pair):
    _, blurred = blurred_pair
    image = torch.from_numpy(blurred).double()
    result = deblur(image, OracleEstimator(), iterations=3, tv=0.0, return_map=True)
    assert isinstance(result, BlindResult)
    assert isinstance(result.restored, torch.Tensor) and result.restored.dtype == torch.float64
    assert isinstance(result.psf_map, PSFMap)
    np.testing.assert_allclose(result.psf_map.params, TRUE_WIDTH)
    # a given map is used as is
    again = deblur(image, OracleEstimator(), iterations=3, tv=0.0, psf_map=result.psf_map)
    torch.testing.assert_close(again, result.restored)


def test_estimate_returns_a_psf_map(blurred_pair):
    _, blurred = blurred_pair
    psf_map = estimate(blurred, OracleEstimator(), window=16, stride=16, median=0)
    assert psf_map.grid == (4, 4)
    assert psf_map.image_shape == blurred.shape


def test_deblur_bad_input_is_a_clear_error(blurred_pair):
    _, blurred = blurred_pair
    with pytest.raises(ValueError, match="negative"):
        deblur(blurred - 1.0, OracleEstimator())
    with pytest.raises(ValueError, match="iterations"):
        deblur(blurred, OracleEstimator(), iterations=0)
    with pytest.raises(TypeError, match="model must be"):
        deblur(blurred, model=3)
    with pytest.raises(ValueError, match="no texture"):
        deblur(np.ones((32, 32)), OracleEstimator())


def test_deblur_with_the_shipped_zernike3_model():
    from psfmap.identify.cnn import pretrained_names

    if "zernike3" not in pretrained_names():
        pytest.skip("shipped zernike3 weights not present")
    sharp = psfmap.simulate.samples.bundled_sample("neuron")[64:192, 64:192]
    family = psfmap.psf.model("zernike3")
    psf = family(torch.tensor([[0.25, 0.05, 0.5]], dtype=torch.float64))[0]
    blurred = psfmap.Convolution(psf)(torch.from_numpy(sharp)).numpy().clip(0, None)
    result = deblur(blurred, "zernike3", iterations=10, return_map=True)
    assert result.psf_map.family.name == "zernike3"
    assert psfmap.metrics.snr(sharp, result.restored) > psfmap.metrics.snr(sharp, blurred)
