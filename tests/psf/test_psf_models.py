"""PSF models: analytic optics, Zernike algebra, families, dtype/gradients, bad input."""

import math

import numpy as np
import pytest
import torch

from psfmap import psf
from psfmap.metrics import fwhm


def _fwhm(profile: np.ndarray) -> float:
    return fwhm(profile)


@pytest.mark.parametrize("na, wavelength", [(0.8, 0.52), (1.4, 0.6)])
def test_airy_fwhm_matches_theory(na, wavelength):
    pixel = wavelength / (12 * na)  # finely sampled so pixel integration barely widens it
    image = psf.zernike(97, [0.0], na=na, wavelength=wavelength, pixel_size=pixel,
                        dtype=torch.float64, immersion_index=1.518)
    measured = _fwhm(image[48].numpy()) * pixel
    assert measured == pytest.approx(0.51 * wavelength / na, rel=0.03)


def test_zernike_polynomials_are_orthonormal_on_unit_disk():
    n = 801
    coords = (np.arange(n) + 0.5) / n * 2 - 1
    y, x = np.meshgrid(coords, coords, indexing="ij")
    rho = torch.from_numpy(np.hypot(x, y))
    theta = torch.from_numpy(np.arctan2(y, x))
    inside = rho <= 1
    basis = torch.stack([psf.zernike_polynomial(j, rho, theta)[inside] for j in range(1, 16)])
    gram = (basis @ basis.T) / inside.sum()
    np.testing.assert_allclose(gram.numpy(), np.eye(15), atol=2e-3)


def test_noll_indices():
    assert [psf.noll_to_nm(j) for j in range(1, 12)] == [
        (0, 0), (1, 1), (1, -1), (2, 0), (2, -2), (2, 2), (3, -1), (3, 1), (3, -3), (3, 3),
        (4, 0),
    ]


def test_positive_and_negative_defocus_give_the_same_psf():
    kwargs = dict(na=1.0, wavelength=0.5, pixel_size=0.08, dtype=torch.float64)
    plus = psf.zernike(33, {4: 0.3}, **kwargs)
    minus = psf.zernike(33, {4: -0.3}, **kwargs)
    np.testing.assert_allclose(plus.numpy(), minus.numpy(), atol=1e-12)
    assert not torch.allclose(plus, psf.zernike(33, {4: 0.0}, **kwargs))


def _orientation(image: torch.Tensor) -> float:
    """Angle (radians, x towards y) of the principal axis of the second moments."""
    h, w = image.shape
    y, x = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    m = image / image.sum()
    cxx, cyy, cxy = (m * x * x).sum(), (m * y * y).sum(), (m * x * y).sum()
    return 0.5 * math.atan2(2 * float(cxy), float(cxx - cyy))


def test_astigmatism_axis_rotates_the_psf():
    family = psf.model("zernike3", size=33)
    angles = []
    for axis in (0.0, math.pi / 4, math.pi / 2):
        image = family(torch.tensor([[0.15, 0.15, axis]], dtype=torch.float64))[0]
        angles.append(_orientation(image))
    # the elongation turns with the axis (mod π): steps of π/4 between the three
    step1 = (angles[1] - angles[0]) % math.pi
    step2 = (angles[2] - angles[1]) % math.pi
    assert step1 == pytest.approx(math.pi / 4, abs=0.05)
    assert step2 == pytest.approx(math.pi / 4, abs=0.05)
    rotated = family(torch.tensor([[0.15, 0.15, math.pi / 2]], dtype=torch.float64))[0]
    base = family(torch.tensor([[0.15, 0.15, 0.0]], dtype=torch.float64))[0]
    # a quarter turn of the axis is a transpose of the PSF (x <-> y swap)
    np.testing.assert_allclose(rotated.numpy(), base.T.numpy(), atol=1e-10)


