"""On-the-fly CNN training data: reproducibility, shapes, ranges, validity flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psfmap.psf import model
from psfmap.training import (
    DataConfig,
    PatchGenerator,
    microscopy_images,
    normalize_patches,
    synthetic_cells,
    synthetic_points,
    valid_convolve,
)

SMALL = {"patch_size": 32, "mix": {"syn": 1, "poi": 1, "nat": 1, "micr": 1},
         "synthetic_images": 2}


@pytest.fixture(scope="module")
def gaussian1():
    return model("gaussian1", size=15)


def test_same_seed_same_batches(gaussian1):
    first = PatchGenerator(gaussian1, SMALL, seed=3).batch(12)
    second = PatchGenerator(gaussian1, SMALL, seed=3).batch(12)
    other = PatchGenerator(gaussian1, SMALL, seed=4).batch(12)
    assert torch.equal(first.patches, second.patches)
    assert torch.equal(first.params, second.params)
    assert torch.equal(first.valid, second.valid)
    assert first.source == second.source
    assert not torch.equal(first.patches, other.patches)


def test_shapes_ranges_and_normalisation():
    family = model("zernike3", size=15)
    batch = PatchGenerator(family, SMALL, seed=0).batch(40)
    assert batch.patches.shape == (40, 32, 32)
    assert batch.params.shape == (40, 3)
    assert batch.valid.shape == (40,)
    assert batch.patches.dtype == torch.float32
    low = torch.tensor(family.low, dtype=torch.float32)
    high = torch.tensor(family.high, dtype=torch.float32)
    assert bool(((batch.params >= low - 1e-6) & (batch.params <= high + 1e-6)).all())
    assert set(batch.valid.unique().tolist()) <= {0.0, 1.0}
    means = batch.patches.mean((-2, -1))
    stds = batch.patches.std((-2, -1), unbiased=False)
    assert torch.allclose(means, torch.zeros(40), atol=1e-4)
    assert bool(((stds - 1).abs() < 1e-3).all())


def test_batches_keep_their_counts_and_noise_draw(gaussian1):
    """What a fit that knows the noise model needs: the counts before normalisation and the
    draw of each sample, consistent with the patches and within the configured ranges."""
    data = PatchGenerator(gaussian1, {**SMALL, "photons": (100, 1000), "offset": (5, 10)},
                          seed=1)
    batch = data.batch(16)
    assert batch.counts.shape == batch.patches.shape
    assert torch.allclose(normalize_patches(batch.counts), batch.patches)
    assert set(batch.noise) == {"photons", "qe", "read_noise", "background", "offset"}
    photons, offset = batch.noise["photons"].flatten(), batch.noise["offset"].flatten()
    assert bool(((photons >= 100) & (photons <= 1000)).all())
    assert bool(((offset >= 5) & (offset <= 10)).all())


def test_explicit_black_and_flat_samples_are_invalid(gaussian1):
    config = {**SMALL, "invalid_fraction": 0.5,
              "invalid_kinds": ["black", "flat", "ramp", "shade"]}
    batch = PatchGenerator(gaussian1, config, seed=1).batch(60)
    explicit = np.isin(batch.source, ["black", "flat", "ramp", "shade"])
    assert explicit.sum() > 10
    assert set(np.asarray(batch.source)[explicit]) == {"black", "flat", "ramp", "shade"}
    assert bool((batch.valid[torch.from_numpy(explicit)] == 0).all())
    # textured sources under bright light are mostly valid
    bright = PatchGenerator(gaussian1, {**SMALL, "invalid_fraction": 0.0,
                                        "mix": {"syn": 1, "nat": 1}}, seed=2)
    textured = bright.batch(40, photons=(3000.0, 3000.0), background=(0.0, 0.0))
    assert float(textured.valid.mean()) > 0.6


def test_validity_drops_in_the_dark(gaussian1):
    data = PatchGenerator(gaussian1, {**SMALL, "invalid_fraction": 0.0}, seed=5)
    dark = data.batch(40, photons=(0.5, 0.5))
    bright = data.batch(40, photons=(5000.0, 5000.0))
    assert float(dark.valid.mean()) < float(bright.valid.mean())


def test_valid_convolution_matches_direct_sum():
    generator = torch.Generator().manual_seed(0)
    crops = torch.rand(2, 12, 12, generator=generator)
    kernels = torch.rand(2, 5, 5, generator=generator)
    out = valid_convolve(crops, kernels)
    assert out.shape == (2, 8, 8)
    flipped = torch.flip(kernels, dims=(-2, -1))
    for i in range(2):
        direct = torch.nn.functional.conv2d(crops[i][None, None], flipped[i][None, None])
        assert torch.allclose(out[i], direct[0, 0], atol=1e-5)


def test_normalisation_keeps_flat_patches_at_zero():
    patches = torch.stack([torch.full((8, 8), 5.0), torch.arange(64.0).reshape(8, 8)])
    out = normalize_patches(patches)
    assert torch.equal(out[0], torch.zeros(8, 8))
    assert abs(float(out[1].std(unbiased=False)) - 1) < 1e-5


def test_synthetic_sources_are_seeded_and_in_unit_range():
    cells = synthetic_cells((64, 64), torch.Generator().manual_seed(0))
    again = synthetic_cells((64, 64), torch.Generator().manual_seed(0))
    points = synthetic_points((64, 64), torch.Generator().manual_seed(0))
    assert np.array_equal(cells, again)
    for image in (cells, points):
        assert image.shape == (64, 64)
        assert image.min() >= 0 and image.max() <= 1 and image.max() > 0


def test_bad_arguments(gaussian1):
    with pytest.raises(ValueError, match="split"):
        PatchGenerator(gaussian1, SMALL, split="validation")
    with pytest.raises(ValueError, match="mix"):
        PatchGenerator(gaussian1, {"mix": {"moon": 1.0}})
    with pytest.raises(TypeError, match="family"):
        PatchGenerator("gaussian1")
    with pytest.raises(ValueError, match="n must"):
        PatchGenerator(gaussian1, SMALL).batch(0)
    with pytest.raises(ValueError, match="unknown data config"):
        DataConfig.from_dict({"patchsize": 32})
    with pytest.raises(ValueError, match="invalid_kinds"):
        PatchGenerator(gaussian1, {**SMALL, "invalid_kinds": ["stripes"]})


def test_shading_samples_are_smooth_and_invalid(gaussian1):
    config = {**SMALL, "invalid_fraction": 0.99, "invalid_kinds": ["shade"]}
    data = PatchGenerator(gaussian1, config, seed=6)
    crops, names, explicit = data.sharp_crops(20)
    assert set(names) == {"shade"} and bool(explicit.all())
    # smoother than the widest blur of the family: little energy between neighbours
    step = (crops[:, 1:] - crops[:, :-1]).abs().mean()
    spread = (crops - crops.mean((-2, -1), keepdim=True)).abs().mean()
    assert float(step) < 0.2 * float(spread)
    assert float(data.batch(20).valid.max()) == 0.0
    # the kinds travel with the config (checkpoints replay them)
    older = DataConfig.from_dict({"invalid_kinds": ["black", "flat", "ramp"]})
    assert older.invalid_kinds == ("black", "flat", "ramp")
    assert DataConfig.from_dict(older.to_dict()) == older
    assert DataConfig().invalid_kinds == older.invalid_kinds  # the shipped models' recipe


def test_excluded_microscopy_files_are_left_out(shared_data):
    sharp = sorted((shared_data / "sharp").glob("*.tif"))
    if len(sharp) < 2:
        pytest.skip("needs two sharp files in the shared data")
    everything = microscopy_images("train", shared_data=True, exclude=())
    fewer = microscopy_images("train", shared_data=True, exclude=(sharp[0].name,))
    assert 0 < len(fewer) < len(everything)
    # the exclusion list travels with the config (checkpoints replay it)
    config = DataConfig.from_dict(DataConfig(micr_exclude=(sharp[0].name,)).to_dict())
    assert config.micr_exclude == (sharp[0].name,)
    assert DataConfig().micr_exclude == ("confocal_neuron_zstack.tif",)


def test_parameter_margin_widens_the_training_range_only():
    family = model("zernike3", size=15)
    config = {**SMALL, "mix": {"poi": 1}, "param_margin": 0.1}
    train = PatchGenerator(family, config, seed=0).sample_params(4000)
    test = PatchGenerator(family, config, seed=0, split="test").sample_params(4000)
    span = family.high - family.low
    # focus reaches 10 % of its span beyond both ends; cylinder and axis (periodic pair) do not
    assert train[:, 0].min() < family.low[0] - 0.08 * span[0]
    assert train[:, 0].max() > family.high[0] + 0.08 * span[0]
    for column in (1, 2):
        assert train[:, column].min() >= family.low[column]
        assert train[:, column].max() <= family.high[column]
    assert bool((test >= torch.from_numpy(family.low)).all())
    assert bool((test <= torch.from_numpy(family.high)).all())
    # without a margin the draws are the family's own (shipped checkpoints replay)
    plain = PatchGenerator(family, {**config, "param_margin": 0.0}, seed=0)
    reference = PatchGenerator(family, {**config, "param_margin": 0.0}, seed=0)
    assert torch.equal(plain.sample_params(5),
                       family.sample(5, reference.generator, dtype=torch.float64))
    # Gaussian widths stay positive
    gaussian = model("gaussian1", size=15)
    widths = PatchGenerator(gaussian, {**config, "param_margin": 0.5}, seed=0).sample_params(500)
    assert float(widths.min()) >= 0.25 * gaussian.low[0]
    with pytest.raises(ValueError, match="param_margin"):
        PatchGenerator(gaussian, {**config, "param_margin": 0.9})


def test_blended_samples_mix_two_blurs_pixel_by_pixel(gaussian1):
    config = {**SMALL, "mix": {"poi": 1}, "blend_fraction": 0.5}
    first, second = (PatchGenerator(gaussian1, config, seed=0) for _ in range(2))
    sharp, names, explicit = first.sharp_crops(3)
    assert torch.equal(second.sharp_crops(3)[0], sharp)  # both generators at the same state
    params = torch.tensor([[0.8], [1.5], [2.0]], dtype=torch.float64)
    psfs = gaussian1(params.float()).float()
    chosen = torch.tensor([True, False, True])
    others = torch.tensor([[3.0], [2.5]], dtype=torch.float64)
    other_psfs = gaussian1(others.float()).float()
    # a weight of 1 everywhere is the second blur alone, bit for bit (same noise draws)
    ones = torch.ones(2, 32, 32)
    mixed = first.render(sharp, params, psfs, names, explicit, blend=(chosen, other_psfs, ones))
    swapped = psfs.clone()
    swapped[chosen] = other_psfs
    plain = second.render(sharp, params, swapped, names, explicit)
    assert torch.equal(mixed.patches, plain.patches)
    # labels: the parameters mixed by each ramp's mean weight; unchosen samples unchanged
    data = PatchGenerator(gaussian1, {**config, "blend_fraction": 1.0}, seed=1)
    start = data.sample_params(400)
    labels, (picked, _, weights) = data._blend(start)
    assert bool(picked.all()) and weights.shape == (400, 32, 32)
    assert float(weights.min()) >= 0 and float(weights.max()) <= 1
    mean = weights.mean((-2, -1)).double()[:, None]
    implied = (labels - (1 - mean) * start) / mean.clamp_min(1e-9)
    inside = mean[:, 0] > 0.05  # the second parameters behind the labels lie in the range
    assert float(implied[inside].min()) >= gaussian1.low[0] - 1e-6
    assert float(implied[inside].max()) <= gaussian1.high[0] + 1e-6
    assert float(mean.std()) > 0.2  # ramps reach all mixing proportions
    # the test split never blends; families with an astigmatism axis are refused
    test = PatchGenerator(gaussian1, {**config, "blend_fraction": 1.0}, split="test")
    assert bool((test.batch(50).params <= gaussian1.high[0] + 1e-6).all())
    with pytest.raises(ValueError, match="astigmatism axis"):
        PatchGenerator(model("zernike3", size=15), config)
    with pytest.raises(ValueError, match="blend_fraction"):
        PatchGenerator(gaussian1, {**config, "blend_fraction": 1.5})
