"""Blind verbs psfmap.estimate / psfmap.deblur (estimate the PSF map, then RL-TV)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import psfmap
from psfmap.blind.verbs import BlindResult, deblur, estimate
from psfmap.operators.psf_map import PSFMap
from psfmap.restore import richardson_lucy

TRUE_WIDTH = 1.6


class OracleEstimator:
    """Stand-in estimator that knows the blur: Gaussian width TRUE_WIDTH everywhere, valid
    where the patch has texture (the network's job is tested with the shipped weights)."""

    def __init__(self):
        self.family = psfmap.psf.model("gaussian1", size=11)
        self.patch_size = 16

    def predict(self, patches):
        tensor = torch.as_tensor(patches, dtype=torch.float64)
        validity = (tensor.flatten(1).std(dim=1) > 1e-6).to(torch.float64)
        return torch.full((tensor.shape[0], 1), TRUE_WIDTH, dtype=torch.float64), validity


@pytest.fixture
def blurred_pair():
    sharp = psfmap.simulate.samples.bundled_sample("neuron")[96:160, 96:160]
    sharp = (sharp / sharp.max()).astype(np.float32)
    operator = psfmap.Convolution(psfmap.psf.gaussian(11, TRUE_WIDTH, dtype=torch.float64))
    blurred = operator(torch.from_numpy(sharp.astype(np.float64))).numpy().astype(np.float32)
    return sharp, np.clip(blurred, 0, None)


def test_deblur_improves_snr_and_keeps_numpy_float32(blurred_pair):
    sharp, blurred = blurred_pair
    restored = deblur(blurred, OracleEstimator(), iterations=20)
    assert isinstance(restored, np.ndarray)
    assert restored.dtype == np.float32 and restored.shape == blurred.shape
    before = psfmap.metrics.snr(sharp, blurred)
    after = psfmap.metrics.snr(sharp, restored)
    assert after > before + 0.5


def test_deblur_torch_in_torch_out_and_result_object(blurred_pair):
    _, blurred = blurred_pair
    image = torch.from_numpy(blurred).double()
    result = deblur(image, OracleEstimator(), iterations=3, tv=0.0, return_map=True)
    assert isinstance(result, BlindResult)
    assert isinstance(result.restored, torch.Tensor) and result.restored.dtype == torch.float64
    assert isinstance(result.psf_map, PSFMap)
    np.testing.assert_allclose(result.psf_map.params, TRUE_WIDTH)
    # a given map is used as is
    again = deblur(image, OracleEstimator(), iterations=3, tv=0.0, psf_map=result.psf_map)
    torch.testing.assert_close(again, result.restored)


def test_estimate_returns_a_psf_map(blurred_pair):
    _, blurred = blurred_pair
    psf_map = estimate(blurred, OracleEstimator(), window=16, stride=16, median=0)
    assert psf_map.grid == (4, 4)
    assert psf_map.image_shape == blurred.shape


def test_deblur_bad_input_is_a_clear_error(blurred_pair):
    _, blurred = blurred_pair
    with pytest.raises(ValueError, match="negative"):
        deblur(blurred - 1.0, OracleEstimator())
    with pytest.raises(ValueError, match="iterations"):
        deblur(blurred, OracleEstimator(), iterations=0)
    with pytest.raises(TypeError, match="model must be"):
        deblur(blurred, model=3)
    with pytest.raises(ValueError, match="no texture"):
        deblur(np.ones((32, 32)), OracleEstimator())


def test_deblur_with_the_shipped_zernike3_model():
    from psfmap.blind.estimator import pretrained_names

    if "zernike3" not in pretrained_names():
        pytest.skip("shipped zernike3 weights not present")
    sharp = psfmap.simulate.samples.bundled_sample("neuron")[64:192, 64:192]
    family = psfmap.psf.model("zernike3")
    psf = family(torch.tensor([[0.25, 0.05, 0.5]], dtype=torch.float64))[0]
    blurred = psfmap.Convolution(psf)(torch.from_numpy(sharp)).numpy().clip(0, None)
    result = deblur(blurred, "zernike3", iterations=10, return_map=True)
    assert result.psf_map.family.name == "zernike3"
    assert psfmap.metrics.snr(sharp, result.restored) > psfmap.metrics.snr(sharp, blurred)


def test_stack_is_deblurred_frame_by_frame(blurred_pair):
    _, blurred = blurred_pair
    stack = np.stack([blurred, 0.5 * blurred[::-1], blurred.T, 2.0 * blurred]).reshape(
        2, 2, *blurred.shape
    )
    result = deblur(stack, OracleEstimator(), iterations=3, return_map=True)
    assert result.restored.shape == stack.shape and result.restored.dtype == np.float32
    assert isinstance(result.psf_map, list) and len(result.psf_map) == 4
    # each frame exactly as if deblurred alone (C order of the leading axes)
    for index, frame in enumerate(stack.reshape(4, *blurred.shape)):
        alone = deblur(frame, OracleEstimator(), iterations=3)
        np.testing.assert_array_equal(result.restored.reshape(4, *blurred.shape)[index], alone)
    # one map for every frame, or one per frame; torch in, torch out
    tensor = torch.from_numpy(stack)
    shared = deblur(tensor, iterations=3, psf_map=result.psf_map[0])
    per_frame = deblur(tensor, iterations=3, psf_map=result.psf_map)
    assert isinstance(shared, torch.Tensor) and shared.shape == stack.shape
    torch.testing.assert_close(per_frame, torch.from_numpy(result.restored))
    done = []
    maps = estimate(stack, OracleEstimator(), window=16, stride=16, median=0,
                    callback=done.append)
    assert len(maps) == 4 and all(m.grid == (4, 4) for m in maps) and done == [0, 1, 2, 3]


def test_stack_bad_input_names_the_frame(blurred_pair):
    _, blurred = blurred_pair
    stack = np.stack([blurred, np.full_like(blurred, 0.3), blurred])
    with pytest.raises(ValueError, match="frame 1 of 3: .*no texture"):
        deblur(stack, OracleEstimator())
    with pytest.raises(ValueError, match="frame 1 of 3: .*no texture"):
        estimate(stack, OracleEstimator())
    one = estimate(blurred, OracleEstimator())
    with pytest.raises(ValueError, match="2 maps for a stack of 3 frames"):
        deblur(stack, psf_map=[one, one])
    with pytest.raises(TypeError, match=r"psf_map\[1\] must be a PSFMap"):
        deblur(stack, psf_map=[one, "map", one])
    with pytest.raises(ValueError, match="empty"):
        deblur(np.zeros((0, 64, 64), dtype=np.float32), OracleEstimator())
    with pytest.raises(ValueError, match="2-D array"):
        estimate(np.ones(64), OracleEstimator())
    # a map made for another image size would be stretched over the wrong field
    with pytest.raises(ValueError, match=r"^psf_map covers an image of \(64, 64\)"):
        deblur(blurred[:48, :48], psf_map=one)
    with pytest.raises(ValueError, match=r"^psf_map covers"):  # one map for all the frames
        deblur(stack[:, :48, :48], psf_map=one)
    with pytest.raises(ValueError, match=r"^psf_map\[1\] covers"):
        deblur(stack[:2, :48, :48], psf_map=[PSFMap(one.family, one.params, (48, 48)), one])


def test_deblur_reads_a_saved_map_file(blurred_pair, tmp_path):
    from psfmap.operators.psf_map import save_psf_maps

    _, blurred = blurred_pair
    one = estimate(blurred, OracleEstimator())
    path = one.save(tmp_path / "map.psfmap")
    from_file = deblur(blurred, iterations=2, psf_map=str(path))
    np.testing.assert_array_equal(from_file, deblur(blurred, iterations=2, psf_map=one))
    stack = np.stack([blurred, blurred[::-1]])
    maps = estimate(stack, OracleEstimator())
    stack_file = save_psf_maps(tmp_path / "maps.psfmap", maps)
    np.testing.assert_array_equal(deblur(stack, iterations=2, psf_map=stack_file),
                                  deblur(stack, iterations=2, psf_map=maps))


def _shipped(name: str):
    from psfmap.blind.estimator import pretrained_names

    if name not in pretrained_names():
        pytest.skip(f"shipped {name} weights not present")
    return name


def test_shipped_gaussian1_tracks_the_blur_of_each_frame():
    """Recovery of known per-frame blur: three frames of one real image, blurred by
    Gaussians of width 1, 2 and 3 px; the map of each frame reads its own width."""
    model = _shipped("gaussian1")
    sharp = psfmap.simulate.samples.bundled_sample("neuron")[64:192, 64:192].astype(np.float64)
    widths = (1.0, 2.0, 3.0)
    stack = np.stack([
        psfmap.Convolution(psfmap.psf.gaussian(25, w, dtype=torch.float64))(
            torch.from_numpy(sharp)).numpy().clip(0, None)
        for w in widths
    ])
    maps = estimate(stack, model)
    read = [float(np.median(m.params[..., 0][m.validity >= 0.5])) for m in maps]
    np.testing.assert_allclose(read, widths, atol=0.5)
    assert read[0] < read[1] < read[2]


def test_shipped_gaussian1_finds_the_focal_plane_of_a_real_zstack(shared_data):
    """Real widefield DAPI z-stack (40 planes, 0.3 µm apart): the blind width of each plane
    is smallest around the focal plane and grows by more than a pixel away from it."""
    from psfmap.io import read_image

    model = _shipped("gaussian1")
    path = shared_data / "blurred" / "widefield_dapi_zstack.tif"
    if not path.is_file():
        pytest.skip(f"{path.name} not found")
    stack, _ = read_image(path)
    maps = estimate(np.asarray(stack, dtype=np.float32), model)
    widths = np.array([np.median(m.params[..., 0][m.validity >= 0.5]) for m in maps])
    sharpest = int(np.argmax([np.abs(np.diff(plane.astype(float), axis=1)).mean()
                              for plane in stack]))
    focus = int(np.argmin(widths))
    assert abs(focus - sharpest) <= 3
    assert widths[:5].min() > widths[focus] + 1.0
    assert widths[-5:].min() > widths[focus] + 1.0


@pytest.mark.slow
def test_real_blurred_fluorescence_is_sharpened_and_keeps_its_flux(shared_data):
    """Real blurred fluorescence (rdmpy demo measurement, no ground truth), a 256² crop of
    the cells: the blind restoration keeps the flux and raises the band-pass energy at the
    blur's scale (LoG, σ 2 px) by more than a fifth."""
    from scipy import ndimage

    from psfmap.io import read_image

    path = shared_data / "blurred" / "rdmpy_measurement.png"
    if not path.is_file():
        pytest.skip(f"{path.name} not found")
    image, _ = read_image(path)
    crop = np.asarray(image[250:506, 250:506], dtype=np.float32)
    result = deblur(crop, _shipped("gaussian1"), return_map=True)
    restored, psf_map = result.restored, result.psf_map
    assert restored.shape == crop.shape and restored.dtype == np.float32
    assert np.isfinite(restored).all()
    assert restored.sum() == pytest.approx(crop.sum(), rel=0.02)
    band = [np.abs(ndimage.gaussian_laplace(a.astype(float), 2.0)).mean() for a in (crop, restored)]
    assert band[1] > 1.2 * band[0]
    widths = psf_map.params[..., 0][psf_map.validity >= 0.5]
    assert len(widths) > 0.5 * psf_map.validity.size
    assert 0.5 <= widths.min() and widths.max() <= 4.0


def test_compressed_operator_gives_nearly_the_same_restoration(blurred_pair):
    _, blurred = blurred_pair
    widths = np.linspace(1.0, 2.2, 16).reshape(4, 4, 1)        # varies over the field
    psf_map = PSFMap(psfmap.psf.model("gaussian1", size=11), widths, blurred.shape)
    full = deblur(blurred, iterations=5, psf_map=psf_map, energy=None)
    # by default compressed to 99.9 % where that is predicted faster, within its accuracy
    default = deblur(blurred, iterations=5, psf_map=psf_map)
    assert np.linalg.norm(default - full) / np.linalg.norm(full) < 0.032
    every = deblur(blurred, iterations=5, psf_map=psf_map, energy=1.0)
    np.testing.assert_allclose(every, full, rtol=1e-3, atol=1e-4)
    with pytest.warns(DeprecationWarning, match="use energy="):
        old = deblur(blurred, iterations=5, psf_map=psf_map, compress=1.0)
    np.testing.assert_array_equal(old, every)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="energy must be"):
            deblur(blurred, iterations=5, psf_map=psf_map, energy=bad)


