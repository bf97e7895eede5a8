"""The engine is chosen by cost (psfmap.operators.cost); compression only on request."""

from __future__ import annotations

import pytest
import torch

from psfmap.operators import ProductConvolution, from_psf_grid
from psfmap.operators.cost import cheapest, choose_engine, predicted_seconds
from psfmap.psf import gaussian


def _grid(cells: int, size: int, kernel: int = 17, dtype=torch.float32) -> ProductConvolution:
    widths = torch.linspace(0.8, 2.0, cells * cells).reshape(cells, cells)
    psfs = torch.stack([torch.stack([gaussian(kernel, float(w), dtype=dtype) for w in row])
                        for row in widths])
    return from_psf_grid(psfs, (size, size))


def test_many_cells_are_tiled_and_one_global_term_is_a_fourier_sum():
    many = _grid(16, 256)
    assert choose_engine(many) == many.engine == "tiled"
    cost = predicted_seconds(many)
    assert cost["tiled"] < cost["fourier"] / 4  # 257 FFTs of the field against small tiles
    dense = ProductConvolution(gaussian(17, 1.5)[None], torch.rand(1, 256, 256))
    assert dense.engine == "fourier"  # one term: the tile is the whole field, no saving


def test_engine_override_is_kept_by_conversions_and_files(tmp_path):
    op = _grid(4, 64).with_engine("fourier")
    assert op.to(torch.float64).engine == "fourier"
    assert op.extended(3).engine in ("tiled", "fourier")
    loaded = ProductConvolution.load(op.save(tmp_path / "op.psfmap"))
    assert loaded.engine == "fourier" and "engine" not in loaded.metadata
    assert "engine='fourier'" in repr(op)


def test_cheapest_compresses_a_smooth_many_cell_field_within_the_stated_accuracy():
    op = _grid(16, 256, dtype=torch.float64)
    fast = cheapest(op, energy=0.999, calls=20)
    assert fast is not op and fast.n_kernels < 8 and fast.engine == "fourier"
    assert fast.compression_error <= (1 - 0.999) ** 0.5
    x = torch.rand(256, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = op.forward(x)
    relative = float((fast.forward(x) - exact).norm() / exact.norm())
    assert relative < (1 - 0.999) ** 0.5  # the stated accuracy, on an image too


def test_cheapest_keeps_the_exact_operator_when_compression_cannot_pay():
    small = _grid(2, 64)
    assert cheapest(small, calls=1) is small  # 4 terms, one call: not worth computing
    with pytest.raises(ValueError, match="energy"):
        cheapest(small, energy=0)
    with pytest.raises(ValueError, match="calls"):
        cheapest(small, calls=0)
