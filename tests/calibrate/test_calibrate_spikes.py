"""identify_from_spikes: the operator of a new image from ~12 beads around a real sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psfmap.calibrate import calibrate
from psfmap.calibrate.spikes import (
    SpikeIdentification,
    identify_from_spikes,
    lifted_least_squares,
    required_beads,
)
from psfmap.calibrate.synthetic import field_error, synthetic_calibration_set
from psfmap.operators import ProductConvolution, from_psf_grid

PSF_SIZE = 21
NEW_CONDITION = (0.045, 0.012)  # between calibrated conditions: inside the cone


@pytest.fixture(scope="module")
def setting():
    from skimage import data, transform

    model, _, images, _ = synthetic_calibration_set(5, (256, 256), 60, psf_size=17, seed=0)
    family = calibrate(images, psf_size=PSF_SIZE, metadata=model.optics)
    reference, grid_positions = model.field_psfs(NEW_CONDITION, grid=8, size=PSF_SIZE)
    # a real sample (scikit-image's camera) blurred by the true operator of the new condition
    camera = transform.resize(data.camera().astype(float), (256, 256), anti_aliasing=True)
    truth = from_psf_grid(torch.from_numpy(reference.reshape(8, 8, PSF_SIZE, PSF_SIZE)),
                          (256, 256))
    blurred = truth.forward(torch.from_numpy(150 * camera / camera.max())).numpy()
    rng = np.random.default_rng(7)
    beads, bead_positions = model.bead_image(
        NEW_CONDITION, 12, photons=20000, background=0, min_distance=50, seed=rng, noise=False
    )
    image = rng.poisson(np.clip(blurred + beads + 10, 0, None)).astype(float)
    return family, image, bead_positions, reference, grid_positions


def test_identifies_a_new_condition_from_12_beads(setting):
    family, image, bead_positions, reference, grid_positions = setting
    assert len(bead_positions) == 12
    operator = identify_from_spikes(image, family, cone=True)
    assert isinstance(operator, ProductConvolution)
    info = operator.identification
    assert isinstance(info, SpikeIdentification)
    assert len(info.positions) == 12
    assert field_error(operator, reference, grid_positions) < 0.05
    assert info.cone_coefficients is not None and np.all(info.cone_coefficients >= 0)
    assert info.relative_residual < 0.1
    assert info.residuals.shape == (12,) and info.patch_residuals.shape == (12,)
    assert np.median(info.patch_residuals) < 0.15
    assert operator.metadata["identification"]["n_beads"] == 12


def test_unconstrained_lifting_and_given_positions(setting):
    family, image, bead_positions, reference, grid_positions = setting
    detected = identify_from_spikes(image, family)
    given = identify_from_spikes(image, family, positions=bead_positions)
    assert field_error(detected, reference, grid_positions) < 0.08
    assert field_error(given, reference, grid_positions) < 0.08
    assert given.identification.cone_coefficients is None
    full = identify_from_spikes(image, family, positions=bead_positions, span=False)
    assert field_error(full, reference, grid_positions) < 0.15  # I·J unknowns: noisier
    # identified PSFs sum to 1 on average over the field
    assert float(given.psf_at(128, 128).sum()) == pytest.approx(1.0, abs=0.03)


def test_lifted_least_squares_recovers_an_exact_bilinear_model(rng):
    gamma = rng.standard_normal((3, 4))
    values = rng.standard_normal((10, 4))
    scales = rng.uniform(0.5, 2.0, 10)
    coefficients = (values @ gamma.T) / scales[:, None]  # c_m = Γ v_m / β_m
    found, beta = lifted_least_squares(coefficients, values, gamma / (gamma**2).sum())
    assert np.allclose(found, gamma, atol=1e-8)
    assert np.allclose(beta, scales, atol=1e-8)


def test_too_few_beads_says_how_many_are_needed(setting):
    family, image, bead_positions, _, _ = setting
    needed = required_beads(family.n_eigen_psfs, family.n_spatial)
    assert needed >= family.n_spatial
    with pytest.raises(ValueError, match=f"needs at least {needed}"):
        identify_from_spikes(image, family, positions=bead_positions[:3])


def test_bad_input_is_refused(setting):
    family, image, bead_positions, _, _ = setting
    with pytest.raises(ValueError, match="calibrated on images of shape"):
        identify_from_spikes(image[:200], family)
    with pytest.raises(TypeError, match="OperatorFamily"):
        identify_from_spikes(image, "family.psfmap")
    with pytest.raises(ValueError, match="only 0 usable isolated beads"):
        identify_from_spikes(image, family, positions=np.array([[2.0, 2.0]]))  # at the border
    with pytest.raises(ValueError, match="positions must be an array"):
        identify_from_spikes(image, family, positions=np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="no beads found"):
        identify_from_spikes(np.full((256, 256), 10.0), family)
    clipped = np.clip(image / 2, 0, 255).astype(np.uint8)  # every bead peak clipped at 255
    with pytest.raises(ValueError, match="saturated"):
        identify_from_spikes(clipped, family)
