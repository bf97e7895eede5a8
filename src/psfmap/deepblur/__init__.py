"""Deep-Blur: identify a blur operator's coefficients with one network, deblur with an
unrolled network for the whole family, and sample the set of admissible operators.

Debarnot & Weiss, "Deep-Blur: blind identification and deblurring with convolutional neural
networks" (Biological Imaging, 2024). A microscope's blur is a low-dimensional family
``A(γ)``, ``γ`` in a convex set ``C``:

* :func:`sample_convex` / :func:`sample_box` — points of ``C`` spread by MaxiSumMin;
* :class:`ZernikeBoxFamily` (``zernike7``) and :class:`CalibratedHullFamily` (hull of a
  calibrated :class:`~psfmap.calibrate.OperatorFamily`);
* :func:`identify` — image → ``γ̂``; :func:`deblur` — image → restored, with ``A(γ̂)`` or a given γ.

Training lives in :mod:`psfmap.training.deepblur` (``python -m psfmap.training.deepblur``).
"""

from psfmap.deepblur.admissible import (
    dirichlet_points,
    hull_distance,
    nearest_neighbour_sum,
    project_simplex,
    sample_box,
    sample_convex,
)
from psfmap.deepblur.families import (
    CalibratedHullFamily,
    ZernikeBoxFamily,
    family_from_config,
    field_snr,
)
from psfmap.deepblur.model import DeepBlurModel, load_model, pretrained_names
from psfmap.deepblur.networks import IdentificationNet, UnrolledFISTA
from psfmap.deepblur.verbs import deblur, identify

__all__ = [
    "CalibratedHullFamily",
    "DeepBlurModel",
    "IdentificationNet",
    "UnrolledFISTA",
    "ZernikeBoxFamily",
    "deblur",
    "dirichlet_points",
    "family_from_config",
    "field_snr",
    "hull_distance",
    "identify",
    "load_model",
    "nearest_neighbour_sum",
    "pretrained_names",
    "project_simplex",
    "sample_box",
    "sample_convex",
]
