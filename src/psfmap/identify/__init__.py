"""Identify blur operators: from isolated spikes, CNN regression, sliding-window PSF maps."""

from psfmap.identify.blind import BlindResult, deblur, estimate
from psfmap.identify.cnn import PSFEstimator
from psfmap.identify.psf_map_estimation import estimate_psf_map
from psfmap.identify.spikes import identify_from_spikes
from psfmap.operators.psf_map import PSFMap, load_psf_maps, save_psf_maps

__all__ = [
    "BlindResult",
    "PSFEstimator",
    "PSFMap",
    "deblur",
    "estimate",
    "estimate_psf_map",
    "identify_from_spikes",
    "load_psf_maps",
    "save_psf_maps",
]
