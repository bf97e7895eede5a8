"""Blur operators: product convolutions ``H f = Σ_i k_i ⋆ (w_i · f)`` and their builders."""

from psfmap.operators.base import LinearOperator
from psfmap.operators.compression import compress
from psfmap.operators.grid import cell_centres, from_psf_grid, hat_profiles
from psfmap.operators.optical import from_microscope
from psfmap.operators.product_convolution import Convolution, ProductConvolution, load
from psfmap.operators.psf_map import PSFMap, load_psf_maps, save_psf_maps

__all__ = [
    "Convolution",
    "LinearOperator",
    "PSFMap",
    "ProductConvolution",
    "cell_centres",
    "compress",
    "from_microscope",
    "from_psf_grid",
    "hat_profiles",
    "load",
    "load_psf_maps",
    "save_psf_maps",
]
