"""Lens (Airy pattern, energy, 4f inversion), phase mask (SLM zero order), camera."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve

from psfmap.optics import (
    add_noise,
    circular_gradient,
    convolve,
    cubic_phase,
    integrate_pixels,
    intensity,
    lens,
    phase_mask,
    zernike_phase,
)


def test_circular_aperture_gives_the_airy_first_zero():
    n, pitch, wavelength, focal, diameter = 256, 1.0, 0.5, 5000.0, 16.0
    field = torch.ones(n, n, dtype=torch.complex128)
    out, out_pitch = lens(field, focal, wavelength=wavelength, pixel_size=pitch,
                          aperture=diameter)
    assert out_pitch == pytest.approx(wavelength * focal / (n * pitch))
    profile = intensity(out)[n // 2, n // 2:].numpy()
    expected = 1.22 * wavelength * focal / diameter
    i = int(np.argmin(profile[: int(1.5 * expected / out_pitch)]))
    y0, y1, y2 = profile[i - 1:i + 2]
    zero = (i + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)) * out_pitch  # parabola's vertex
    assert abs(zero / expected - 1) < 0.02


def test_lens_conserves_energy_and_two_lenses_invert_the_image():
    generator = torch.Generator().manual_seed(0)
    field = torch.randn(64, 64, dtype=torch.complex128, generator=generator)
    out, pitch = lens(field, 2000.0, wavelength=0.5, pixel_size=2.0)
    before = intensity(field).sum() * 2.0**2
    after = intensity(out).sum() * pitch**2
    assert float(after / before) == pytest.approx(1.0, abs=1e-12)
    back, pitch2 = lens(out, 2000.0, wavelength=0.5, pixel_size=pitch)
    assert pitch2 == pytest.approx(2.0)
    # a 4f system images the field upside down: U(-x), centre sample fixed
    flipped = torch.roll(torch.flip(field, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    assert torch.allclose(back, -flipped, atol=1e-10)  # (1/i)² = -1


def test_lens_accepts_tensors_and_is_differentiable():
    generator = torch.Generator().manual_seed(2)
    field = torch.randn(6, 6, dtype=torch.complex128, generator=generator, requires_grad=True)
    focal = torch.tensor(100.0, dtype=torch.float64, requires_grad=True)
    aperture = torch.tensor(2.3, dtype=torch.float64, requires_grad=True)

    def run(u, f, d):
        return lens(u, f, wavelength=0.5, pixel_size=0.5, aperture=d, distance=60.0)[0]

    assert torch.autograd.gradcheck(run, (field, focal, aperture), atol=1e-6, rtol=1e-4)
    _, pitch = lens(field, focal, wavelength=0.5, pixel_size=0.5)
    assert isinstance(pitch, torch.Tensor) and pitch.requires_grad
    assert float(pitch.detach()) == pytest.approx(0.5 * 100 / (6 * 0.5))


def test_lens_refusals():
    field = torch.ones(16, 16, dtype=torch.complex64)
    with pytest.raises(ValueError, match="pixel_size=1 µm cannot sample the aperture=2 µm"):
        lens(field, 100.0, wavelength=0.5, pixel_size=1.0, aperture=2.0)
    with pytest.raises(ValueError, match="focal_length must be > 0"):
        lens(field, 0.0, wavelength=0.5, pixel_size=1.0)
    with pytest.raises(ValueError, match="must be square"):
        lens(torch.ones(8, 16, dtype=torch.complex64), 100.0, wavelength=0.5, pixel_size=1.0)
    with pytest.raises(TypeError, match="field must be a complex"):
        lens(torch.ones(8, 8), 100.0, wavelength=0.5, pixel_size=1.0)


@pytest.mark.parametrize("fill", [1.0, 0.8, 0.5])
def test_slm_fill_factor_leaves_a_zero_order(fill):
    n = 64
    field = torch.ones(n, n, dtype=torch.complex128)
    # a blazed grating: every field sample's phase steps 2π·4/n, no zero order when fill = 1
    phase = 2 * math.pi * 4 * torch.arange(n, dtype=torch.float64)[None, :].expand(n, n) / n
    out = phase_mask(field, phase, fill_factor=fill)
    spectrum = intensity(torch.fft.fft2(out))
    incident = float(intensity(torch.fft.fft2(field)).sum())
    # fractions of the incident light: (1 − F)² unmodulated, F² steered; the rest, 2F(1 − F),
    # goes to the pixel grid's own orders, outside the modelled band
    assert float(spectrum[0, 0]) / incident == pytest.approx((1 - fill) ** 2, abs=1e-12)
    assert float(spectrum[0, 4]) / incident == pytest.approx(fill**2, abs=1e-12)


def test_phase_mask_gradients_and_refusals():
    generator = torch.Generator().manual_seed(3)
    field = torch.randn(5, 5, dtype=torch.complex128, generator=generator)
    phase = torch.rand(5, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    fill = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda p, f: phase_mask(field, p, fill_factor=f), (phase, fill), atol=1e-7)
    wrapped = phase_mask(field, phase.detach() + 2 * math.pi)
    assert torch.allclose(wrapped, phase_mask(field, phase.detach()), atol=1e-12)
    with pytest.raises(ValueError, match=r"phase must lie in \[0, 2π\) with wrap=False"):
        phase_mask(field, phase.detach() + 7, wrap=False)
    with pytest.raises(ValueError, match="fill_factor must be in"):
        phase_mask(field, phase.detach(), fill_factor=1.5)
    with pytest.raises(TypeError, match="phase must be a real torch tensor"):
        phase_mask(field, field)


def test_phase_patterns():
    cubic = cubic_phase(9, 2.0, radius=4)
    assert float(cubic[8, 8]) == pytest.approx(2.0 * 2)  # x = y = 1
    ring = circular_gradient(9, 3.0, radius=4)
    assert float(ring[4, 8]) == pytest.approx(3.0) and float(ring[4, 4]) == 0.0
    defocus = zernike_phase(33, {4: 0.5}, radius=16, dtype=torch.float64)
    # Noll 4 = √3 (2ρ² − 1): at the centre −√3, RMS waves → radians
    assert float(defocus[16, 16]) == pytest.approx(-2 * math.pi * 0.5 * math.sqrt(3))


def test_camera_pixels_convolution_and_noise():
    image = torch.arange(16.0).reshape(4, 4)
    assert integrate_pixels(image, 2).tolist() == [[10.0, 18.0], [42.0, 50.0]]
    with pytest.raises(ValueError, match="not a whole number of 3x3 camera pixels"):
        integrate_pixels(image, 3)
    generator = torch.Generator().manual_seed(4)
    psf = torch.rand(5, 7, dtype=torch.float64, generator=generator)
    objects = torch.rand(2, 20, 30, dtype=torch.float64, generator=generator)
    expected = np.stack([fftconvolve(o, psf.numpy(), mode="same") for o in objects.numpy()])
    assert np.allclose(convolve(psf, objects).numpy(), expected, atol=1e-12)
    flat = torch.full((200, 200), 50.0, dtype=torch.float64)
    noisy = add_noise(flat, read_noise=3.0, seed=7)
    assert torch.equal(noisy, add_noise(flat, read_noise=3.0, seed=7))
    assert float(noisy.mean()) == pytest.approx(50.0, abs=0.2)
    assert float(noisy.var()) == pytest.approx(50.0 + 9.0, rel=0.05)
    scaled = add_noise(flat, photons=10.0, seed=7)  # 10 photons: relative noise 1/√10
    assert float(scaled.std() / scaled.mean()) == pytest.approx(10**-0.5, rel=0.05)
    with pytest.raises(ValueError, match="read_noise must be a finite number >= 0"):
        add_noise(flat, read_noise=-1.0)
