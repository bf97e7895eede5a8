"""Bead calibration: from bead images to a low-dimensional family of operators.

Debarnot, Mangeat & Weiss, "Learning low-dimensional models of microscopes", IEEE TCI 7 (2021):
``H_Γ f = Σ_ij γ_ij u_i ⋆ (v_j · f)`` with eigen-PSFs ``u_i``, spatial maps ``v_j`` and one
small matrix ``Γ_k`` per calibrated condition.

``psfmap.calibrate`` is callable: ``psfmap.calibrate(images, ...)`` is
``psfmap.calibrate.calibrate(images, ...)``.
"""

from psfmap._callable_module import make_callable
from psfmap.calibrate.calibration import (
    calibrate,
    collect_patches,
    estimate_psf_sigma,
    fit_family,
)
from psfmap.calibrate.detection import BeadDetection, detect_beads
from psfmap.calibrate.eigen import EigenPSFs, eigen_psfs
from psfmap.calibrate.family import OperatorFamily
from psfmap.calibrate.figures import plot_family
from psfmap.calibrate.patches import PatchSet, psf_patches
from psfmap.calibrate.spatial import fit_thin_plate_spline, randomized_svd, spatial_basis

__all__ = [
    "BeadDetection",
    "EigenPSFs",
    "OperatorFamily",
    "PatchSet",
    "calibrate",
    "collect_patches",
    "detect_beads",
    "eigen_psfs",
    "estimate_psf_sigma",
    "fit_family",
    "fit_thin_plate_spline",
    "plot_family",
    "psf_patches",
    "randomized_svd",
    "spatial_basis",
]


make_callable(__name__, calibrate)
