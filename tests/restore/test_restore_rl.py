"""Richardson–Lucy (+TV) with any operator: psfmap.restore.richardson_lucy / deconvolve."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from psfmap.metrics import snr
from psfmap.operators import Convolution, ProductConvolution, PSFMap, from_psf_grid
from psfmap.psf import gaussian, zernike
from psfmap.restore import DEFAULT_TV, deconvolve, richardson_lucy, total_variation
from psfmap.restore._domain import CroppedOperator


def smooth_texture(rng: np.random.Generator, shape, sigma=2.0, offset=0.1) -> np.ndarray:
    texture = ndimage.gaussian_filter(rng.random(shape), sigma)
    return (texture - texture.min()) / (texture.max() - texture.min()) + offset


def grid_operator(shape, dtype=torch.float64) -> ProductConvolution:
    widths = torch.linspace(0.8, 2.2, 6, dtype=dtype)
    psfs = torch.stack([gaussian(11, float(w), dtype=dtype) for w in widths]).reshape(2, 3, 11, 11)
    return from_psf_grid(psfs, shape)


class DenseOperator:
    """A stand-in operator: an explicit matrix, no ``extended``/``kernel_shape`` (generic API)."""

    def __init__(self, matrix: torch.Tensor, shape: tuple[int, int]):
        self.matrix = matrix
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(*x.shape[:-2], -1)
        return (flat @ self.matrix.T).reshape(x.shape)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        flat = y.reshape(*y.shape[:-2], -1)
        return (flat @ self.matrix).reshape(y.shape)


# ----------------------------------------------------------------- the extended domain


def test_extended_domain_composite_is_consistent_and_adjoint():
    operator = grid_operator((40, 50))
    system = CroppedOperator(operator, (40, 50), margin=5)
    assert system.domain_shape == (50, 60)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 50, 60, generator=generator, dtype=torch.float64)
    y = torch.rand(2, 40, 50, generator=generator, dtype=torch.float64)
    # <A x, y> = <x, A* y> for A = crop ∘ H_ext
    lhs = torch.sum(system.forward(x) * y)
    rhs = torch.sum(x * system.adjoint(y))
    assert torch.allclose(lhs, rhs, rtol=1e-12)
    # an object inside the field is blurred exactly as by the original operator
    inside = torch.rand(40, 50, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(system.forward(system.pad(inside)), operator.forward(inside))
    # light from outside the field reaches it
    outside = torch.zeros(50, 60, dtype=torch.float64)
    outside[4, 30] = 1.0  # one row above the field
    assert float(system.forward(outside).sum()) > 0.05


# ----------------------------------------------------------------- basic properties


def test_delta_psf_returns_the_image(rng):
    image = rng.random((24, 30)) * 100
    delta = np.zeros((3, 3))
    delta[1, 1] = 1.0
    restored = richardson_lucy(image, Convolution(delta), iterations=5)
    np.testing.assert_allclose(restored, image, rtol=1e-10)
    restored_tv = richardson_lucy(image.astype(np.float32), Convolution(delta), iterations=1)
    np.testing.assert_allclose(restored_tv, image, rtol=1e-5, atol=1e-6 * image.max())


@pytest.mark.parametrize("tv", [0.0, 0.01])
def test_flux_is_preserved(tv):
    truth = torch.zeros(64, 64, dtype=torch.float64)
    truth[20:40, 25:35] = 1.0
    truth[15, 48] = 5.0
    operator = grid_operator((64, 64))
    blurred = operator(truth)
    restored = richardson_lucy(blurred, operator, iterations=30, tv=tv)
    assert float(restored.min()) >= 0
    assert float(restored.sum()) == pytest.approx(float(blurred.sum()), rel=5e-3)
    assert float((restored - truth).abs().mean()) < 0.6 * float((blurred - truth).abs().mean())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_dtype_is_kept(dtype, rng):
    image = rng.random((20, 20)).astype(dtype)
    restored = richardson_lucy(image, Convolution(gaussian(5, 1.0)), iterations=3, tv=0.01)
    assert isinstance(restored, np.ndarray) and restored.dtype == dtype
    assert np.all(np.isfinite(restored))


@pytest.mark.parametrize("dtype", [">u2", ">f4", ">f8"])
def test_big_endian_arrays_are_read_like_native_ones(dtype, rng):
    """tifffile returns big-endian TIFFs as big-endian arrays, which torch refuses: they are
    restored as their native twins (a float keeps its dtype, an integer gives float32)."""
    native = (rng.random((20, 20)) * 1000).astype(np.dtype(dtype).newbyteorder("="))
    operator = Convolution(gaussian(5, 1.0))
    expected = richardson_lucy(native, operator, iterations=3)
    restored = richardson_lucy(native.astype(dtype), operator, iterations=3)
    np.testing.assert_array_equal(restored, expected)
    assert restored.dtype == (np.dtype(dtype) if dtype[1] == "f" else np.float32)


def test_torch_in_torch_out_and_integer_images(rng):
    operator = Convolution(gaussian(5, 1.0))
    image64 = torch.rand(20, 20, dtype=torch.float64)
    restored = richardson_lucy(image64, operator, iterations=3)
    assert isinstance(restored, torch.Tensor) and restored.dtype == torch.float64
    counts = rng.integers(0, 1000, size=(20, 20)).astype(np.uint16)
    restored_counts = richardson_lucy(counts, operator, iterations=3)
    assert restored_counts.dtype == np.float32


def test_gradient_flows_through_the_iterations():
    operator = Convolution(gaussian(5, 1.0, dtype=torch.float64))
    image = (torch.rand(16, 16, dtype=torch.float64) + 0.5).requires_grad_()
    restored = richardson_lucy(image, operator, iterations=3, tv=0.01)
    restored.sum().backward()
    assert image.grad is not None and bool(torch.isfinite(image.grad).all())
    # the operator stays usable by autograd afterwards (no inference-mode cache)
    richardson_lucy(image.detach(), operator, iterations=2)
    x = torch.rand(16, 16, dtype=torch.float64, requires_grad=True)
    operator(x).sum().backward()


def test_batch_equals_per_frame(rng):
    operator = grid_operator((32, 36))
    frames = rng.random((2, 3, 32, 36)) * 10
    frames[1, 2] = 0.0  # an empty frame inside a batch stays empty
    batch = richardson_lucy(frames, operator, iterations=8, tv=0.02, tol=1e-3)
    assert batch.shape == frames.shape
    for index in np.ndindex(2, 3):
        single = richardson_lucy(frames[index], operator, iterations=8, tv=0.02, tol=1e-3)
        np.testing.assert_allclose(batch[index], single, rtol=1e-9, atol=1e-12)
    assert np.all(batch[1, 2] == 0)


def test_callback_and_tolerance():
    operator = Convolution(gaussian(7, 1.2, dtype=torch.float64))
    image = torch.rand(24, 24, dtype=torch.float64) + 1.0
    calls = []
    richardson_lucy(image, operator, iterations=6, callback=lambda i, c: calls.append((i, c)))
    assert [i for i, _ in calls] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(c) and c >= 0 for _, c in calls)
    early = []
    richardson_lucy(
        image, operator, iterations=500, tol=1e-3, callback=lambda i, c: early.append(c)
    )
    assert len(early) < 500 and early[-1] < 1e-3


def test_any_operator_with_forward_and_adjoint(rng):
    shape = (10, 12)
    convolution = Convolution(gaussian(5, 1.0, dtype=torch.float64))
    basis = torch.eye(shape[0] * shape[1], dtype=torch.float64).reshape(-1, *shape)
    matrix = convolution(basis).reshape(basis.shape[0], -1).T  # column j = H e_j
    dense = DenseOperator(matrix, shape)
    image = rng.random(shape) + 0.5
    ours = richardson_lucy(image, dense, iterations=10, tv=0.01)
    reference = richardson_lucy(image, convolution, iterations=10, tv=0.01, extend=False)
    np.testing.assert_allclose(ours, reference, rtol=1e-9)


def test_all_zero_image_returns_zeros_without_warnings():
    operator = grid_operator((20, 24))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = richardson_lucy(np.zeros((2, 20, 24)), operator, iterations=5, tv=0.1)
        restored_sd = deconvolve(np.zeros((20, 24)), operator, method="sparse-smooth", iterations=5)
    assert np.all(restored == 0) and np.all(restored_sd == 0)


# ----------------------------------------------------------------- no edge ringing


def test_border_band_error_no_worse_than_inside(rng):
    """Non-circulant scheme: the field is cut out of a larger blurred scene (light enters from
    outside). The border band keeps the interior's accuracy (within 1.5×, measured 1.1–1.3×),
    where a zero boundary rings (> 5×)."""
    scene = smooth_texture(rng, (112, 112))
    operator = Convolution(gaussian(15, 2.0, dtype=torch.float64))
    margin = 24
    blurred = operator(torch.from_numpy(scene)).numpy()[margin:-margin, margin:-margin]
    truth = scene[margin:-margin, margin:-margin]
    noisy = rng.poisson(blurred * 1000) / 1000
    band = np.zeros(truth.shape, dtype=bool)
    band[:7], band[-7:], band[:, :7], band[:, -7:] = True, True, True, True

    def band_and_inside(restored):
        error = (restored - truth) ** 2
        return np.sqrt(error[band].mean()), np.sqrt(error[~band].mean())

    border, inside = band_and_inside(richardson_lucy(noisy, operator, iterations=20))
    assert border <= 1.5 * inside
    zero_border, zero_inside = band_and_inside(
        richardson_lucy(noisy, operator, iterations=20, extend=False)
    )
    assert zero_border > 5 * zero_inside
    assert border < 0.2 * zero_border


# ----------------------------------------------------------------- total variation


def test_tv_reduces_noise_induced_oscillation(rng):
    truth = np.full((48, 48), 0.2)
    truth[12:36, 12:36] = 1.0
    operator = Convolution(gaussian(9, 1.5, dtype=torch.float64))
    blurred = operator(torch.from_numpy(truth)).numpy()
    noisy = rng.poisson(blurred * 200) / 200
    plain = richardson_lucy(noisy, operator, iterations=40)
    regularised = richardson_lucy(noisy, operator, iterations=40, tv=0.02)
    flat = np.zeros_like(truth, dtype=bool)
    flat[18:30, 18:30] = True  # inside the square: any oscillation is noise
    assert regularised[flat].std() < 0.7 * plain[flat].std()
    tv_plain = float(total_variation(torch.from_numpy(plain)))
    tv_regularised = float(total_variation(torch.from_numpy(regularised)))
    assert tv_regularised < 0.7 * tv_plain
    assert snr(truth, regularised) > snr(truth, plain)


def test_tv_is_stable_at_the_edge_of_the_extended_domain(rng):
    """Where H*1 -> 0 (outer band of the extended domain) the TV term stays in proportion to
    the data term: float32 and float64 runs agree (an unscaled λ div term made that band
    oscillate, 6e-3 apart on this image)."""
    image = rng.random((3, 40, 48))
    operator = Convolution(gaussian(9, 1.3, dtype=torch.float64))
    single = richardson_lucy(image.astype(np.float32), operator, iterations=5, tv=0.02)
    double = richardson_lucy(image, operator, iterations=5, tv=0.02)
    assert np.abs(single - double).max() < 1e-3


# ----------------------------------------------------------------- the verb


def test_deconvolve_dispatches(rng):
    image = rng.random((24, 24)) + 0.1
    psf = gaussian(7, 1.2, dtype=torch.float64)
    rl = deconvolve(image, Convolution(psf), method="rl", iterations=5)
    np.testing.assert_allclose(rl, richardson_lucy(image, Convolution(psf), iterations=5))
    rl_tv = deconvolve(image, psf.numpy(), method="rl-tv", iterations=5)  # a PSF array
    np.testing.assert_allclose(
        rl_tv, richardson_lucy(image, Convolution(psf), iterations=5, tv=DEFAULT_TV)
    )
    grid = psf.expand(2, 2, 7, 7).numpy()
    np.testing.assert_allclose(deconvolve(image, grid, method="rl", iterations=5), rl, rtol=1e-9)
    with pytest.raises(ValueError, match="method"):
        deconvolve(image, psf, method="wiener")
    with pytest.raises(ValueError, match="tv"):
        deconvolve(image, psf, method="rl", tv=0.1)


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"iterations": 0}, "iterations"),
        ({"iterations": 2.5}, "iterations"),
        ({"tv": float("nan")}, "tv"),
        ({"tv": float("inf")}, "tv"),
        ({"tv": -0.1}, "tv"),
        ({"tv": "0.1"}, "tv must be a number"),
        ({"tv": True}, "tv must be a number"),
        ({"background": -1.0}, "background"),
        ({"background": np.ones((3, 3))}, "background"),
        ({"background": 1.0}, "at or above every pixel"),  # the image is all ones
        ({"tol": float("nan")}, "tol"),
        ({"intensity_scale": -1.0}, "intensity_scale"),
    ],
)
def test_bad_arguments(kwargs, match):
    image = np.ones((16, 16))
    with pytest.raises((ValueError, TypeError), match=match):
        richardson_lucy(image, Convolution(gaussian(5, 1.0)), **kwargs)


def test_bad_images_and_operators():
    operator = Convolution(gaussian(5, 1.0))
    negative = np.ones((16, 16))
    negative[3, 4] = -1
    with pytest.raises(ValueError, match="negative"):
        richardson_lucy(negative, operator)
    with_nan = np.ones((16, 16))
    with_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        richardson_lucy(with_nan, operator)
    with pytest.raises(ValueError, match="shape"):
        richardson_lucy(np.ones(16), operator)
    with pytest.raises(ValueError, match="larger than the image"):
        richardson_lucy(np.ones((16, 16)), Convolution(gaussian(21, 3.0)))
    with pytest.raises(ValueError, match=r"acts on images of shape \(32, 36\)"):
        richardson_lucy(np.ones((30, 30)), grid_operator((32, 36)))
    with pytest.raises(TypeError, match="forward"):
        richardson_lucy(np.ones((16, 16)), "gaussian")
    # a dark frame of a stack, at the background level everywhere, stays zero: no error
    stack = np.stack([np.full((16, 16), 3.0), 3.0 + np.eye(16)])
    restored = richardson_lucy(stack, operator, iterations=2, background=3.0)
    assert np.all(restored[0] == 0) and restored[1].max() > 0
    # the verb takes a PSF map as it takes a PSF grid; one made for another size is refused
    psf_map = PSFMap("gaussian1", np.full((2, 2, 1), 1.2), (40, 40))
    image = np.ones((40, 40), dtype=np.float32)
    np.testing.assert_array_equal(deconvolve(image, psf_map, iterations=2),
                                  deconvolve(image, psf_map.operator(), iterations=2))
    # a float64 image gets float64 PSFs, as with the map's float64 operator
    np.testing.assert_array_equal(
        deconvolve(image.astype(np.float64), psf_map, iterations=2),
        deconvolve(image.astype(np.float64), psf_map.operator(dtype=torch.float64),
                   iterations=2))
    with pytest.raises(ValueError, match="operator covers an image of"):
        deconvolve(np.ones((40, 48)), psf_map)
    # the verb takes a PSF array and checks it before normalising it to unit sum
    with pytest.raises(ValueError, match="operator has negative values"):
        deconvolve(np.ones((16, 16)), -gaussian(5, 1.0).numpy())
    with pytest.raises(ValueError, match="operator is all zero"):
        deconvolve(np.ones((16, 16)), np.zeros((5, 5)))


# ----------------------------------------------------------------- real data (issue 3 §4)


@pytest.mark.slow
def test_rl_tv_on_real_data_with_a_zernike_psf_grid(shared_data):
    """Real confocal neuron, 4×4 grid of Zernike PSFs with defocus growing across the field,
    Poisson–Gaussian noise: RL-TV with the true operator gains >= 2 dB and beats RL-TV with
    the single centre PSF by >= 1 dB."""
    import tifffile

    stack = tifffile.imread(shared_data / "sharp" / "confocal_neuron_zstack.tif")
    crop = stack[25, 160:256, 96:192].astype(np.float64)  # the most textured 96² window
    truth = (crop - crop.min()) / (crop.max() - crop.min())
    grid, size = 4, 21
    defocus = [0.6 * (r + c) / (2 * grid - 2) for r in range(grid) for c in range(grid)]
    coefficients = torch.zeros(grid * grid, 4, dtype=torch.float64)
    coefficients[:, 3] = torch.tensor(defocus, dtype=torch.float64)  # Noll j = 4 (waves RMS)
    psfs = zernike(size, coefficients, na=1.0, wavelength=0.5, pixel_size=0.1)
    operator = from_psf_grid(psfs.reshape(grid, grid, size, size), truth.shape)
    blurred = operator(torch.from_numpy(truth)).numpy()
    noise = np.random.default_rng(7)
    peak, read_noise = 1000.0, 2.0
    noisy = (noise.poisson(blurred * peak) + noise.normal(0, read_noise, truth.shape)) / peak
    noisy = np.clip(noisy, 0, None)

    centre = Convolution(operator.psf_at(truth.shape[0] // 2, truth.shape[1] // 2))
    with_true = richardson_lucy(noisy, operator, iterations=60, tv=0.01)
    with_centre = richardson_lucy(noisy, centre, iterations=60, tv=0.01)
    gain = snr(truth, with_true) - snr(truth, noisy)
    advantage = snr(truth, with_true) - snr(truth, with_centre)
    assert gain >= 2.0, f"RL-TV gained only {gain:.2f} dB"
    assert advantage >= 1.0, f"true operator beats centre PSF by only {advantage:.2f} dB"


def test_intensity_scale_defaults_to_the_frame_maximum_and_the_start_level_is_irrelevant(rng):
    image = smooth_texture(rng, (40, 48))
    operator = grid_operator((40, 48))
    default = richardson_lucy(image, operator, iterations=5, tv=0.01)
    explicit = richardson_lucy(image, operator, iterations=5, tv=0.01,
                               intensity_scale=float(image.max()))
    np.testing.assert_array_equal(explicit, default)
    assert np.abs(richardson_lucy(image, operator, iterations=5, tv=0.01,
                                  intensity_scale=100 * float(image.max())) - default).max() > 1e-4
    # x1 = x0 H*(y / H x0) / H*1 is the same for every constant x0: a tile needs no start
    # level from the whole image
    brighter = richardson_lucy(2 * image, operator, iterations=1) / 2
    np.testing.assert_allclose(brighter, richardson_lucy(image, operator, iterations=1),
                               rtol=1e-12)


def test_big_endian_arrays_through_the_other_verbs():
    """The blind verb, the simulation and Deep-Blur read a big-endian image like its native
    twin (the shared reading, ``as_tensor``)."""
    import psfmap
    from psfmap.deepblur import deblur as deep_deblur
    from psfmap.simulate import cells

    native = (cells((96, 96), n_cells=5, seed=0) * 100).astype(np.float32)
    swapped = native.astype(">f4")
    np.testing.assert_array_equal(psfmap.deblur(swapped, model="gaussian1", iterations=2),
                                  psfmap.deblur(native, model="gaussian1", iterations=2))
    np.testing.assert_array_equal(
        psfmap.simulate(swapped, model="gaussian1", seed=1).blurred,
        psfmap.simulate(native, model="gaussian1", seed=1).blurred)
    np.testing.assert_array_equal(deep_deblur(swapped, "zernike7"), deep_deblur(native, "zernike7"))
