"""Shipped CNN models: each loads, regresses its own family, and flags empty patches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from psfmap.blind.estimator import PRETRAINED, PSFEstimator
from psfmap.training import PatchGenerator, r2_score, wrapped_error

SHIPPED = ("gaussian1", "gaussian2", "zernike1", "zernike3")
# lowest R² (mean over parameters, truly valid patches of the held-out split) accepted here.
# Measured on this exact draw (seed 11, bundled data only): gaussian1 0.70, gaussian2 0.73,
# zernike1 0.76, zernike3 0.57 (0.70-0.84, 0.68-0.80, 0.76-0.83, 0.57-0.64 over seeds 11-13;
# gaussian1 0.73 and 0.80 at seeds 14-15: a few gross errors on 280 patches move it by 0.1);
# the margin absorbs platform differences. Model cards give the full held-out figures.
MIN_R2 = {"gaussian1": 0.62, "gaussian2": 0.62, "zernike1": 0.70, "zernike3": 0.45}


@pytest.fixture(scope="module", params=SHIPPED)
def estimator(request):
    return PSFEstimator.pretrained(request.param)


def held_out_data(estimator, seed: int, **overrides) -> PatchGenerator:
    """Valid patches of the model's own material, held-out split, bundled data only. A model
    trained with procedural scenes in its mix ([proc]) would render up to its config's 64 of
    them (~1.5 s each, as their crops are drawn): 4 are enough material here."""
    config = {**estimator.config["data"], "proc_images": 4, "shared_data": False,
              "invalid_fraction": 0.0, **overrides}
    return PatchGenerator(estimator.family, config, seed=seed, split="test")


def test_shipped_files_are_small_and_documented():
    for name in SHIPPED:
        weights = PRETRAINED / f"{name}.pt"
        assert weights.stat().st_size <= 5 * 1024 * 1024
        card = json.loads((PRETRAINED / f"{name}.json").read_text())
        assert card["config"]["model"] == name
        text = (PRETRAINED / f"{name}.md").read_text()
        assert f"psfmap train --model {name}" in text


def test_pretrained_family_and_patch_size(estimator):
    family = estimator.family
    assert family.name in SHIPPED
    assert len(family.names) == family.n_params == len(family.low) == len(family.high)
    assert estimator.patch_size == estimator.config["data"]["patch_size"]


@pytest.mark.slow
def test_pretrained_regresses_its_family(estimator):
    family = estimator.family
    periodic = [angle for _, angle in estimator.network.periodic]
    data = held_out_data(estimator, seed=11)
    batch = data.batch(320)
    params, validity = estimator.predict(batch.patches)
    valid = batch.valid.numpy() > 0.5
    assert valid.sum() > 60
    unit_true = family.normalize(batch.params.double()).numpy()
    unit_pred = family.normalize(params.double()).numpy()
    r2 = r2_score(unit_true[valid], unit_pred[valid], periodic)
    assert float(np.mean(r2)) > MIN_R2[family.name], r2
    # the validity output separates the truly valid from the invalid patches
    agreement = float(((validity.numpy() > 0.5) == valid).mean())
    assert agreement > 0.8


def test_pretrained_flags_black_and_flat_patches(estimator):
    p = estimator.patch_size
    generator = torch.Generator().manual_seed(0)
    black = torch.poisson(torch.full((8, p, p), 2.0), generator=generator)
    flat = 1000 + 3 * torch.randn(8, p, p, generator=generator)
    constant = torch.full((2, p, p), 7.0)
    _, validity = estimator.predict(torch.cat([black, flat, constant]))
    assert float(validity.max()) < 0.5, validity


def test_predict_accepts_numpy_and_single_patches(estimator):
    p = estimator.patch_size
    patch = np.random.default_rng(0).uniform(size=(p, p)).astype(np.float32)
    params, validity = estimator.predict(patch)
    assert params.shape == (estimator.family.n_params,)
    assert np.ndim(validity) == 0 and params.dtype == np.float32
    low, high = estimator.family.low, estimator.family.high
    assert np.all((params >= low - 1e-6) & (params <= high + 1e-6))


def test_predict_returns_the_input_kind_dtype_and_device(estimator):
    p = estimator.patch_size
    patches = torch.from_numpy(np.random.default_rng(1).uniform(size=(2, p, p)))  # float64
    params, validity, std = estimator.predict(patches, return_std=True)
    assert all(isinstance(r, torch.Tensor) and r.dtype == torch.float64
               for r in (params, validity, std))
    single, _ = estimator.predict(patches.float())
    torch.testing.assert_close(single, params.float())  # the network computes in float32
    assert estimator.device == torch.device("cpu") and estimator.to("cpu") is estimator
    on_cpu = PSFEstimator.pretrained(estimator.name, device="cpu")
    assert on_cpu.device == torch.device("cpu")


def test_predict_does_not_depend_on_the_intensity_scale(estimator):
    p = estimator.patch_size
    texture = np.random.default_rng(2).gamma(2.0, size=(2, p, p))
    reference, validity = estimator.predict(texture)
    for scale in (1e-9, 1e20):  # below and above what float32 squares without trouble
        params, scaled_validity = estimator.predict(texture * scale)
        np.testing.assert_allclose(params, reference, rtol=1e-5)
        np.testing.assert_allclose(scaled_validity, validity, atol=1e-5)


@pytest.mark.slow
def test_pretrained_predicts_the_size_of_its_own_errors(estimator):
    family = estimator.family
    assert estimator.has_uncertainty
    data = held_out_data(estimator, seed=13)
    batch = data.batch(400)
    params, validity, std = estimator.predict(batch.patches, return_std=True)
    assert std.shape == params.shape and bool((std > 0).all())
    span = torch.as_tensor(family.high - family.low, dtype=torch.float64)
    error = wrapped_error(family.normalize(params.double()),  # the axis wraps with period π
                          family.normalize(batch.params.double()),
                          [angle for _, angle in estimator.network.periodic])
    sigma = (std.double() / span).mean(1)
    valid = batch.valid > 0.5
    sure = valid & (sigma <= sigma[valid].median())
    unsure = valid & (sigma > sigma[valid].median())
    # the half it is less sure of errs more, and the predicted size is the right order
    rms_sure, rms_unsure = (error[sure].pow(2).mean().sqrt(), error[unsure].pow(2).mean().sqrt())
    assert rms_unsure > rms_sure
    ratio = float(error[valid].pow(2).mean().sqrt() / (std.double() / span)[valid].pow(2)
                  .mean().sqrt())
    assert 0.4 < ratio < 2.5, ratio


def test_predict_pools_larger_windows_like_the_psf_map(estimator):
    p = estimator.patch_size
    data = held_out_data(estimator, seed=5, patch_size=2 * p + 16)
    windows = data.batch(3).patches.double()
    params, validity = estimator.predict(windows)
    assert params.shape == (3, estimator.family.n_params) and validity.shape == (3,)
    # one window over the whole image: the map's single cell is the same estimate
    _, _, std = estimator.predict(windows, return_std=True)
    for window, expected, score, spread in zip(windows, params, validity, std):
        psf_map = estimator.psf_map(window.numpy(), window=2 * p + 16, grid=(1, 1))
        np.testing.assert_allclose(np.asarray(psf_map.params)[0, 0], expected.numpy(),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(psf_map.validity[0, 0], float(score), atol=1e-6)
        np.testing.assert_allclose(psf_map.std[0, 0], spread.numpy(), rtol=1e-5)
    # a window made of copies of one patch gives that patch's estimate, and (four
    # independent readings) half its standard deviation
    tiled = windows[:, :p, :p].repeat(1, 2, 2)
    single, single_validity, single_std = estimator.predict(windows[:, :p, :p],
                                                            return_std=True)
    pooled, pooled_validity, pooled_std = estimator.predict(tiled, return_std=True)
    np.testing.assert_allclose(pooled.numpy(), single.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled_validity.numpy(), single_validity.numpy(), atol=1e-6)
    np.testing.assert_allclose(pooled_std.numpy(), single_std.numpy() / 2, rtol=1e-4)
    for shape in ((2, p - 1, p - 1), (2, p, p + 1), (2, 2, p, p)):
        with pytest.raises(ValueError, match="patches must have shape"):
            estimator.predict(torch.ones(shape))
