"""Vectorial (Richards–Wolf) PSFs through psf-generator, against the scalar pupil model.

The tests that compute PSFs skip when the optional extra (``psfmap[vectorial]``) is absent;
the import-error and import-time checks run everywhere.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from psfmap.metrics import fwhm
from psfmap.psf import through_focus, vectorial_through_focus, vectorial_zernike

WAVELENGTH, OIL = 0.52, 1.515
SOURCE = Path(__file__).resolve().parents[2] / "src" / "psfmap"


@pytest.fixture
def psf_generator():
    return pytest.importorskip("psf_generator")


def _fwhm(profile: torch.Tensor, step: float) -> float:
    return fwhm(profile, step)


def _scalar_reference(size: int, planes, coefficients=(0.0,), **optics) -> torch.Tensor:
    """Scalar stack on a 5× window cropped to ``size``: the scalar model samples its pupil
    with ~``size / 2`` points, which alone costs it ~1 % (measured) on a 21 px window."""
    big = through_focus(5 * size, planes, coefficients, dtype=torch.float64, **optics)
    start = (5 * size) // 2 - size // 2
    crop = big[:, start:start + size, start:start + size]
    return crop / crop.sum()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("na", "tolerance"), [(0.3, 0.015), (0.5, 0.03)])
def test_low_na_agrees_with_the_scalar_model_through_focus_with_aberrations(
        psf_generator, na, tolerance):
    # sin θ_max = NA / n ≤ 0.33: the E_z and polarisation terms are O(sin² θ_max), measured
    # 0.7 % (NA 0.3) and 1.9 % (NA 0.5) relative L2. Astigmatism, coma and planes on both sides
    # of the focus fix orientation (rows y, columns x) and the sign of z: the transposed and
    # the z-reversed stacks differ by 42 % and 47 %.
    optics = dict(na=na, wavelength=WAVELENGTH, pixel_size=WAVELENGTH / na / 4,
                  immersion_index=OIL)
    planes = [-0.8 * WAVELENGTH / na**2, 0.0, 1.2 * WAVELENGTH / na**2]
    coefficients = {5: 0.08, 7: 0.08}
    vectorial = vectorial_through_focus(21, planes, coefficients, dtype=torch.float64,
                                        **optics)
    scalar = _scalar_reference(21, planes, coefficients, **optics)
    assert _relative(vectorial, scalar) <= tolerance
    assert _relative(vectorial.transpose(-1, -2), scalar) > 10 * tolerance
    assert _relative(vectorial.flip(0), scalar) > 10 * tolerance


def test_depth_aberration_agrees_with_the_scalar_model_at_low_na(psf_generator):
    # oil objective focused 30 µm into water: the same pupil phase d (k_s − k_i) in both models
    optics = dict(na=0.4, wavelength=WAVELENGTH, pixel_size=0.3, immersion_index=OIL,
                  sample_index=1.33, depth=30.0, z_step=1.5)
    vectorial = vectorial_through_focus(15, 9, dtype=torch.float64, **optics)
    scalar = _scalar_reference(15, 9, **optics)
    assert _relative(vectorial, scalar) <= 0.03
    # the focus moves towards the objective (negative z): the axial profile is not symmetric
    on_axis = vectorial[:, 7, 7]
    assert int(on_axis.argmax()) < 4


def test_high_na_x_polarisation_elongates_the_spot_along_x(psf_generator):
    # Richards & Wolf (1959): for x-polarised light the axial field E_z ∝ sin θ cos φ puts two
    # lobes on the x axis, and the (cos θ − 1) cos 2φ term of E_x adds energy along x and takes
    # it from y: the spot is longer along x (measured 1.30× the scalar FWHM) and slightly
    # narrower along y (0.93×). The unpolarised mean of x and y is round and wider (1.09×).
    na, pixel, size = 1.4, WAVELENGTH / 1.4 / 16, 49
    optics = dict(na=na, wavelength=WAVELENGTH, pixel_size=pixel, immersion_index=OIL,
                  dtype=torch.float64)
    c = size // 2
    x_pol = vectorial_zernike(size, polarization="x", **optics)
    y_pol = vectorial_zernike(size, polarization="y", **optics)
    unpolarized = vectorial_zernike(size, **optics)
    scalar = through_focus(size, [0.0], **optics)[0]
    reference = _fwhm(scalar[c], pixel)
    assert reference == pytest.approx(0.51 * WAVELENGTH / na, rel=0.05)
    along_x, along_y = _fwhm(x_pol[c], pixel), _fwhm(x_pol[:, c], pixel)
    assert along_x > 1.2 * reference
    assert along_y < reference
    # a quarter turn maps x-polarised light onto y-polarised light
    torch.testing.assert_close(y_pol, x_pol.T, rtol=0, atol=1e-7)
    torch.testing.assert_close(unpolarized, (x_pol + y_pol) / 2, rtol=0, atol=1e-7)
    assert _fwhm(unpolarized[c], pixel) > 1.05 * reference
    assert _fwhm(unpolarized[c], pixel) == pytest.approx(_fwhm(unpolarized[:, c], pixel),
                                                         rel=1e-3)


def test_circular_and_unpolarised_intensities(
        psf_generator):
    # E_circ = (E_x + i E_y) / √2: the cross terms Re(i E_x* · E_y) vanish for an aberration-free
    # pupil (each is i times a real product of the Richards–Wolf integrals I_0, I_1, I_2)
    optics = dict(na=1.3, wavelength=WAVELENGTH, pixel_size=0.05, immersion_index=OIL,
                  dtype=torch.float64)
    circular = vectorial_zernike(25, polarization="circular", **optics)
    unpolarized = vectorial_zernike(25, polarization="unpolarized", **optics)
    torch.testing.assert_close(circular, unpolarized, rtol=0, atol=1e-7)
    # unpolarised = sum of the x and y intensities, also with an aberration that breaks the
    # quarter-turn symmetry (the round-pupil shortcut does not apply); each PSF is normalised
    # on its window, which cuts the comatic tails of x and y light a little differently
    comatic = {8: 0.1}
    x_pol = vectorial_zernike(25, comatic, polarization="x", **optics)
    y_pol = vectorial_zernike(25, comatic, polarization="y", **optics)
    unpolarized = vectorial_zernike(25, comatic, **optics)
    basis = torch.stack([x_pol.flatten(), y_pol.flatten()], dim=1)
    weights = torch.linalg.lstsq(basis, unpolarized.flatten()[:, None]).solution.flatten()
    torch.testing.assert_close(basis @ weights, unpolarized.flatten(), rtol=0, atol=1e-9)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
    assert weights.tolist() == pytest.approx([0.5, 0.5], abs=0.01)
    assert _relative(y_pol, x_pol.T) > 0.05
    # a Jones vector is normalised: (2, 0) is x polarisation
    torch.testing.assert_close(vectorial_zernike(25, polarization=(2, 0), **optics),
                               vectorial_zernike(25, polarization="x", **optics))


def test_normalised_centred_and_symmetric_about_the_focus(psf_generator):
    stack = vectorial_through_focus(16, 7, na=1.2, wavelength=WAVELENGTH, pixel_size=0.08,
                                    z_step=0.2, immersion_index=1.33, dtype=torch.float64)
    assert stack.shape == (7, 16, 16) and stack.dtype == torch.float64
    assert float(stack.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(stack.min()) >= 0
    # the brightest voxel is the focus at (D // 2, h // 2, w // 2), even for an even window
    assert tuple(int(i) for i in torch.nonzero(stack == stack.max())[0]) == (3, 8, 8)
    # aberration-free and index-matched: I(x, y, −z) = I(x, y, z)
    torch.testing.assert_close(stack, stack.flip(0), rtol=1e-5, atol=1e-9)  # float32 fields
    single = vectorial_zernike(16, na=1.2, wavelength=WAVELENGTH, pixel_size=0.08,
                               immersion_index=1.33)
    assert single.shape == (16, 16) and single.dtype == torch.get_default_dtype()
    assert float(single.sum()) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(single.double(), stack[3] / stack[3].sum(), rtol=0, atol=1e-6)


def test_gradients_with_respect_to_the_coefficients_match_finite_differences(psf_generator):
    optics = dict(na=1.2, wavelength=WAVELENGTH, pixel_size=0.08, immersion_index=OIL,
                  dtype=torch.float64)

    def readout(coefficients: torch.Tensor) -> torch.Tensor:
        psf = vectorial_zernike(15, coefficients, **optics)
        return psf[7, 7] + 2 * psf[7, 9] + psf[5, 8]

    coefficients = torch.tensor([0, 0, 0, 0.05, 0.03, 0.0, 0.02], dtype=torch.float64,
                                requires_grad=True)
    readout(coefficients).backward()
    step = 3e-3  # the fields are complex64: a larger step than float64 would take
    for j in (3, 4, 5, 6):  # defocus, both astigmatisms (one of them zero), coma
        plus, minus = coefficients.detach().clone(), coefficients.detach().clone()
        plus[j] += step
        minus[j] -= step
        expected = float(readout(plus) - readout(minus)) / (2 * step)
        assert float(coefficients.grad[j]) == pytest.approx(expected, rel=0.02, abs=1e-3)
    assert float(coefficients.grad[3:].abs().min()) > 1e-3  # none trivially zero


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(polarization="z"), ValueError, "polarization"),
    (dict(polarization=(0, 0)), ValueError, "polarization"),
    (dict(polarization=("a", 1)), TypeError, "polarization"),
    (dict(apodization="yes"), TypeError, "apodization"),
    (dict(pupil_samples=128), ValueError, "pupil_samples"),
    (dict(pupil_samples=2.5), (TypeError, ValueError), "pupil_samples"),
    (dict(pupil_samples=8193), ValueError, "pupil_samples"),
    (dict(na=1.6), ValueError, "na"),
    (dict(wavelength=-0.5), ValueError, "wavelength"),
    (dict(planes=5), ValueError, "z_step"),
    (dict(coefficients=[[0.0, 0.1]]), ValueError, "coefficients"),
    (dict(depth=-1.0), ValueError, "depth"),
    (dict(planes=[0.0, 200.0]), ValueError, "pupil_samples"),
])
def test_bad_arguments_give_clear_errors(psf_generator, kwargs, error, match):
    arguments = dict(size=9, planes=[0.0], na=1.2, wavelength=WAVELENGTH, pixel_size=0.1,
                     immersion_index=OIL)
    arguments.update(kwargs)
    size, planes = arguments.pop("size"), arguments.pop("planes")
    with pytest.raises(error, match=match):
        vectorial_through_focus(size, planes, **arguments)


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "psf_generator", None)  # makes the import fail
    with pytest.raises(ImportError, match=r'pip install "psfmap\[vectorial\]"'):
        vectorial_zernike(9, na=0.5, wavelength=WAVELENGTH, pixel_size=0.1)


def _imported_at_import_time(node: ast.AST) -> set[str]:
    """Top-level package names imported when the module runs (function bodies excluded)."""
    if isinstance(node, ast.Import):
        return {alias.name.split(".")[0] for alias in node.names}
    if isinstance(node, ast.ImportFrom):
        return {(node.module or "").split(".")[0]}
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        return set()
    return set().union(*(_imported_at_import_time(child)
                         for child in ast.iter_child_nodes(node)))


def test_no_psfmap_module_imports_psf_generator_at_import_time():
    # the extra stays optional and psfmap's import stays light: only inside functions
    texts = {path.name: path.read_text("utf-8") for path in SOURCE.rglob("*.py")}
    found = {name for name, text in texts.items() if "psf_generator" in text
             and "psf_generator" in _imported_at_import_time(ast.parse(text))}
    assert found == set()
    vectorial = ast.parse((SOURCE / "psf" / "vectorial.py").read_text("utf-8"))
    assert "psf_generator" not in _imported_at_import_time(vectorial)
    assert "psfmap" in _imported_at_import_time(vectorial)  # the walk does see imports


@pytest.mark.slow
def test_importing_psfmap_does_not_import_psf_generator():
    code = ("import sys, psfmap, psfmap.psf; "
            "assert 'psf_generator' not in sys.modules, 'psf_generator imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
