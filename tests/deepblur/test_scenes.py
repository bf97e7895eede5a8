"""Procedural scenes, sharp by construction (psfmap.simulate.scenes)."""

from __future__ import annotations

import pytest
import torch

from psfmap.simulate import SCENE_KINDS, scene, scenes


def test_shape_range_and_replay():
    first = scene((40, 48), generator=torch.Generator().manual_seed(5))
    assert first.shape == (40, 48) and first.dtype == torch.float32
    assert float(first.max()) == pytest.approx(1.0) and float(first.min()) >= 0
    again = scene((40, 48), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(first, again)
    other = scene((40, 48), generator=torch.Generator().manual_seed(6))
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("kind", SCENE_KINDS)
def test_every_kind_renders_structure(kind):
    image = scene(32, generator=torch.Generator().manual_seed(1), kind=kind)
    # structure, not a flat field: a bright part well above the median
    assert float(image.max()) == pytest.approx(1.0)
    assert float(image.median()) < 0.9


def test_binning_is_the_only_blur():
    # a punctum rendered 4x finer and binned spreads over at most a few pixels
    image = scene(32, generator=torch.Generator().manual_seed(2), kind="puncta",
                  supersample=4, dtype=torch.float64)
    peak = torch.nonzero(image == image.max())[0]
    r, c = int(peak[0]), int(peak[1])
    window = image[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2]
    assert float(window.min()) < 0.9 * float(image.max())


def test_stack_and_errors():
    batch = scenes(3, 16, generator=torch.Generator().manual_seed(0))
    assert batch.shape == (3, 16, 16)
    assert not torch.allclose(batch[0], batch[1])
    with pytest.raises(ValueError, match="kind must be one of"):
        scene(16, kind="bacteria")
    with pytest.raises(ValueError, match=r"shape must be at least \(8, 8\)"):
        scene((4, 16))
    with pytest.raises(ValueError, match="supersample must be between 1 and 8"):
        scene(16, supersample=9)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        scene(16, generator=3)
