"""Blocks and Microscope: PSFs against psfmap.psf.zernike, the paper's 4f chain, parameter
names, JSON description, operators for restoration."""

from __future__ import annotations

import json

import pytest
import torch
from scipy import fft as scipy_fft

from psfmap.operators import Convolution, ProductConvolution, cell_centres, from_microscope
from psfmap.optics import (
    Camera,
    Lens,
    Microscope,
    PhaseMask,
    Propagation,
    PSFSource,
    ZernikeSource,
    build,
)
from psfmap.psf import zernike

COEFFICIENTS = {5: 0.1, 11: 0.08}


def _source(size=32, **kwargs):
    return ZernikeSource(size, na=0.9, wavelength=0.55, pixel_size=0.1, **kwargs)


def test_zernike_source_reuses_the_zernike_pupil():
    size, sub = 31, 3
    grid = scipy_fft.next_fast_len(2 * size * sub)
    grid += grid % 2  # the grid psf.zernike uses for this window
    with torch.random.fork_rng():
        torch.set_default_dtype(torch.float64)
        try:
            microscope = Microscope([
                ZernikeSource(grid, na=0.9, wavelength=0.55, pixel_size=0.1 / sub,
                              zernike=COEFFICIENTS),
                Camera(binning=sub, crop=size)])
        finally:
            torch.set_default_dtype(torch.float32)
    psf = microscope.psf()
    reference = zernike(size, COEFFICIENTS, na=0.9, wavelength=0.55, pixel_size=0.1,
                        oversample=sub, dtype=torch.float64)
    assert psf.shape == (size, size)
    assert float(psf.sum()) == pytest.approx(1.0, abs=1e-9)
    # the same pupil; only its edge differs (anti-aliased here, so the NA stays smooth)
    assert float((psf - reference).abs().max() / reference.max()) < 0.02


def test_through_focus_stack_and_grid():
    microscope = Microscope([_source(), Camera(crop=21)])
    stack = microscope.psf_stack([-1.0, 0.0, 1.0])
    assert stack.shape == (3, 21, 21)
    assert torch.allclose(stack.sum(dim=(-2, -1)), torch.ones(3), atol=1e-5)
    # no aberration: defocus ±z give the same intensity, focus is the sharpest
    assert torch.allclose(stack[0], stack[2], atol=1e-6)
    assert float(stack[1].max()) > 2 * float(stack[0].max())
    grid = microscope.psf_grid(torch.tensor([[-1.0, 0.0], [0.0, 1.0]]))
    assert grid.shape == (2, 2, 21, 21)
    assert torch.allclose(grid[0, 1], stack[1], atol=1e-6)