@pytest.mark.slow
def test_tiled_deblur_equals_one_piece_for_plain_rl():
    # plain RL with 64 px of context: what lies further away reaches a pixel only through
    # many iterations, attenuated far below the float32 PSFs' precision
    sharp = psfmap.simulate.samples.bundled_sample("neuron")[:192, :160].astype(np.float64)
    widths = np.array([[[1.0], [2.0]], [[1.5], [2.5]]])
    psf_map = PSFMap(psfmap.psf.model("gaussian1", size=11), widths, image_shape=(192, 160))
    blurred = psf_map.operator(dtype=torch.float64)(torch.from_numpy(sharp)).numpy()
    blurred = np.clip(blurred, 0, None)
    whole = deblur(blurred, psf_map=psf_map, energy=None, iterations=10, tv=0.0)
    tiled = deblur(blurred, psf_map=psf_map, energy=None, iterations=10, tv=0.0, tile=64,
                   overlap=64)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5 * whole.max())
    # without context the seams show; with RL-TV the tiles stay within the solver's own
    # sensitivity (benchmarks/RESULTS.md: a 1e-4 change of the start moves it as much)
    seams = deblur(blurred, psf_map=psf_map, energy=None, iterations=10, tv=0.0, tile=64, overlap=0)
    assert np.abs(seams - whole).max() > 1e-3 * whole.max()
    whole_tv = deblur(blurred, psf_map=psf_map, energy=None, iterations=10)
    tiled_tv = deblur(blurred, psf_map=psf_map, energy=None, iterations=10, tile=64)
    assert np.linalg.norm(tiled_tv - whole_tv) < 1e-3 * np.linalg.norm(whole_tv)
    for bad in ({"tile": 0}, {"tile": 16}, {"tile": 1.5}, {"overlap": -1}):
        with pytest.raises((ValueError, TypeError), match="tile|overlap"):
            deblur(blurred, psf_map=psf_map, **bad)
    # NumPy integers are integers
    np.testing.assert_array_equal(
        deblur(blurred, psf_map=psf_map, iterations=np.int64(2), tile=np.int64(64)),
        deblur(blurred, psf_map=psf_map, iterations=2, tile=64))
    wide = PSFMap(psfmap.psf.model("gaussian1", size=33), widths, image_shape=(192, 160))
    with pytest.raises(ValueError, match="spans 32 px, less than the PSF"):
        deblur(blurred, psf_map=wide, tile=32, overlap=0)


