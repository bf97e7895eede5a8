"""CalibrationOptions: one list of calibration settings, checked once, stored with the family."""

from __future__ import annotations

import json

import numpy as np
import pytest

from psfmap.calibrate import CalibrationOptions, calibrate, collect_patches, fit_family
from psfmap.calibrate.synthetic import synthetic_calibration_set


def test_keywords_override_fields_and_round_trip_through_json():
    options = CalibrationOptions(psf_size=21).replace(n_eigen=3, k=5.0)
    assert (options.psf_size, options.n_eigen, options.k) == (21, 3, 5.0)
    assert CalibrationOptions.build(options, grid_step=8).grid_step == 8
    text = json.dumps(options.to_dict())
    assert CalibrationOptions.from_dict(json.loads(text)) == options


@pytest.mark.parametrize(("settings", "error", "match"), [
    ({"n_eigen": 0}, ValueError, "n_eigen"),
    ({"n_eigen": 2.5}, TypeError, "n_eigen"),
    ({"grid_step": -1}, ValueError, "grid_step"),
    ({"eigen_energy": 1.5}, ValueError, "eigen_energy must be a fraction"),
    ({"min_coverage": 2.0}, ValueError, "min_coverage must be a fraction"),
    ({"psf_sigma": float("nan")}, ValueError, "psf_sigma"),
    ({"saturation": -3.0}, ValueError, "saturation"),
    ({"background_degree": -1}, ValueError, "background_degree"),
    ({"n_eigne": 3}, TypeError, "unknown calibration setting.*n_eigne"),
])
def test_bad_settings_are_refused_before_any_work(settings, error, match):
    with pytest.raises(error, match=match):
        CalibrationOptions.build(None, **settings)
    # the verbs refuse them too, before touching the (here empty) images
    with pytest.raises(error, match=match):
        calibrate([np.zeros((8, 8))], **settings)


def test_options_must_be_an_options_object():
    with pytest.raises(TypeError, match="options must be a CalibrationOptions"):
        calibrate([np.zeros((64, 64))], {"n_eigen": 3})


def test_the_options_used_are_stored_and_replay_the_calibration():
    _, _, beads, _ = synthetic_calibration_set(2, (160, 160), 30, seed=1)
    family = calibrate(beads, psf_size=21, n_eigen=3)
    stored = CalibrationOptions.from_dict(family.metadata["calibration"]["options"])
    assert stored.n_eigen == 3 and stored.psf_size == 21 and stored.psf_sigma > 0
    # the two halves with the same object give the same family
    sets = collect_patches(beads, stored)
    again = fit_family(sets, beads[0].shape, stored)
    np.testing.assert_allclose(again.gammas, family.gammas, rtol=1e-6, atol=1e-9)
