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
