"""psfmap: model, measure and remove spatially-variant blur in fluorescence microscopy.

The user's verbs are re-exported here and imported lazily, so ``import psfmap`` stays cheap
and each sub-package only loads when used::

    import psfmap
    op = psfmap.operators.from_psf_grid(psfs, image.shape)
    restored = psfmap.richardson_lucy(image, op, iterations=20, tv=0.1)
"""

from __future__ import annotations

import importlib
from typing import Any

from psfmap._lazy import lazy_attribute

__version__ = "0.1.0"

# public name -> module that defines it (``simulate`` and ``calibrate`` are sub-packages that
# are also callable verbs, see psfmap._callable_module)
_EXPORTS = {
    "ProductConvolution": "psfmap.operators",
    "Convolution": "psfmap.operators",
    "from_psf_grid": "psfmap.operators",
    "richardson_lucy": "psfmap.restore",
    "sparse_smooth": "psfmap.restore",
    "deconvolve": "psfmap.restore",
    "OperatorFamily": "psfmap.calibrate",
    "identify_from_spikes": "psfmap.calibrate",
    "PSFEstimator": "psfmap.blind",
    "PSFMap": "psfmap.operators",
    "estimate": "psfmap.blind",
    "deblur": "psfmap.blind",
    "save_psf_maps": "psfmap.operators",
    "load_psf_maps": "psfmap.operators",
}
_SUBMODULES = {
    "psf", "optics", "operators", "simulate", "restore", "calibrate", "blind", "deepblur",
    "training",
    "metrics", "io", "cli",
}
# old homes, importable for one release with a DeprecationWarning (psfmap._deprecated)
_DEPRECATED_SUBMODULES = {"identify", "depth"}

__all__ = sorted(_EXPORTS) + sorted(_SUBMODULES) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES or name in _DEPRECATED_SUBMODULES:
        return importlib.import_module(f"psfmap.{name}")
    return lazy_attribute(__name__, globals(), _EXPORTS, name)


def __dir__() -> list[str]:
    return __all__