def test_gaussian_is_normalised_centred_and_anisotropic():
    image = psf.gaussian(31, (1.0, 3.0), angle=0.0)
    assert image.dtype == torch.float32
    assert float(image.sum()) == pytest.approx(1.0, abs=1e-6)
    assert divmod(int(image.argmax()), 31) == (15, 15)
    # wider along y (rows) than along x (columns)
    profile_rows = image[:, 15] / image[:, 15].max()
    profile_cols = image[15] / image[15].max()
    assert float(profile_rows[10]) > float(profile_cols[10])
    turned = psf.gaussian(31, (1.0, 3.0), angle=math.pi / 2)
    np.testing.assert_allclose(turned.numpy(), image.T.numpy(), atol=1e-6)


def test_gaussian_variance_matches_sigma():
    image = psf.gaussian(65, 4.0, dtype=torch.float64)
    x = torch.arange(65, dtype=torch.float64) - 32
    variance = float((image.sum(0) * x**2).sum())
    # pixel integration adds the box variance 1/12
    assert variance == pytest.approx(16 + 1 / 12, rel=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", psf.FAMILIES)
def test_families_shape_dtype_normalisation(name, dtype):
    family = psf.model(name)
    params = family.sample(3, torch.Generator().manual_seed(1), dtype=dtype)
    images = family(params)
    assert images.shape == (3, family.size, family.size)
    assert images.dtype == dtype
    np.testing.assert_allclose(images.sum(dim=(1, 2)).numpy(), 1.0, atol=1e-5)
    assert len(family.names) == family.n_params == len(family.low) == len(family.high)
    rebuilt = psf.model_from_config(family.config())
    torch.testing.assert_close(rebuilt(params), images)


@pytest.mark.parametrize("name", psf.FAMILIES)
def test_gradients_flow_through_families(name):
    family = psf.model(name, size=17)
    # off the centre: a range symmetric about 0 (zernike7) has its centre at 0, where the
    # aberration-free PSF is a stationary point of every coefficient
    params = torch.tensor(family.low + 0.6 * (family.high - family.low), dtype=torch.float64)[None]
    params.requires_grad_(True)
    target = family(params.detach() * 1.1)
    loss = ((family(params) - target) ** 2).sum()
    loss.backward()
    assert params.grad is not None and torch.isfinite(params.grad).all()
    assert float(params.grad.abs().sum()) > 0


def test_sampling_is_replayable_and_in_range():
    family = psf.model("zernike3")
    a = family.sample(50, torch.Generator().manual_seed(7))
    b = family.sample(50, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)
    assert bool((a >= torch.tensor(family.low, dtype=a.dtype)).all())
    assert bool((a <= torch.tensor(family.high, dtype=a.dtype)).all())
    torch.testing.assert_close(family.denormalize(family.normalize(a)), a)


def test_undersampled_camera_integrates_pixels():
    # coarse pixels: the PSF is computed on a finer grid and binned, so it stays centred,
    # normalised, and equal to binning a finely computed PSF
    coarse = psf.zernike(11, {4: 0.1}, na=1.2, wavelength=0.5, pixel_size=0.3,
                         dtype=torch.float64, immersion_index=1.33)
    fine = psf.zernike(11 * 9, {4: 0.1}, na=1.2, wavelength=0.5, pixel_size=0.3 / 9,
                       dtype=torch.float64, immersion_index=1.33)
    binned = fine.reshape(11, 9, 11, 9).sum(dim=(1, 3))
    np.testing.assert_allclose(coarse.numpy(), binned.numpy(), atol=0.01 * float(binned.max()))
    assert divmod(int(coarse.argmax()), 11) == (5, 5)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: psf.gaussian(0, 1.0), "size"),
        (lambda: psf.gaussian(9, -1.0), "sigma"),
        (lambda: psf.gaussian(9, float("nan")), "sigma"),
        (lambda: psf.gaussian(9, (1.0, 2.0, 3.0)), "sigma"),
        (lambda: psf.zernike(9, [0.1], na=1.5, wavelength=0.5, pixel_size=0.1), "na"),
        (lambda: psf.zernike(9, [0.1], na=0.5, wavelength=-0.5, pixel_size=0.1), "wavelength"),
        (lambda: psf.zernike(9, [np.inf], na=0.5, wavelength=0.5, pixel_size=0.1), "coefficients"),
        (lambda: psf.zernike(9, {0: 0.1}, na=0.5, wavelength=0.5, pixel_size=0.1), "Noll"),
        (lambda: psf.zernike(3, [0.0], na=0.1, wavelength=0.5, pixel_size=0.01), "pupil"),
        # nanometres for micrometres: refused before a 77,000² grid is allocated
        (lambda: psf.zernike(33, {4: 0.1}, na=0.8, wavelength=0.55, pixel_size=100),
         "pixel sizes are in µm"),
        (lambda: psf.model("gaussian1", size=0), "size"),
        (lambda: psf.model("zernike3").sample(-1), "n must be"),
        (lambda: psf.model("zernike3").to_linear(np.zeros((4, 2))), r"\(\.\.\., 3\)"),
        (lambda: psf.model_from_config("gaussian1"), "config must be"),
        (lambda: psf.model("nope"), "unknown PSF model"),
        (lambda: psf.model("gaussian1")(torch.ones(2, 2)), "params"),
        (lambda: psf.model("gaussian1")(torch.tensor([[float("nan")]])), "params"),
        (lambda: psf.model("gaussian1", low=[0.0], high=[1.0]), "widths"),
    ],
)
def test_bad_input_raises_clear_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_linear_coordinates_of_the_astigmatism_axis():
    family = psf.model("zernike3", size=15)
    params = np.array([[0.1, 0.2, 0.05], [0.3, 0.0, 0.0], [0.2, 0.25, np.pi - 0.05],
                       [0.0, 0.1, 1.5]])
    linear = family.to_linear(params)
    # Noll a6 = C cos 2φ, a5 = C sin 2φ: the coefficients the PSF is rendered from
    np.testing.assert_allclose(linear[:, 1], params[:, 1] * np.cos(2 * params[:, 2]))
    np.testing.assert_allclose(linear[:, 2], params[:, 1] * np.sin(2 * params[:, 2]))
    np.testing.assert_allclose(linear[:, 0], params[:, 0])
    back = family.from_linear(linear)
    np.testing.assert_allclose(back[[0, 2, 3]], params[[0, 2, 3]], atol=1e-12)
    np.testing.assert_allclose(back[1, :2], params[1, :2])  # no cylinder: any axis
    # two nearly horizontal axes average to a horizontal one, not to a vertical one
    mean = family.from_linear(linear[[0, 2]].mean(0))
    assert min(mean[2], np.pi - mean[2]) < 0.06
    # Gaussian and defocus-only families: identity
    for name in ("gaussian1", "gaussian2", "zernike1"):
        other = psf.model(name, size=15)
        values = other.sample(5, dtype=torch.float64).numpy()
        np.testing.assert_array_equal(other.to_linear(values), values)
        np.testing.assert_array_equal(other.from_linear(values), values)
    # an axis range other than one period is not periodic: left as a number
    bounded = psf.model("zernike3", size=15, high=(0.4, 0.3, 1.0))
    assert bounded.periodic == []
    np.testing.assert_array_equal(bounded.to_linear(params), params)


def test_an_empty_batch_gives_no_psfs():
    for name in ("gaussian1", "zernike3"):
        family = psf.model(name)
        assert family(np.zeros((0, family.n_params))).shape == (0, family.size, family.size)


def test_every_family_names_the_unit_of_each_parameter():
    from psfmap.psf.families import FAMILIES

    for name in FAMILIES:
        family = psf.model(name)
        assert len(family.units) == family.n_params
    assert psf.model("gaussian2").units == ("px", "px")
    assert psf.model("zernike3").units == ("waves RMS", "waves RMS", "rad")
    assert set(psf.model("zernike7").units) == {"waves RMS"}
