"""Families of operators and the zernike7 PSF family (issue 22, item 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psfmap.calibrate import OperatorFamily
from psfmap.deepblur import field_snr
from psfmap.deepblur.families import family_from_config
from psfmap.operators import Convolution, ProductConvolution
from psfmap.psf import model


def test_zernike7_catalogue():
    family = model("zernike7")
    assert family.names == ("a4", "a5", "a6", "a7", "a8", "a9", "a10")
    np.testing.assert_array_equal(family.low, -0.15)
    np.testing.assert_array_equal(family.high, 0.15)
    assert family.optics == model("zernike3").optics  # same optics defaults
    psfs = family(family.sample(3, torch.Generator().manual_seed(0)))
    assert psfs.shape == (3, 33, 33)
    torch.testing.assert_close(psfs.sum((1, 2)), torch.ones(3), atol=1e-5, rtol=0)


def test_zernike7_is_noll_4_to_10():
    from psfmap.psf import zernike

    coefficients = np.array([0.1, -0.05, 0.02, 0.08, 0.0, -0.1, 0.03])
    expected = zernike(33, np.concatenate([[0, 0, 0], coefficients]), **model("zernike7").optics)
    torch.testing.assert_close(model("zernike7")(coefficients).double(), expected.double(),
                               atol=1e-6, rtol=0)


def test_twin_is_the_same_psf(zernike_family):
    gamma = torch.tensor([0.1, -0.05, 0.12, 0.03, -0.08, 0.06, 0.02], dtype=torch.float64)
    twin = zernike_family.twin(gamma)
    np.testing.assert_array_equal(twin[:3].numpy(), -gamma[:3].numpy())
    snr = zernike_family.field_snr(gamma.numpy(), twin.numpy())
    assert snr > 60  # identical PSFs up to rounding


def test_box_operator_is_the_family_convolution(zernike_family):
    gamma = np.full(7, 0.05)
    operator = zernike_family.operator(gamma)
    assert isinstance(operator, Convolution)
    torch.testing.assert_close(operator.psf, zernike_family.psf_family(gamma).float())


def test_hull_operator_is_the_calibrated_one(hull_family):
    gamma = hull_family.vertices[2]
    operator = hull_family.operator(gamma, (48, 40))
    assert isinstance(operator, ProductConvolution) and operator.image_shape == (48, 40)
    fam = hull_family.operator_family
    reference = OperatorFamily(fam.eigen_psfs.double(), fam.coarse_spatial_basis, fam.gammas,
                               (48, 40)).operator(fam.gammas[2])
    image = torch.rand(48, 40)
    torch.testing.assert_close(operator.forward(image), reference.forward(image))
    assert hull_family.n_params == fam.n_eigen_psfs * fam.n_spatial >= 8
    assert hull_family.psf_field(gamma).shape == (16, *fam.kernel_shape)


def test_check_gamma_projects_or_refuses(zernike_family, hull_family):
    with pytest.warns(UserWarning, match="outside the admissible set"):
        projected = zernike_family.check_gamma(np.full(7, 0.3))
    np.testing.assert_allclose(projected, 0.15)
    with pytest.raises(ValueError, match="outside the admissible set"):
        zernike_family.check_gamma(np.full(7, 0.3), outside="raise")
    with pytest.raises(ValueError, match="length P = 7"):
        zernike_family.check_gamma(np.zeros(6))
    far = hull_family.vertices[0] * 5
    with pytest.warns(UserWarning, match="projected onto it"):
        inside = hull_family.check_gamma(far)
    assert hull_family.contains(inside)
    assert hull_family.contains(hull_family.vertices.mean(0))


def test_sample_is_admissible(zernike_family, hull_family):
    box = zernike_family.sample(30, seed=0)
    assert np.all(np.abs(box) <= 0.15)
    hull = hull_family.sample(30, seed=0)
    assert all(hull_family.contains(g) for g in hull[:5])


def test_centre_is_the_middle_of_the_admissible_set(zernike_family, hull_family):
    """``centre``: the middle of the box, the mean of the hull's vertices; inside the set, and
    the zero of the networks' normalised coefficients."""
    np.testing.assert_allclose(zernike_family.centre,
                               (zernike_family.low + zernike_family.high) / 2)
    np.testing.assert_allclose(hull_family.centre, hull_family.vertices.mean(0))
    for family in (zernike_family, hull_family):
        assert family.contains(family.centre)
        unit = family.normalize(torch.from_numpy(family.centre))
        np.testing.assert_allclose(unit.numpy(), 0, atol=1e-12)


def test_field_snr_definition():
    reference = np.ones((2, 3, 3))
    assert field_snr(reference, reference * 1.1) == pytest.approx(20.0)
    assert field_snr(reference, reference) == float("inf")


def test_config_round_trip(zernike_family):
    rebuilt = family_from_config(zernike_family.config())
    assert rebuilt.psf_family.config() == zernike_family.psf_family.config()
    with pytest.raises(ValueError, match="unknown deepblur family kind"):
        family_from_config({"kind": "cone"})
