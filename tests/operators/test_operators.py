"""Product-convolution operators: brute force, compression, extension, files, errors.

Adjointness, linearity, dtypes, batches, file round trips and the exact special cases (one PSF
everywhere, a point at a cell centre) of every operator kind are in test_contract.py."""

import json
import zipfile

import numpy as np
import pytest
import torch

from psfmap._container import FORMAT_VERSION
from psfmap.operators import Convolution, ProductConvolution, from_psf_grid, hat_profiles, load
from psfmap.operators.compression import compress
from psfmap.psf import gaussian


def _random_operator(dtype, engine="fourier", seed=0, shape=(37, 29), n=3, kernel=(7, 9)):
    g = torch.Generator().manual_seed(seed)
    kernels = torch.rand((n,) + kernel, generator=g, dtype=dtype)
    weights = torch.rand((n,) + shape, generator=g, dtype=dtype)
    return ProductConvolution(kernels, weights, engine=engine)


def _grid_operator(dtype=torch.float32, grid=(4, 4), shape=(128, 128), size=15):
    psfs = torch.stack([
        torch.stack([gaussian(size, 0.8 + 0.5 * r + 0.3 * c, angle=0.2 * c, dtype=dtype)
                     for c in range(grid[1])])
        for r in range(grid[0])
    ])
    return psfs, from_psf_grid(psfs, shape)


def _adjoint_gap(op, shape, dtype, batch=(2,)):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch + shape, generator=g, dtype=dtype)
    y = torch.randn(batch + shape, generator=g, dtype=dtype)
    lhs = float((op.forward(x) * y).sum())
    rhs = float((x * op.adjoint(y)).sum())
    return abs(lhs - rhs) / abs(lhs)


def test_grid_weights_are_a_partition_of_unity():
    profiles = hat_profiles(5, 103)
    np.testing.assert_allclose(profiles.sum(0), 1.0)
    assert (profiles >= 0).all()
    _, op = _grid_operator(torch.float64, grid=(3, 5), shape=(90, 110))
    np.testing.assert_allclose(op.weights.sum(0).numpy(), 1.0, atol=1e-12)
    # at most four cells touch any pixel
    assert int((op.weights > 0).sum(0).max()) <= 4


def test_matches_brute_force_space_variant_convolution():
    g = torch.Generator().manual_seed(5)
    height, width, kh, kw = 12, 10, 5, 3
    op = ProductConvolution(torch.rand(2, kh, kw, generator=g, dtype=torch.float64),
                            torch.rand(2, height, width, generator=g, dtype=torch.float64))
    x = torch.rand(height, width, generator=g, dtype=torch.float64)
    expected = torch.zeros(height, width, dtype=torch.float64)
    for qy in range(height):  # every source pixel spreads its own local PSF
        for qx in range(width):
            local = op.psf_at(qy, qx)
            for dy in range(kh):
                for dx in range(kw):
                    py, px = qy + dy - kh // 2, qx + dx - kw // 2
                    if 0 <= py < height and 0 <= px < width:
                        expected[py, px] += x[qy, qx] * local[dy, dx]
    torch.testing.assert_close(op.forward(x), expected, rtol=0, atol=1e-12)
    tiled = op.with_engine("tiled")
    torch.testing.assert_close(tiled.forward(x), expected, rtol=0, atol=1e-12)


def test_compressing_an_exact_rank_r_field_is_exact():
    g = torch.Generator().manual_seed(2)
    eigen = torch.rand(3, 9, 9, generator=g, dtype=torch.float64)
    maps = torch.rand(3, 40, 40, generator=g, dtype=torch.float64)
    mixing = torch.rand(8, 3, generator=g, dtype=torch.float64)
    # 8 kernels that are combinations of 3: a rank-3 PSF field written with 8 terms
    kernels = torch.einsum("ki,ihw->khw", mixing, eigen)
    weights = torch.einsum("ki,ihw->khw", torch.linalg.pinv(mixing).T, maps)
    op = ProductConvolution(kernels, weights)
    compressed = op.compress(rank=3)
    assert compressed.n_kernels == 3
    assert compressed.compression_error < 1e-7
    x = torch.rand(2, 40, 40, generator=g, dtype=torch.float64)
    torch.testing.assert_close(compressed.forward(x), op.forward(x), rtol=0, atol=1e-9)
    torch.testing.assert_close(compressed.adjoint(x), op.adjoint(x), rtol=0, atol=1e-9)


