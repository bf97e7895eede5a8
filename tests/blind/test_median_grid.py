"""The map's median filter equals scipy.ndimage's, without loading scipy.ndimage."""

import numpy as np
import pytest
from scipy import ndimage

from psfmap.blind.psf_maps import median_filter_grid


@pytest.mark.parametrize("shape", [(31, 31, 1), (7, 5, 3), (1, 1, 2), (2, 9, 1)])
@pytest.mark.parametrize("size", [2, 3, 4, 5])
def test_median_filter_grid_equals_scipy(shape, size):
    params = np.random.default_rng(size).random(shape).astype(np.float32)
    expected = ndimage.median_filter(params, size=(size, size, 1), mode="nearest")
    result = median_filter_grid(params, size)
    assert result.dtype == expected.dtype
    np.testing.assert_array_equal(result, expected)


def test_median_filter_grid_size_one_is_identity():
    params = np.arange(12.0).reshape(2, 2, 3)
    assert median_filter_grid(params, 1) is params
