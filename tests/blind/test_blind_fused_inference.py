"""The fast inference path of the blind CNN equals the plain one (float32 rounding only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psfmap.blind.estimator import PSFEstimator
from psfmap.blind.network import PSFRegressor
from psfmap.blind.psf_maps import deviation_at_most, estimate_psf_map
from psfmap.training import TrainConfig


def _network(patch_size: int, model: str = "gaussian1") -> tuple[PSFRegressor, dict]:
    torch.manual_seed(0)
    config = TrainConfig(model=model, data={"patch_size": patch_size},
                         uncertainty_steps=1).resolved()
    network = PSFRegressor.from_config(config.network)
    with torch.no_grad():  # batch-norm statistics far from the identity, as after training
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.2, 3.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return network.eval(), config.to_dict()


@pytest.mark.parametrize("patch_size", [32, 31])
def test_fused_trunk_equals_pooled_features(patch_size):
    network, _ = _network(patch_size)
    patches = torch.rand(20, patch_size, patch_size) ** 3
    patches[0] = 0.25  # a constant patch
    with torch.inference_mode():
        plain = network.pooled_features(patches)
        fused = network.fused_for_inference()(patches)
    assert fused.shape == plain.shape
    assert torch.allclose(fused, plain, rtol=0, atol=1e-5 * float(plain.abs().max()))


def test_estimator_follows_changed_weights():
    network, config = _network(32)
    estimator = PSFEstimator(network, config)
    patches = torch.rand(6, 32, 32)
    first = estimator.predict(patches)[0]
    with torch.no_grad():
        network.head[-1].bias.add_(0.3)  # in place, as an optimizer step would
        network.stem[1].running_mean.add_(0.2)
    second = estimator.predict(patches)[0]
    with torch.inference_mode():
        expected = network.outputs(network.pooled_features(patches))[:, :-1]
    expected = estimator.family.denormalize(expected.double().clamp(0, 1)).float()
    assert not torch.allclose(first, second)
    assert torch.allclose(second, expected, atol=1e-5)


def test_deviation_at_most_equals_the_standard_deviation_test():
    generator = torch.Generator().manual_seed(1)
    patches = torch.rand(12, 64, generator=generator) + 100.0
    patches[0] = 3.0  # constant
    patches[1] = 3.0
    patches[1, 5] = 3.0 + 1e-3  # one outlier: large range, small deviation
    patches[2] = 7.0 + 1e-6 * torch.rand(64, generator=generator)  # nearly flat
    patches[3] = 0.0
    for threshold in (1e-9, 1e-5, 1e-4, 2e-4, 0.1, 0.3, torch.linspace(0, 0.4, 12)):
        for unbiased in (True, False):
            for dtype in (torch.float32, torch.float64):
                expected = patches.to(dtype).std(1, unbiased=unbiased).double() <= (
                    torch.as_tensor(threshold, dtype=torch.float64))
                got = deviation_at_most(patches, threshold, unbiased=unbiased, dtype=dtype)
                assert torch.equal(got, expected), (threshold, unbiased, dtype)


class _ThroughPredict:
    """A duck-typed estimator: only ``family``, ``patch_size`` and ``predict``."""

    def __init__(self, estimator):
        self.family, self.patch_size = estimator.family, estimator.patch_size
        self.has_uncertainty = estimator.has_uncertainty
        self.predict = estimator.predict


def test_psf_map_direct_path_equals_the_predict_path():
    estimator = PSFEstimator.pretrained("gaussian1")
    rng = np.random.default_rng(0)
    image = rng.poisson(50.0, size=(160, 192)).astype(np.float32)
    image[:64, :64] = 7.0  # flat windows: invalid, filled
    direct = estimate_psf_map(image, estimator, median=3)
    general = estimate_psf_map(image, _ThroughPredict(estimator), median=3)
    assert np.array_equal(direct.validity > 0.5, general.validity > 0.5)
    assert np.abs(direct.params - general.params).max() < 1e-5
    assert np.abs(direct.validity - general.validity).max() < 1e-5
    assert np.abs(direct.std - general.std).max() < 1e-5
    assert direct.validity[0, 0] == 0.0