def test_compress_by_energy_reports_error():
    _, op = _grid_operator(torch.float64)
    compressed = op.compress(energy=0.999)
    assert compressed.n_kernels < op.n_kernels
    assert 0 < compressed.compression_error <= np.sqrt(1 - 0.999) + 1e-9
    x = torch.rand(128, 128, dtype=torch.float64)
    relative = float((compressed.forward(x) - op.forward(x)).norm() / op.forward(x).norm())
    assert relative < 3 * compressed.compression_error
    one = op.compress(rank=1)
    assert one.n_kernels == 1 and one.compression_error > compressed.compression_error


def test_extended_operator_replicates_edge_weights():
    _, op = _grid_operator(torch.float64, grid=(2, 2), shape=(40, 40), size=7)
    wide = op.extended(5)
    assert wide.image_shape == (50, 50)
    torch.testing.assert_close(wide.weights[:, 5:45, 5:45], op.weights)
    torch.testing.assert_close(wide.weights[:, 0, 5:45], op.weights[:, 0])
    conv = Convolution(gaussian(7, 1.0))
    assert conv.extended(5) is conv


def test_gradients_flow_to_image_and_kernels():
    kernels = torch.rand(2, 5, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(2, 20, 20, dtype=torch.float64)
    op = ProductConvolution(kernels, weights)
    op.kernels = kernels  # keep the graph to the leaf
    x = torch.rand(20, 20, dtype=torch.float64, requires_grad=True)
    op.forward(x).square().sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert kernels.grad is not None and float(kernels.grad.abs().sum()) > 0


def test_norm_squared_of_normalised_blur_is_at_most_one():
    op = Convolution(gaussian(9, 1.5))
    value = op.norm_squared(shape=(64, 64), iterations=50)
    assert 0.9 < value <= 1.0 + 1e-4


def test_compressed_operator_round_trip_keeps_error(tmp_path):
    op = _grid_operator()[1].compress(rank=3)
    loaded = ProductConvolution.load(op.save(tmp_path / "c.psfmap"))
    assert loaded.compression_error == pytest.approx(op.compression_error)
    assert loaded.n_kernels == 3


def test_load_rejects_newer_format_and_corrupted_files(tmp_path):
    op = Convolution(gaussian(5, 1.0))
    path = op.save(tmp_path / "op.psfmap")
    with zipfile.ZipFile(path) as archive:
        header = json.loads(np.frombuffer(archive.read("__header__.npy")[128:], np.uint8)
                            .tobytes().decode())
    assert header["version"] == FORMAT_VERSION
    # rewrite the header with a newer version
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    header["version"] = FORMAT_VERSION + 1
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    newer = tmp_path / "newer.psfmap"
    with open(newer, "wb") as handle:  # a file object: np.savez would append .npz to a path
        np.savez(handle, **arrays)
    with pytest.raises(ValueError, match="newer than the version"):
        load(newer)
    for crafted in ({**header, "version": "2.0"}, [header], {**header, "metadata": "x"}):
        arrays["__header__"] = np.frombuffer(json.dumps(crafted).encode(), np.uint8)
        with open(tmp_path / "crafted.psfmap", "wb") as handle:
            np.savez(handle, **arrays)
        with pytest.raises(ValueError, match="has a corrupted psfmap"):
            load(tmp_path / "crafted.psfmap")
    corrupted = tmp_path / "corrupted.psfmap"
    corrupted.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="not a readable psfmap file"):
        load(corrupted)
    text = tmp_path / "notes.psfmap"
    text.write_text("not an archive")
    with pytest.raises(ValueError, match=r"not a NumPy \.npz archive") as error:
        load(text)
    assert "pickle" not in str(error.value)
    with pytest.raises(ValueError, match="does not exist"):
        load(tmp_path / "missing.psfmap")
    with pytest.raises(ValueError, match="expected 'product_convolution'"):
        ProductConvolution.load(path)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ProductConvolution(torch.rand(2, 5, 5), torch.rand(3, 10, 10)), "same number"),
        (lambda: ProductConvolution(torch.rand(5, 5), torch.rand(1, 10, 10)), r"\(I, h, w\)"),
        (lambda: ProductConvolution(torch.rand(1, 5, 5), torch.rand(10, 10)), r"\(I, H, W\)"),
        (lambda: ProductConvolution(torch.full((1, 5, 5), float("nan")), torch.rand(1, 9, 9)),
         "kernels contains NaN"),
        (lambda: ProductConvolution(torch.rand(1, 5, 5), torch.full((1, 9, 9), float("inf"))),
         "weights contains NaN"),
        (lambda: ProductConvolution(torch.rand(0, 5, 5), torch.rand(0, 9, 9)), "at least one"),
        (lambda: ProductConvolution(torch.rand(1, 5, 5), torch.rand(1, 9, 9)).forward(
            torch.rand(8, 9)), "image shape"),
        (lambda: ProductConvolution(torch.rand(1, 5, 5), torch.rand(1, 9, 9)).psf_at(9, 0),
         "outside"),
        (lambda: Convolution(-torch.rand(5, 5)), "negative"),
        (lambda: Convolution(torch.zeros(5, 5)), "all zero"),
        (lambda: Convolution(torch.rand(2, 2, 5, 5)), r"\(h, w\)"),  # (d, h, w) is a volume
        (lambda: from_psf_grid(torch.rand(2, 2, 5, 5), (1, 10)), "at least"),
        (lambda: from_psf_grid(torch.rand(2, 5, 5), (10, 10)), r"\(gy, gx, h, w\)"),
        (lambda: from_psf_grid(torch.rand(2, 2, 5, 5), (10,)), "image_shape"),
        (lambda: from_psf_grid(torch.rand(2, 2, 5, 5), "64x64"), "image_shape"),
        (lambda: ProductConvolution(torch.rand(1, 33, 33), torch.rand(1, 16, 16)),
         "more than twice the image 16x16"),
        (lambda: from_psf_grid(-torch.rand(2, 2, 5, 5), (10, 10)), "negative"),
        (lambda: Convolution(torch.rand(5, 5)).forward("image"), "NumPy array or torch tensor"),
        (lambda: _grid_operator()[1].compress(rank=0), "rank"),
        (lambda: _grid_operator()[1].compress(energy=1.5), "energy"),
        (lambda: compress("operator"), "ProductConvolution"),
        (lambda: _grid_operator()[1].adjoint(torch.rand(128, 128, dtype=torch.complex64)), "real"),
    ],
)
def test_bad_input_raises_clear_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


