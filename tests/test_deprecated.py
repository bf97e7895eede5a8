"""Old import paths keep working for one release, each with a DeprecationWarning that names
the new home."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

import psfmap
from psfmap.blind import PSFEstimator, depth_map
from psfmap.blind.psf_maps import estimate_psf_map
from psfmap.calibrate import identify_from_spikes
from psfmap.training import train

MOVED_MODULES = [
    ("psfmap.identify.cnn", "psfmap.blind.estimator"),
    ("psfmap.identify.network", "psfmap.blind.network"),
    ("psfmap.identify.psf_map_estimation", "psfmap.blind.psf_maps"),
    ("psfmap.identify.training", "psfmap.training.loop"),
    ("psfmap.identify.training_data", "psfmap.training.data"),
    ("psfmap.identify.spikes", "psfmap.calibrate.spikes"),
    ("psfmap.identify.blind", "psfmap.blind.verbs"),
    ("psfmap.depth", "psfmap.blind"),
]


@pytest.mark.parametrize(("old", "new"), MOVED_MODULES)
def test_old_module_path_forwards_with_a_warning(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


@pytest.mark.parametrize(("name", "value"), [
    ("PSFEstimator", PSFEstimator),
    ("estimate_psf_map", estimate_psf_map),
    ("identify_from_spikes", identify_from_spikes),
])
def test_old_package_names_forward_with_a_warning(name, value):
    import psfmap.identify

    with pytest.warns(DeprecationWarning, match=f"psfmap.identify.{name} is deprecated"):
        assert getattr(psfmap.identify, name) is value


def test_old_paths_name_the_same_objects():
    for old in ("psfmap.depth", "psfmap.identify.training"):
        sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning):
        from psfmap.depth import depth_map as old_depth_map
    with pytest.warns(DeprecationWarning):
        from psfmap.identify.training import train as old_train
    assert old_depth_map is depth_map and old_train is train


def test_unknown_name_of_an_old_package_is_an_attribute_error():
    import psfmap.identify

    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        psfmap.identify.nothing  # noqa: B018


def test_top_level_verbs_come_from_their_new_homes():
    assert psfmap.PSFEstimator is PSFEstimator
    assert psfmap.identify_from_spikes is identify_from_spikes
    assert psfmap.deblur is importlib.import_module("psfmap.blind").deblur


def test_estimate_psf_map_takes_the_image_first_and_still_reads_the_old_order():
    from psfmap.io import read_image

    estimator = PSFEstimator.pretrained("gaussian1")
    neuron, _ = read_image(Path(psfmap.__file__).parent / "data" / "confocal_neuron_mip.tif")
    image = np.asarray(neuron, dtype=np.float32)[:128, :128]
    new = estimate_psf_map(image, estimator, grid=(2, 2))
    with pytest.warns(DeprecationWarning, match=r"estimate_psf_map\(image, estimator\)"):
        old = estimate_psf_map(estimator, image, grid=(2, 2))
    np.testing.assert_array_equal(new.params, old.params)


def test_family_operator_compress_is_now_factored():
    import torch

    from psfmap.calibrate import OperatorFamily

    rng = np.random.default_rng(0)
    kernels = rng.random((2, 5, 5))
    kernels /= kernels.sum(axis=(1, 2), keepdims=True)
    family = OperatorFamily(kernels, rng.random((3, 4, 4)), rng.random((2, 2, 3)), (32, 32))
    plain = family.operator(family.gammas[0], factored=False, dtype=torch.float64)
    with pytest.warns(DeprecationWarning, match="use factored="):
        old = family.operator(family.gammas[0], compress=False, dtype=torch.float64)
    x = torch.rand(32, 32, dtype=torch.float64)
    torch.testing.assert_close(plain.forward(x), old.forward(x))
    torch.testing.assert_close(family.operator(family.gammas[0], dtype=torch.float64).forward(x),
                               plain.forward(x))