def test_the_papers_4f_chain():
    # PSF -> propagation -> lens -> phase mask -> lens -> camera (WaveBlocks, Fig. 1)
    size, focal = 64, 2000.0
    coma = {7: 0.15}  # an asymmetric PSF, so that the inversion shows
    blocks = [_source(size, zernike=coma), Propagation(0.0), Lens(focal), PhaseMask(size=size),
              Lens(focal, name="tube"), Camera()]
    microscope = Microscope(blocks)
    assert microscope.focus == "source"
    assert microscope.parameter_names() == [
        "source.zernike", "source.depth", "source.shift", "source.depth_scale",
        "propagation.distance",
        "lens.focal_length", "mask.phase", "mask.fill_factor", "tube.focal_length",
        "camera.gain", "camera.background"]
    direct = Microscope([_source(size, zernike=coma), Camera()]).psf()
    # a flat mask in a 4f relay with equal lenses images the PSF upside down
    flipped = torch.roll(torch.flip(direct, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    assert not torch.allclose(direct, flipped, atol=1e-6)
    assert torch.allclose(microscope.psf(), flipped, atol=1e-6)
    assert microscope.pixel_size() == pytest.approx(0.1)
    # a phase on the mask changes the PSF and carries a gradient back to the mask
    mask = microscope.parameter("mask.phase")
    microscope.set_trainable(["mask.phase"])
    psf = microscope.psf()
    (psf**2).sum().backward()
    assert mask.grad is not None and float(mask.grad.abs().sum()) > 0
    assert microscope.parameter("lens.focal_length").grad is None


def test_parameter_names_and_refusals():
    microscope = Microscope([_source(), Camera()])
    with pytest.raises(ValueError, match=r"params names \['lens.focal_length'\], which the "
                                         "microscope does not have"):
        microscope.set_trainable(["lens.focal_length"])
    with pytest.raises(ValueError, match="the first block must be a source"):
        Microscope([Propagation(1.0), Camera()])
    with pytest.raises(ValueError, match="the last block must be a Camera"):
        Microscope([_source(), Propagation(1.0)])
    with pytest.raises(ValueError, match="pixel_size=0.5 µm cannot sample the pupil"):
        ZernikeSource(32, na=0.9, wavelength=0.55, pixel_size=0.5)
    with pytest.raises(ValueError, match=r"trainable names \['depht'\]"):
        _source(trainable=["depht"])


def test_description_round_trip():
    microscope = Microscope([_source(zernike=COEFFICIENTS, depth=0.4), Propagation(0.0),
                             Camera(crop=21, gain=2.0)])
    spec = json.loads(json.dumps(microscope.describe()))
    rebuilt = build(spec)
    assert rebuilt.parameter_names() == microscope.parameter_names()
    assert torch.allclose(rebuilt.psf(), microscope.psf(), atol=1e-7)
    assert float(rebuilt.parameter("camera.gain")) == 2.0
    with pytest.raises(ValueError, match=r"blocks\[0\] must be a mapping whose 'type'"):
        build({"blocks": [{"type": "mirror"}]})


def test_psf_source_keeps_a_measured_psf():
    psf = torch.zeros(16, 16)
    psf[7:10, 8] = 1.0
    microscope = Microscope([PSFSource(psf, wavelength=0.5, pixel_size=0.1), Camera()])
    assert torch.allclose(microscope.psf(), psf / psf.sum(), atol=1e-6)
    shifted = Microscope([PSFSource(psf, wavelength=0.5, pixel_size=0.1, shift=(0.2, 0.0)),
                          Camera()]).psf()
    assert torch.allclose(shifted[9:12, 8], torch.full((3,), 1 / 3), atol=1e-5)


def test_operators_from_a_microscope():
    microscope = Microscope([_source(), Camera(crop=15)])
    operator = from_microscope(microscope, (40, 48))
    assert isinstance(operator, Convolution)
    assert torch.allclose(operator.psf, microscope.psf())
    assert operator.metadata["pixel_size"] == pytest.approx(0.1)
    tilted = from_microscope(microscope, (40, 48), grid=(2, 2), tilt=(0.02, 0.0))
    assert isinstance(tilted, ProductConvolution)
    # a point at a cell centre is blurred by that cell's PSF (its focus offset)
    row, col = int(cell_centres(2, 40)[0]), int(cell_centres(2, 48)[1])
    point = torch.zeros(40, 48)
    point[row, col] = 1.0
    blurred = tilted.forward(point)[row - 7:row + 8, col - 7:col + 8]
    expected = microscope.psf(0.02 * (row - 20))
    assert torch.allclose(blurred, expected, atol=1e-5)


def test_float64_microscope_gives_float64_psfs():
    microscope = Microscope([_source(zernike=COEFFICIENTS), Propagation(0.5), Camera(crop=15)],
                            focus="propagation").double()
    stack = microscope.psf([0.0, 0.4])
    assert stack.dtype == torch.float64
    single = Microscope([_source(zernike=COEFFICIENTS), Propagation(0.5), Camera(crop=15)],
                        focus="propagation")
    assert torch.allclose(stack.float(), single.psf([0.0, 0.4]), atol=1e-6)