@pytest.mark.parametrize("engine", ["fourier", "tiled"])
def test_extended_dense_operator_equals_explicitly_padded_weights(engine):
    op = _random_operator(torch.float64, seed=4)
    wide = op.extended(4).extended(2)  # margins accumulate without copying the weights
    assert wide.image_shape == (op.image_shape[0] + 12, op.image_shape[1] + 12)
    padded = torch.nn.functional.pad(op.weights[None], (6,) * 4, mode="replicate")[0]
    explicit = ProductConvolution(op.kernels, padded, engine=engine)
    torch.testing.assert_close(wide.weights, padded)
    wide = wide.with_engine(engine)
    x = torch.rand(2, *wide.image_shape, dtype=torch.float64)
    torch.testing.assert_close(wide.forward(x), explicit.forward(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(wide.adjoint(x), explicit.adjoint(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(wide.psf_at(0, 3), explicit.psf_at(0, 3))
    assert _adjoint_gap(wide, wide.image_shape, torch.float64) < 1e-10
    assert wide.to(torch.float32).image_shape == wide.image_shape


def test_compressing_a_psf_grid_keeps_factored_weights(tmp_path):
    _, op = _grid_operator(torch.float64)
    compressed = op.compress(rank=3)
    assert compressed.is_factored  # no (I, H, W) weight array is ever built
    dense = ProductConvolution(compressed.kernels, compressed.weights)  # materialised copy
    x = torch.rand(2, 128, 128, dtype=torch.float64)
    torch.testing.assert_close(compressed.forward(x), dense.forward(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(compressed.adjoint(x), dense.adjoint(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(compressed.psf_at(5, 77), dense.psf_at(5, 77))
    wide = compressed.extended(7)
    assert wide.is_factored and _adjoint_gap(wide, wide.image_shape, torch.float64) < 1e-10
    loaded = ProductConvolution.load(compressed.save(tmp_path / "c.psfmap"))
    assert loaded.is_factored
    torch.testing.assert_close(loaded.forward(x), compressed.forward(x))
    # the same optimum as compressing the dense version of the grid
    reference = ProductConvolution(op.kernels, op.weights).compress(rank=3)
    assert compressed.compression_error == pytest.approx(reference.compression_error, rel=1e-9)
    torch.testing.assert_close(compressed.forward(x), reference.forward(x), rtol=0, atol=1e-9)


def test_tiles_in_small_batches_and_without_cached_spectra_give_the_same_result(monkeypatch):
    # large fields go through the tiles a few at a time; the result must not depend on it
    import psfmap.operators.tiled as module

    psfs, op = _grid_operator(torch.float64, grid=(5, 6), shape=(96, 110))
    x = torch.rand(2, 96, 110, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    forward, adjoint = op.forward(x), op.adjoint(x)
    monkeypatch.setattr(module, "_TILE_CHUNK_ELEMENTS", 1)  # one tile per FFT call
    monkeypatch.setattr(module, "_SPECTRA_CACHE_BYTES", 0)  # spectra rebuilt per batch
    small = from_psf_grid(psfs, (96, 110))
    torch.testing.assert_close(small.forward(x), forward, rtol=0, atol=1e-12)
    torch.testing.assert_close(small.adjoint(x), adjoint, rtol=0, atol=1e-12)
    assert _adjoint_gap(small, small.image_shape, torch.float64) < 1e-10


def test_psf_grid_equals_the_same_grid_with_a_dense_core(tmp_path):
    # from_psf_grid keeps one (row, column, value) entry per cell instead of a (gy gx)² core
    _, op = _grid_operator(torch.float64, grid=(3, 4), shape=(64, 80))
    rows, core, cols = op._factors  # materialised on request only
    dense_core = ProductConvolution.from_factors(op.kernels, rows, core.clone(), cols)
    x = torch.rand(64, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(op.forward(x), dense_core.forward(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(op.adjoint(x), dense_core.adjoint(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(op.psf_at(40, 3), dense_core.psf_at(40, 3))
    torch.testing.assert_close(op.compress(rank=4).forward(x),
                               dense_core.compress(rank=4).forward(x), rtol=0, atol=1e-10)
    loaded = ProductConvolution.load(op.save(tmp_path / "grid.psfmap"))
    torch.testing.assert_close(loaded.forward(x), op.forward(x), rtol=0, atol=1e-12)
    wide = op.to(torch.float32).extended(5)
    assert _adjoint_gap(wide, wide.image_shape, torch.float32) < 1e-5


@pytest.mark.slow
def test_large_grid_never_builds_its_dense_core(tmp_path):
    # a 2048² field at the default 32 px stride has 63 x 63 cells: its dense core would take
    # 3969² floats; build, apply and adjoin without it
    psfs = gaussian(9, 1.0).expand(63, 63, 9, 9)
    op = from_psf_grid(psfs, (2048, 2048))
    x = torch.zeros(2048, 2048)
    x[1000, 1000] = 1.0
    blurred = op.forward(x)
    torch.testing.assert_close(blurred[996:1005, 996:1005], gaussian(9, 1.0), rtol=0, atol=1e-6)
    # <Hx, Hx> = <x, H*Hx> for the point x
    assert float(op.adjoint(blurred)[1000, 1000]) == pytest.approx(float((blurred**2).sum()),
                                                                   rel=1e-5)
    # its file holds the entries: 2.4 MB (the dense core alone would take 63 MB)
    path = op.save(tmp_path / "grid.psfmap")
    assert op._core is None and path.stat().st_size < 4 * 2**20
    torch.testing.assert_close(load(path).forward(x)[990:1010, 990:1010],
                               blurred[990:1010, 990:1010])


def test_grid_file_with_bad_entries_is_refused(tmp_path):
    from psfmap._container import load_container, save_container

    _, op = _grid_operator(torch.float64, grid=(2, 3), shape=(40, 50))
    kind, arrays, meta = load_container(op.save(tmp_path / "good.psfmap"), "product_convolution")
    assert meta["weights"] == "factored-entries"
    arrays["entry_cols"] = arrays["entry_cols"] + 5  # beyond the 3 column profiles
    save_container(tmp_path / "bad.psfmap", kind, arrays, meta)
    with pytest.raises(ValueError, match="inconsistent"):
        load(tmp_path / "bad.psfmap")


def test_psf_grid_region_is_the_whole_field_operator_seen_through_a_window():
    psfs, whole = _grid_operator(torch.float64, grid=(3, 4), shape=(96, 128), size=9)
    top, bottom, left, right = 50, 90, 60, 101  # away from the first row and column of cells
    part = from_psf_grid(psfs, (96, 128), region=(top, bottom, left, right))
    assert part.image_shape == (40, 41) and part.n_kernels == 6 < whole.n_kernels
    assert part.psf_at(5, 30).allclose(whole.psf_at(top + 5, left + 30))
    x = torch.rand(96, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    inside = torch.zeros_like(x)
    inside[top:bottom, left:right] = x[top:bottom, left:right]
    torch.testing.assert_close(part.forward(x[top:bottom, left:right]),
                               whole.forward(inside)[top:bottom, left:right], rtol=0, atol=1e-12)
    assert _adjoint_gap(part, part.image_shape, torch.float64) < 1e-10
    for bad in ((0, 0, 0, 10), (0, 97, 0, 10), (5, 3, 0, 10), (1, 2, 3)):
        with pytest.raises(ValueError, match="region"):
            from_psf_grid(psfs, (96, 128), region=bad)


@pytest.mark.slow
def test_compressing_a_grid_with_more_cells_than_kernel_pixels():
    # 30 x 30 cells of 7 x 7 kernels (I = 900 > hw = 49): kernel factors from Kᵀ K, a sparse
    # weight Gram; the same optimum as the dense weights
    widths = torch.linspace(0.6, 2.0, 900, dtype=torch.float64)
    psfs = torch.stack([gaussian(7, float(w), dtype=torch.float64) for w in widths])
    op = from_psf_grid(psfs.reshape(30, 30, 7, 7), (120, 150))
    fast = {rank: op.compress(rank=rank) for rank in (1, 3)}
    assert op._core is None  # never built
    dense = ProductConvolution(op.kernels, op.weights)
    x = torch.rand(120, 150, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for rank, compressed in fast.items():
        reference = dense.compress(rank=rank)
        assert compressed.compression_error == pytest.approx(reference.compression_error,
                                                             rel=1e-6)
        torch.testing.assert_close(compressed.forward(x), reference.forward(x), rtol=0,
                                   atol=1e-8)


def test_compressing_a_plain_convolution_returns_it():
    single = Convolution(torch.rand(5, 5) + 0.1)
    assert compress(single, rank=1) is single and single.compress(energy=0.9) is single
    with pytest.raises(ValueError, match="rank"):
        single.compress(rank=0)


def test_half_precision_is_computed_in_float32_like_numpy_float16():
    _, operator = _grid_operator()
    image = torch.rand(128, 128)
    for half in (image.half(), image.half().numpy()):
        out = operator.forward(half)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, operator.forward(image.half().float()))