class LazyArray:
    """An array-like that is not a NumPy array (the protocol dask, xarray and zarr speak)."""

    def __init__(self, array):
        self.array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __array__(self, dtype=None, copy=None):
        return self.array if dtype is None else self.array.astype(dtype)


def test_array_likes_are_read_like_numpy(blurred_pair):
    _, blurred = blurred_pair
    lazy = LazyArray(blurred)
    psf_map = estimate(lazy, OracleEstimator(), window=16, stride=16, median=0)
    np.testing.assert_array_equal(psf_map.params, estimate(blurred, OracleEstimator(), window=16,
                                                           stride=16, median=0).params)
    restored = deblur(lazy, psf_map=psf_map, iterations=3)
    assert isinstance(restored, np.ndarray) and restored.dtype == np.float32
    np.testing.assert_array_equal(restored, deblur(blurred, psf_map=psf_map, iterations=3))
    with pytest.raises(TypeError, match="numeric"):
        deblur(LazyArray(np.array([["a", "b"]])), psf_map=psf_map)


def test_deblur_computes_in_float64_for_a_float64_image():
    sharp = psfmap.simulate.samples.bundled_sample("neuron")[:96, :96].astype(np.float64)
    psf_map = PSFMap(psfmap.psf.model("gaussian1", size=11),
                     np.array([[[1.0], [2.0]], [[1.5], [2.5]]]), image_shape=(96, 96))
    operator = psf_map.operator(dtype=torch.float64)
    blurred = operator(torch.from_numpy(sharp)).numpy().clip(0, None)
    restored = deblur(blurred, psf_map=psf_map, iterations=5, tv=0.0, energy=None)
    expected = richardson_lucy(blurred, operator, iterations=5)
    assert restored.dtype == np.float64
    np.testing.assert_allclose(restored, expected, rtol=1e-9, atol=1e-12 * blurred.max())


def test_a_grid_is_a_pair_or_one_integer_never_a_truncated_float(blurred_pair):
    _, blurred = blurred_pair
    assert estimate(blurred, OracleEstimator(), grid=3).grid == (3, 3)
    for bad in ((2.5, 3), (0, 2), "3x3"):
        with pytest.raises(ValueError, match="grid must be"):
            estimate(blurred, OracleEstimator(), grid=bad)


@pytest.mark.slow
def test_compressed_deblur_of_the_real_fly_wing_stays_within_its_accuracy(shared_data):
    """Without the floor of H x, RL with the fly wing's rank-3 compression reached 1e6."""
    from psfmap.io import read_image

    image = np.asarray(read_image(shared_data / "blurred" / "fly_wing_tilted.png")[0],
                       dtype=np.float32)
    psf_map = estimate(image, model="gaussian1")
    exact = deblur(image, psf_map=psf_map, energy=None)
    compressed = deblur(image, psf_map=psf_map)
    assert compressed.max() < 1.1 * exact.max()
    difference = np.linalg.norm((compressed - exact).astype(np.float64))
    assert difference / np.linalg.norm(exact.astype(np.float64)) < 0.032

