"""Blind estimation of the blur from the image itself (Shajkofci & Liebling, IEEE TIP 2020).

* :class:`PSFEstimator`: a CNN that regresses the parameters of a PSF model, a validity score
  and its own uncertainty from image patches (:mod:`psfmap.blind.estimator`);
* :func:`estimate_psf_map` / :func:`estimate`: sliding-window PSF maps (:class:`PSFMap`);
* :func:`deblur`: estimate the map, then Richardson–Lucy with total variation;
* depth from astigmatism: :func:`depth_map`, :func:`calibrate_depth` and the formulas and
  calibration files of :mod:`psfmap.blind.depth`.

Names are imported lazily so that ``import psfmap.blind`` stays cheap.
"""

from __future__ import annotations

from typing import Any

from psfmap._lazy import lazy_attribute

# public name -> module that defines it
_EXPORTS = {
    "PSFEstimator": "psfmap.blind.estimator",
    "pretrained_names": "psfmap.blind.estimator",
    "estimate_psf_map": "psfmap.blind.psf_maps",
    "BlindResult": "psfmap.blind.verbs",
    "estimate": "psfmap.blind.verbs",
    "deblur": "psfmap.blind.verbs",
    "DEPTH_FORMULAS": "psfmap.blind.depth",
    "DepthCalibration": "psfmap.blind.depth",
    "astigmatic_depth": "psfmap.blind.depth",
    "twin_invariant_depth": "psfmap.blind.depth",
    "fit_depth": "psfmap.blind.depth",
    "fit_depth_calibration": "psfmap.blind.depth",
    "best_axis_offset": "psfmap.blind.depth",
    "depth_images_needed": "psfmap.blind.depth",
    "fit_psf_params": "psfmap.blind.depth",
    "calibrate_depth": "psfmap.blind.depth_images",
    "depth_map": "psfmap.blind.depth_images",
    "PSFMap": "psfmap.operators.psf_map",
    "load_psf_maps": "psfmap.operators.psf_map",
    "save_psf_maps": "psfmap.operators.psf_map",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, globals(), _EXPORTS, name)


def __dir__() -> list[str]:
    return __all__
