"""Free-space propagation against analytic solutions (Gaussian beam, Fresnel integrals),
its symmetries, its gradients, and its refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import fresnel

from psfmap.optics import intensity, propagate

WAVELENGTH = 0.5


def _grid(n: int, pitch: float, half: bool = False):
    x = (torch.arange(n, dtype=torch.float64) - n // 2 + (0.5 if half else 0.0)) * pitch
    return torch.meshgrid(x, x, indexing="ij")


def _gaussian(n=128, pitch=0.5, waist=5.0):
    y, x = _grid(n, pitch)
    return torch.exp(-(x**2 + y**2) / waist**2).to(torch.complex128), x


@pytest.mark.parametrize("method", ["angular-spectrum", "rayleigh-sommerfeld"])
@pytest.mark.parametrize("ratio", [1.0, 2.0])
def test_gaussian_beam_waist_and_peak(method, ratio):
    waist = 5.0
    field, x = _gaussian(waist=waist)
    rayleigh = math.pi * waist**2 / WAVELENGTH
    z = ratio * rayleigh
    out = intensity(propagate(field, z, wavelength=WAVELENGTH, pixel_size=0.5, method=method))
    start = intensity(field)
    measured = 2 * torch.sqrt((out * x**2).sum() / out.sum())  # I ∝ exp(-2r²/w²): <x²> = w²/4
    expected = waist * math.sqrt(1 + (z / rayleigh) ** 2)
    assert abs(float(measured) / expected - 1) < 0.01
    peak = float(out.max() / start.max())
    assert abs(peak / (waist / expected) ** 2 - 1) < 0.01


def test_square_aperture_matches_fresnel_integrals():
    n, pitch, half_width, z = 256, 1.0, 40.0, 800.0
    y, x = _grid(n, pitch, half=True)  # the aperture's edges fall between samples
    field = ((x.abs() < half_width) & (y.abs() < half_width)).to(torch.complex128)
    out = intensity(propagate(field, z, wavelength=WAVELENGTH, pixel_size=pitch)).numpy()
    scale = math.sqrt(2 / (WAVELENGTH * z))
    axis = x[0].numpy()
    s1, c1 = fresnel(scale * (half_width - axis))
    s2, c2 = fresnel(scale * (-half_width - axis))
    profile = ((c1 - c2) ** 2 + (s1 - s2) ** 2) / 2
    analytic = np.outer(profile, profile)
    assert np.abs(out - analytic).max() / analytic.max() < 0.02


@pytest.mark.parametrize("padding", ["none", "auto", "band-limit"])
def test_round_trip_returns_the_field(padding):
    field, _ = _gaussian(waist=4.0)
    z = 40.0
    there = propagate(field, z, wavelength=WAVELENGTH, pixel_size=0.5, padding=padding)
    back = propagate(there, -z, wavelength=WAVELENGTH, pixel_size=0.5, padding=padding)
    assert float((back - field).abs().norm() / field.abs().norm()) <= 1e-5


def test_energy_is_conserved_on_the_propagating_band():
    generator = torch.Generator().manual_seed(0)
    field = torch.randn(2, 64, 64, dtype=torch.complex128, generator=generator)
    out = propagate(field, 123.0, wavelength=WAVELENGTH, pixel_size=0.5, padding="none")
    ratio = intensity(out).sum(dim=(-2, -1)) / intensity(field).sum(dim=(-2, -1))
    assert torch.allclose(ratio, torch.ones(2, dtype=torch.float64), atol=1e-12)
    # finer than λ/2: the evanescent part is dropped, the rest keeps its energy
    fine = propagate(field, 5.0, wavelength=WAVELENGTH, pixel_size=0.1, padding="none")
    spectrum = torch.fft.fft2(field)
    f = torch.fft.fftfreq(64, d=0.1, dtype=torch.float64)
    propagating = (f[:, None] ** 2 + f[None, :] ** 2) < 1 / WAVELENGTH**2
    expected = (intensity(spectrum) * propagating).sum(dim=(-2, -1)) / 64**2
    assert torch.allclose(intensity(fine).sum(dim=(-2, -1)), expected, rtol=1e-10)


def test_backward_is_the_conjugate_of_forward():
    field, _ = _gaussian(n=64, waist=3.0)
    field = field * torch.polar(torch.ones(64, 64, dtype=torch.float64),
                                torch.linspace(0, 1, 64, dtype=torch.float64)[None, :])
    forward = propagate(field.conj(), 30.0, wavelength=WAVELENGTH, pixel_size=0.5)
    backward = propagate(field, -30.0, wavelength=WAVELENGTH, pixel_size=0.5)
    assert torch.allclose(forward.conj(), backward, atol=1e-10)


def test_batched_distances_match_one_by_one_and_keep_dtype():
    field, _ = _gaussian(n=64, waist=3.0)
    field = field.to(torch.complex64).expand(3, 64, 64)
    distances = torch.tensor([-20.0, 0.0, 35.0])
    batch = propagate(field, distances, wavelength=WAVELENGTH, pixel_size=0.5)
    assert batch.dtype == torch.complex64 and batch.shape == (3, 64, 64)
    for k in range(3):
        single = propagate(field[k], float(distances[k]), wavelength=WAVELENGTH,
                           pixel_size=0.5)
        assert torch.allclose(batch[k], single, atol=1e-5)


@pytest.mark.parametrize("method,padding,distance", [
    ("angular-spectrum", "none", 3.0),
    ("angular-spectrum", "band-limit", 3.0),
    ("rayleigh-sommerfeld", "auto", 6.0),
])
def test_gradients_match_finite_differences(method, padding, distance):
    generator = torch.Generator().manual_seed(1)
    field = torch.randn(6, 6, dtype=torch.complex128, generator=generator, requires_grad=True)
    z = torch.tensor(distance, dtype=torch.float64, requires_grad=True)
    # 0.65 µm: no sample of the 12-point padded grid lies on the evanescent circle 1/λ
    wavelength = torch.tensor(0.65, dtype=torch.float64, requires_grad=True)
    pitch = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)

    def run(u, d, wl, dx):
        return propagate(u, d, wavelength=wl, pixel_size=dx, method=method, padding=padding)

    assert torch.autograd.gradcheck(run, (field, z, wavelength, pitch), atol=1e-6, rtol=1e-4)


def test_refusals_name_the_argument():
    real = torch.ones(8, 8)
    with pytest.raises(TypeError, match="field must be a complex torch tensor"):
        propagate(real, 1.0, wavelength=0.5, pixel_size=0.1)
    field = torch.ones(8, 8, dtype=torch.complex64)
    with pytest.raises(ValueError, match="wavelength must be > 0"):
        propagate(field, 1.0, wavelength=-0.5, pixel_size=0.1)
    with pytest.raises(ValueError, match="method must be one of"):
        propagate(field, 1.0, wavelength=0.5, pixel_size=0.1, method="fresnel")
    with pytest.raises(ValueError, match="distance=.* too short for method='rayleigh"):
        propagate(torch.ones(64, 64, dtype=torch.complex64), 1.0, wavelength=0.5,
                  pixel_size=1.0, method="rayleigh-sommerfeld")
    with pytest.raises(ValueError, match="distance has shape"):
        propagate(field, torch.ones(3), wavelength=0.5, pixel_size=0.1)


def test_a_distance_beyond_memory_is_refused():
    # a hard-edged field carries energy up to the Nyquist frequency: over a metre the grid
    # that samples its directions would hold billions of samples
    y, x = _grid(64, 0.4)
    field = ((x.abs() < 5) & (y.abs() < 5)).to(torch.complex64)
    with pytest.raises(ValueError, match="more than memory allows"):
        propagate(field, 1e6, wavelength=WAVELENGTH, pixel_size=0.4)
    # band-limiting instead keeps the memory constant
    out = propagate(field, 1e6, wavelength=WAVELENGTH, pixel_size=0.4, padding="band-limit")
    assert out.shape == field.shape and bool(torch.isfinite(out.real).all())


def test_grazing_angles_need_band_limiting():
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn(32, 32, dtype=torch.complex64, generator=generator)
    with pytest.raises(ValueError, match="grazing angles .* padding='band-limit'"):
        propagate(noise, 10.0, wavelength=0.5, pixel_size=0.25)
    out = propagate(noise, 10.0, wavelength=0.5, pixel_size=0.25, padding="band-limit")
    assert out.shape == noise.shape and out.dtype == torch.complex64
