"""simulate given a dask array (issue 24): lazy blurred and clean images of the same chunks,
the clean one equal to the in-memory simulation to float rounding, reproducible noise."""

from __future__ import annotations

import numpy as np
import pytest

from psfmap.simulate import cells, simulate

da = pytest.importorskip("dask.array")


def test_simulate_dask_clean_equals_in_memory_and_noise_is_reproducible():
    sharp = cells((160, 144), seed=0).astype(np.float32)
    lazy = simulate(da.from_array(sharp, chunks=(80, 72)), "gaussian1", "radial", (2, 2),
                    photons=300, seed=3)
    memory = simulate(sharp, "gaussian1", "radial", (2, 2), photons=300, seed=3)
    assert isinstance(lazy.clean, da.Array) and lazy.clean.chunks == ((80, 80), (72, 72))
    clean = lazy.clean.compute()
    assert np.abs(clean - memory.clean).max() <= 1e-5 * memory.clean.max()
    noisy = lazy.blurred.compute()
    assert np.array_equal(noisy, lazy.blurred.compute())  # the same seeds per chunk
    # unbiased noise at the whole image's photon scale: residual variance ~ clean / s
    scale = 300 / memory.clean.max()
    ratio = np.var(noisy - clean) / np.mean(clean / scale)
    assert 0.8 < ratio < 1.2
    assert lazy.operator is None and lazy.psf_map.grid == (2, 2)


def test_simulate_dask_refuses_a_stack():
    with pytest.raises(ValueError, match=r"sharp must be a non-empty dask array of shape"):
        simulate(da.zeros((2, 64, 64), chunks=32), "gaussian1", "radial", (2, 2))
