"""The ``proc`` training source: procedural scenes, sharp by construction, seeded by split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psfmap.psf import model
from psfmap.simulate.scenes import scene
from psfmap.training import DataConfig, PatchGenerator
from psfmap.training.data import SOURCES
from psfmap.training.sources import (
    PROC_SEED_SPAN,
    PROC_SEEDS,
    LazyImages,
    procedural_images,
    procedural_scene,
)


def test_procedural_images_replay_their_seeds_and_splits_are_disjoint():
    train = procedural_images("train", 2, 32)
    test = procedural_images("test", 2, 32)
    assert len(train) == len(test) == 2
    for index, image in enumerate(train):
        expected = scene((32, 32), generator=torch.Generator().manual_seed(
            PROC_SEEDS["train"] + index), kind="mixed", supersample=4)
        assert np.array_equal(image, expected.numpy())
        assert image.shape == (32, 32) and image.min() >= 0 and image.max() == 1.0
    assert not any(np.array_equal(a, b) for a in train for b in test)
    # the seed ranges of the two splits never overlap
    assert abs(PROC_SEEDS["test"] - PROC_SEEDS["train"]) >= PROC_SEED_SPAN
    # kept for the life of the process: a second call costs nothing and gives the same arrays
    assert all(a is b for a, b in zip(train, procedural_images("train", 2, 32), strict=True))


def test_procedural_images_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        procedural_images("validation", 1, 32)
    with pytest.raises(ValueError, match="count"):
        procedural_images("train", -1, 32)
    with pytest.raises(ValueError, match="index"):
        procedural_scene("train", -1, 32)


def test_proc_is_a_source_and_its_pool_size_is_checked():
    assert "proc" in SOURCES and SOURCES[:4] == ("syn", "poi", "nat", "micr")
    config = DataConfig.from_dict({"mix": {"proc": 0.5, "micr": 0.5}, "proc_images": 8})
    config.validate()
    assert config.to_dict()["proc_images"] == 8
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="proc_images"):
            DataConfig(proc_images=bad).validate()


@pytest.mark.slow
def test_proc_samples_carry_the_blur_they_are_labelled_with():
    family = model("gaussian1", size=15)
    config = {"patch_size": 32, "mix": {"proc": 1.0}, "proc_images": 1, "invalid_fraction": 0.0,
              "photons": (1e9, 1e9), "read_noise": (0.0, 0.0), "background": (0.0, 0.0)}
    data = PatchGenerator(family, config, seed=0, split="test")
    batch = data.batch(48)
    assert set(batch.source) == {"proc"}
    assert batch.valid.float().mean() > 0.5  # textured scenes: mostly identifiable
    # without noise, the share of (normalised) energy above 0.2 cycles/px falls with the
    # labelled width as exp(-4π²σ²ν²): the scenes carry no blur of their own
    frequency = torch.fft.fftfreq(32)
    radius = torch.sqrt(frequency[:, None] ** 2 + frequency[None, :] ** 2)
    hann = torch.hann_window(32, periodic=False)
    spectrum = torch.fft.fft2(batch.patches * hann[:, None] * hann[None, :]).abs().pow(2)
    high = (spectrum * (radius > 0.2)).sum((-2, -1)) / spectrum.sum((-2, -1))
    width = batch.params[:, 0]
    order = width.argsort()
    sharpest, widest = high[order[:16]], high[order[-16:]]
    assert sharpest.median() > 100 * widest.median()


def test_generator_renders_only_the_scenes_it_draws_and_draws_as_from_a_list():
    family = model("gaussian1", size=9)
    config = {"patch_size": 16, "mix": {"proc": 1.0}, "proc_images": 1000,
              "invalid_fraction": 0.0}
    lazy = PatchGenerator(family, config, seed=3, split="test")
    pool = lazy.pools["proc"]
    assert len(pool) == 1000 and pool.made == 0  # building the generator rendered nothing
    batch = lazy.batch(2)
    assert 1 <= pool.made <= 2
    # the same draws as from a plain list of the scenes (holding only those drawn: any other
    # draw would fail on a None)
    replay = PatchGenerator(family, config, seed=3, split="test")
    replay.pools["proc"] = _ListWithHoles(replay.pools["proc"], set(pool._made))
    again = replay.batch(2)
    assert torch.equal(batch.patches, again.patches)
    assert torch.equal(batch.params, again.params)


class _ListWithHoles(list):
    """A plain list of the pool's length, holding the drawn scenes (fails on any other)."""

    def __init__(self, pool, indices):
        super().__init__([pool[i] if i in indices else None for i in range(len(pool))])


def test_lazy_images_indexing():
    made = []
    pool = LazyImages(3, lambda i: made.append(i) or i * 10)
    assert len(pool) == 3 and made == []
    assert pool[1] == 10 and pool[-1] == 20 and pool[1] == 10
    assert made == [1, 2] and pool.made == 2
    assert pool[0:2] == [0, 10]
    with pytest.raises(IndexError):
        pool[3]
