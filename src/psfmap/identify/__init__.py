"""Deprecated: the blind CNN estimation moved to :mod:`psfmap.blind`, the identification from
spikes to :mod:`psfmap.calibrate`, the training to :mod:`psfmap.training`."""

from typing import Any

from psfmap._deprecated import forward_attribute

_MOVED = {
    "BlindResult": "psfmap.blind",
    "PSFEstimator": "psfmap.blind",
    "deblur": "psfmap.blind",
    "estimate": "psfmap.blind",
    "estimate_psf_map": "psfmap.blind",
    "identify_from_spikes": "psfmap.calibrate",
    "PSFMap": "psfmap.operators",
    "load_psf_maps": "psfmap.operators",
    "save_psf_maps": "psfmap.operators",
}


def __getattr__(name: str) -> Any:
    return forward_attribute(__name__, name, _MOVED)
