"""Parametric PSF models: Gaussian, Zernike pupil (2D and through focus), named families.

Vectorial (Richards–Wolf) PSFs need the optional extra ``psfmap[vectorial]``; psf-generator is
imported on their first call, never by ``import psfmap``.

All models return torch tensors that sum to 1 and are centred at ``(h // 2, w // 2)``.
"""

from psfmap.psf.families import FAMILIES, PSFFamily, model, model_from_config
from psfmap.psf.gaussian import gaussian
from psfmap.psf.through_focus import confocal, depth_series, through_focus
from psfmap.psf.vectorial import vectorial_through_focus, vectorial_zernike
from psfmap.psf.zernike import NOLL_NAMES, noll_to_nm, zernike, zernike_polynomial

__all__ = [
    "FAMILIES",
    "NOLL_NAMES",
    "PSFFamily",
    "confocal",
    "depth_series",
    "gaussian",
    "model",
    "model_from_config",
    "noll_to_nm",
    "through_focus",
    "vectorial_through_focus",
    "vectorial_zernike",
    "zernike",
    "zernike_polynomial",
]
