"""Blind maps that should not be trusted are flagged, with the reason, by estimate and deblur."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import psfmap
from psfmap.blind import deblur, estimate
from psfmap.blind.reliability import reliability_warnings
from psfmap.operators import PSFMap
from psfmap.simulate import bundled_sample


def test_a_map_piled_up_at_the_top_of_its_range_is_flagged():
    piled = PSFMap("gaussian1", np.full((3, 3, 1), 3.9), (64, 64))
    (reason,) = reliability_warnings(piled)
    assert "100% of the 9 cells estimate width at the upper end" in reason
    assert "[0.5, 4]" in reason


def test_in_focus_and_in_range_maps_are_not_flagged():
    widths = np.linspace(0.5, 3.0, 9).reshape(3, 3, 1)   # the lower end is legitimate
    assert reliability_warnings(PSFMap("gaussian1", widths, (64, 64))) == []
    # the astigmatism axis is periodic: its ends are the same orientation, never flagged
    axis_at_pi = np.tile([0.1, 0.1, np.pi], (2, 2, 1))
    assert reliability_warnings(PSFMap("zernike3", axis_at_pi, (64, 64))) == []


def test_textureless_and_uncertain_maps_are_flagged():
    widths = np.full((2, 2, 1), 1.5)
    empty = PSFMap("gaussian1", widths, (64, 64), validity=np.array([[0.1, 0.2], [0.3, 0.9]]))
    assert "75% of the 4 cells had too little texture" in reliability_warnings(empty)[0]
    unsure = PSFMap("gaussian1", widths, (64, 64), std=np.full((2, 2, 1), 1.5))
    assert "predicted error above 30%" in reliability_warnings(unsure)[0]


@pytest.fixture(scope="module")
def too_blurred():
    """The bundled neuron under a Gaussian blur of σ = 6 px, beyond gaussian1's 4 px."""
    sharp = bundled_sample("neuron")
    blurred = gaussian_filter(sharp, 6.0) * 1000
    return np.random.default_rng(0).poisson(blurred).astype(np.float32)


def test_the_shipped_network_flags_a_blur_wider_than_its_range(too_blurred):
    with pytest.warns(UserWarning, match="upper end of the gaussian1 range") as record:
        psf_map = estimate(too_blurred, model="gaussian1")
    assert len(record) == 1
    assert psf_map.metadata["warnings"] and "width" in psf_map.metadata["warnings"][0]


def test_deblur_says_when_it_restores_with_a_flagged_map(too_blurred):
    psf_map = PSFMap("gaussian1", np.full((4, 4, 1), 4.0), too_blurred.shape)
    with pytest.warns(UserWarning, match="restoring with a PSF map flagged as unreliable"):
        deblur(too_blurred, psf_map=psf_map, iterations=2)
    fine = PSFMap("gaussian1", np.full((4, 4, 1), 2.0), too_blurred.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        deblur(too_blurred, psf_map=fine, iterations=2)


def test_the_cli_prints_the_warning_on_one_line(too_blurred, tmp_path, capsys):
    image = tmp_path / "blurred.tif"
    psfmap.io.write_image(image, too_blurred)
    status = psfmap.cli.main(["estimate", str(image), "--model", "gaussian1",
                              "--save-map", str(tmp_path / "map.psfmap")])
    assert status == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(lines) == 1 and lines[0].startswith("psfmap estimate: warning: ")
    assert "upper end of the gaussian1 range" in lines[0]
