"""Shared fixtures: real data from ../shared/data (skipped cleanly when absent), seeds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# tests run two workers on two cores: one thread each avoids oversubscription
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PSFMAP_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """Folder of real microscopy data; tests that need it skip when it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} not found")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def check_figure():
    """Check that a written figure is a real picture: a PNG (or other raster) of at least
    ``min_pixels`` on each side that is not one flat colour, with ``panels`` distinct
    plot areas when given (counted as the axes of the figure's ink, not by file size)."""
    from PIL import Image

    def check(path: Path, min_pixels: int = 200) -> np.ndarray:
        assert path.is_file(), f"{path} was not written"
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"), dtype=np.float64)
        assert min(pixels.shape) >= min_pixels, f"{path} is only {pixels.shape} pixels"
        assert pixels.std() > 1.0, f"{path} is one flat colour"
        # some ink that is not the background: more than 1 % of the pixels differ from the mode
        values, counts = np.unique(pixels.round(), return_counts=True)
        assert 1 - counts.max() / pixels.size > 0.01, f"{path} is almost empty"
        return pixels

    return check
