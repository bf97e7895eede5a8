"""3D PSFs through focus against the analytic results of a uniform pupil."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from psfmap.metrics import fwhm
from psfmap.psf.through_focus import axial_positions, confocal, depth_series, through_focus


def _fwhm(profile: torch.Tensor, step: float) -> float:
    return fwhm(profile, step)


def test_paraxial_on_axis_intensity_is_sinc_squared():
    # NA 0.2 in air: I(0, 0, z) / I(0) = sinc²(z NA² / (2 λ)) (Born & Wolf §8.8), zeros at
    # z = ±2 λ / NA²; the window (41 px of 0.25 µm) holds the defocused spot up to 1.5 zeros
    na, wavelength = 0.2, 0.5
    zero = 2 * wavelength / na**2
    z = np.linspace(-1.5 * zero, 1.5 * zero, 31)
    psf = through_focus(41, z, na=na, wavelength=wavelength, pixel_size=0.25,
                        immersion_index=1.0, dtype=torch.float64)
    on_axis = (psf[:, 20, 20] / psf[15, 20, 20]).numpy()
    expected = np.sinc(z * na**2 / (2 * wavelength)) ** 2
    assert np.abs(on_axis - expected).max() < 0.01
    assert on_axis[5] < 0.01 and on_axis[25] < 0.01  # the first zeros


@pytest.mark.parametrize(("na", "index"), [(1.4, 1.515), (1.2, 1.33)])
def test_lateral_and_axial_fwhm_within_5_percent_of_the_formulas(na, index):
    wavelength = 0.52
    pixel = wavelength / na / 16
    axial = wavelength / (index - math.sqrt(index**2 - na**2))
    step = axial / 16
    psf = through_focus(41, 61, na=na, wavelength=wavelength, pixel_size=pixel, z_step=step,
                        immersion_index=index, dtype=torch.float64)
    lateral = _fwhm(psf[30, 20], pixel)
    assert lateral == pytest.approx(0.51 * wavelength / na, rel=0.05)
    assert _fwhm(psf[:, 20, 20], step) == pytest.approx(0.88 * axial, rel=0.05)
    assert float(psf.sum()) == pytest.approx(1.0)
    # aberration-free and index-matched: symmetric about the focus
    torch.testing.assert_close(psf, psf.flip(0), rtol=0, atol=1e-9)


def test_index_mismatch_shifts_and_skews_the_axial_profile():
    common = dict(na=1.3, wavelength=0.52, pixel_size=0.1, immersion_index=1.515,
                  sample_index=1.33, dtype=torch.float64)
    z = np.linspace(-6, 6, 121)
    shallow = through_focus(21, z, depth=0.0, **common)[:, 10, 10]
    deep = through_focus(21, z, depth=15.0, **common)[:, 10, 10]
    # at the coverslip the index of the sample does not matter: symmetric
    assert float((shallow - shallow.flip(0)).abs().max()) < 1e-6 * float(shallow.max())
    # 15 µm deep in water through oil: the focus moves towards the objective (z < 0), the
    # peak drops (spherical aberration) and the profile is no longer symmetric about it
    peak = int(deep.argmax())
    assert z[peak] < -0.5
    assert float(deep.max()) < 0.8 * float(shallow.max())
    left, right = deep[peak - 20], deep[peak + 20]
    assert abs(float(left - right)) > 0.1 * float(deep.max())


def test_confocal_is_narrower_than_widefield():
    common = dict(na=1.4, wavelength=0.52, pixel_size=0.05, z_step=0.1,
                  dtype=torch.float64)
    wide = through_focus(31, 41, **common)
    conf = confocal(31, 41, excitation_wavelength=0.488, pinhole=0.5, **common)
    assert _fwhm(conf[20, 15], 0.05) < 0.85 * _fwhm(wide[20, 15], 0.05)
    # widefield light does not fall off through focus; confocal (optical sectioning) does
    plane_energy = conf.sum(dim=(1, 2))
    assert float(plane_energy[0]) < 0.3 * float(plane_energy[20])
    wide_energy = wide.sum(dim=(1, 2))
    assert float(wide_energy[0]) > 0.3 * float(wide_energy[20])


def test_depth_series_is_a_depth_only_grid_and_zernike_terms_apply():
    grid = depth_series(11, 9, [0.0, 10.0], {11: 0.1}, na=1.2, wavelength=0.5,
                        pixel_size=0.1, z_step=0.2, immersion_index=1.33)
    assert tuple(grid.shape) == (2, 1, 1, 9, 11, 11)
    plain = through_focus(11, 9, na=1.2, wavelength=0.5, pixel_size=0.1, z_step=0.2,
                          immersion_index=1.33)
    assert float((grid[0, 0, 0] - plain).abs().max()) > 1e-4  # spherical aberration changed it
    torch.testing.assert_close(grid[0, 0, 0], grid[1, 0, 0])  # matched indices: no depth term
    torch.testing.assert_close(axial_positions(3, 0.5), torch.tensor([-0.5, 0.0, 0.5],
                                                                     dtype=torch.float64))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: through_focus(11, 5, na=1.2, wavelength=0.5, pixel_size=0.1), "z_step"),
        (lambda: through_focus(11, 0, na=1.2, wavelength=0.5, pixel_size=0.1, z_step=0.1),
         "planes"),
        (lambda: through_focus(11, 3, na=1.6, wavelength=0.5, pixel_size=0.1, z_step=0.1),
         "immersion_index"),
        (lambda: through_focus(11, 3, na=1.2, wavelength=0.5, pixel_size=0.1, z_step=0.1,
                               depth=-1), "depth"),
        (lambda: through_focus(11, 3, np.zeros((2, 4)), na=1.2, wavelength=0.5,
                               pixel_size=0.1, z_step=0.1), "one set"),
        (lambda: depth_series(11, 3, [0.0], mode="sted", na=1.2, wavelength=0.5,
                              pixel_size=0.1, z_step=0.1), "mode"),
    ],
)
def test_bad_input_raises_one_clear_sentence(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
