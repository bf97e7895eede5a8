"""Every kind of operator psfmap builds, small, for the contract tests.

Each case builds its operator in a given dtype and says the shapes it maps between
(``in_shape`` -> ``out_shape``) and whether it can be saved. An operator kind added later joins
``CASES``; every test of ``test_contract.py`` then runs on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from psfmap.calibrate import OperatorFamily
from psfmap.operators import Convolution, ProductConvolution, from_psf_grid
from psfmap.operators.psf_map import PSFMap
from psfmap.psf import gaussian
from psfmap.restore._domain import CroppedOperator

SHAPE = (40, 46)
KERNEL = 9


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[torch.dtype], Any]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    saveable: bool = True

    def __repr__(self) -> str:  # the test id
        return self.name


def grid_psfs(dtype: torch.dtype, grid: tuple[int, int] = (3, 4)) -> torch.Tensor:
    """``(gy, gx, 9, 9)`` asymmetric Gaussians (width and angle vary: a flip would show)."""
    return torch.stack([
        torch.stack([gaussian(KERNEL, (0.7 + 0.4 * r, 1.0 + 0.3 * c), angle=0.3 * c, dtype=dtype)
                     for c in range(grid[1])])
        for r in range(grid[0])
    ])


def dense_operator(dtype: torch.dtype, engine: str | None = "fourier") -> ProductConvolution:
    g = torch.Generator().manual_seed(0)
    kernels = torch.rand((3, 7, KERNEL), generator=g, dtype=torch.float64).to(dtype)
    weights = torch.rand((3,) + SHAPE, generator=g, dtype=torch.float64).to(dtype)
    return ProductConvolution(kernels, weights, engine=engine)


def grid_operator(dtype: torch.dtype, **options: Any) -> ProductConvolution:
    return from_psf_grid(grid_psfs(dtype), SHAPE, **options)


def family_operator(dtype: torch.dtype) -> ProductConvolution:
    """A tiny calibrated family (2 eigen-PSFs, 3 smooth spatial maps on a 5 x 6 grid)."""
    rng = np.random.default_rng(0)
    eigen = np.stack([gaussian(KERNEL, 1.2, dtype=torch.float64).numpy(),
                      gaussian(KERNEL, (0.8, 2.0), angle=0.5, dtype=torch.float64).numpy()])
    yy, xx = np.meshgrid(np.linspace(0, 1, 5), np.linspace(0, 1, 6), indexing="ij")
    basis = np.stack([np.ones_like(yy), yy, xx])
    gammas = rng.random((2, 2, 3))
    family = OperatorFamily(eigen, basis, gammas, SHAPE)
    return family.operator(gammas[1], dtype=dtype)


def psf_map_operator(dtype: torch.dtype) -> ProductConvolution:
    widths = np.linspace(0.8, 2.0, 6).reshape(2, 3, 1)
    return PSFMap("gaussian1", widths, SHAPE).operator(dtype=dtype)


def psf_gaussian(dtype: torch.dtype) -> torch.Tensor:
    psf = gaussian(KERNEL, (1.0, 2.0), angle=0.3, dtype=torch.float64)
    bump = torch.linspace(0.8, 1.2, KERNEL, dtype=torch.float64)
    return (psf * bump[None, :]).to(dtype)  # asymmetric: catches a flipped kernel


# volumes: (D, H, W) stacks and (d, h, w) kernels (psfmap.operators.volume)
VOLUME = (7, 12, 10)
VOLUME_KERNEL = (5, 5, 3)


def volume_psfs(dtype: torch.dtype, grid: tuple[int, int, int] = (2, 2, 1)) -> torch.Tensor:
    """``(gz, gy, gx, 5, 5, 3)`` asymmetric 3D kernels (a flip in any axis would show)."""
    g = torch.Generator().manual_seed(3)
    psfs = torch.rand(grid + VOLUME_KERNEL, generator=g, dtype=torch.float64)
    return (psfs / psfs.sum(dim=(-3, -2, -1), keepdim=True)).to(dtype)


def volume_dense(dtype: torch.dtype) -> Any:
    g = torch.Generator().manual_seed(4)
    kernels = torch.rand((3,) + VOLUME_KERNEL, generator=g, dtype=torch.float64).to(dtype)
    weights = torch.rand((3,) + VOLUME, generator=g, dtype=torch.float64).to(dtype)
    return ProductConvolution(kernels, weights)


VOLUME_WIDE = (VOLUME[0] + 4, VOLUME[1] + 6, VOLUME[2] + 2)

MARGIN = 4
WIDE = (SHAPE[0] + 2 * MARGIN, SHAPE[1] + 2 * MARGIN)

CASES = [
    Case("convolution", lambda dtype: Convolution(psf_gaussian(dtype)), SHAPE, SHAPE),
    Case("fourier-sum", lambda dtype: dense_operator(dtype, "fourier"), SHAPE, SHAPE),
    Case("dense-tiled", lambda dtype: dense_operator(dtype, "tiled"), SHAPE, SHAPE),
    Case("grid", grid_operator, SHAPE, SHAPE),
    Case("grid-fourier", lambda dtype: grid_operator(dtype).with_engine("fourier"), SHAPE,
         SHAPE),
    Case("grid-region", lambda dtype: grid_operator(dtype, region=(5, 33, 9, 41)), (28, 32),
         (28, 32)),
    Case("compressed", lambda dtype: grid_operator(dtype).compress(rank=3), SHAPE, SHAPE),
    Case("compressed-dense", lambda dtype: dense_operator(dtype, None).compress(rank=2), SHAPE,
         SHAPE),
    Case("extended-grid", lambda dtype: grid_operator(dtype).extended(MARGIN), WIDE, WIDE),
    Case("extended-dense", lambda dtype: dense_operator(dtype, None).extended(MARGIN), WIDE,
         WIDE),
    Case("cropped", lambda dtype: CroppedOperator(grid_operator(dtype), SHAPE, MARGIN), WIDE,
         SHAPE, saveable=False),
    Case("psf-map", psf_map_operator, SHAPE, SHAPE),
    Case("family", family_operator, SHAPE, SHAPE),
    Case("volume-convolution", lambda dtype: Convolution(volume_psfs(dtype)[0, 0, 0]), VOLUME,
         VOLUME),
    Case("volume-dense", volume_dense, VOLUME, VOLUME),
    Case("volume-grid", lambda dtype: from_psf_grid(volume_psfs(dtype), VOLUME), VOLUME, VOLUME),
    Case("volume-compressed",
         lambda dtype: from_psf_grid(volume_psfs(dtype), VOLUME).compress(rank=2), VOLUME,
         VOLUME),
    Case("volume-extended",
         lambda dtype: from_psf_grid(volume_psfs(dtype), VOLUME).extended((2, 3, 1)),
         VOLUME_WIDE, VOLUME_WIDE),
    Case("volume-extended-dense", lambda dtype: volume_dense(dtype).extended((2, 3, 1)),
         VOLUME_WIDE, VOLUME_WIDE),
]
