"""Bead calibration: from bead images to a low-dimensional family of operators.

Debarnot, Mangeat & Weiss, "Learning low-dimensional models of microscopes", IEEE TCI 7 (2021):
``H_Γ f = Σ_ij γ_ij u_i ⋆ (v_j · f)`` with eigen-PSFs ``u_i``, spatial maps ``v_j`` and one
small matrix ``Γ_k`` per calibrated condition. :func:`identify_from_spikes` picks the member of
a calibrated family that explains a new image from a few isolated beads in it.

``psfmap.calibrate`` is callable: ``psfmap.calibrate(images, ...)`` is
``psfmap.calibrate.calibrate(images, ...)``. A bead z-stack calibrated as a volume gives one
3-D operator whose PSF varies with depth and field: :func:`calibrate_volume`.
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
from psfmap.calibrate.options import CalibrationOptions
from psfmap.calibrate.patches import PatchSet, psf_patches
from psfmap.calibrate.spatial import fit_thin_plate_spline, randomized_svd, spatial_basis
from psfmap.calibrate.spikes import SpikeIdentification, identify_from_spikes
from psfmap.calibrate.volume_calibration import (
    calibrate_volume,
    collect_volume_patches,
    fit_volume_operator,
)
from psfmap.calibrate.volume_figures import plot_volume_psfs

__all__ = [
    "BeadDetection",
    "CalibrationOptions",
    "EigenPSFs",
    "OperatorFamily",
    "PatchSet",
    "SpikeIdentification",
    "calibrate",
    "calibrate_volume",
    "collect_patches",
    "collect_volume_patches",
    "detect_beads",
    "eigen_psfs",
    "estimate_psf_sigma",
    "fit_family",
    "fit_thin_plate_spline",
    "fit_volume_operator",
    "identify_from_spikes",
    "plot_family",
    "plot_volume_psfs",
    "psf_patches",
    "randomized_svd",
    "spatial_basis",
]


make_callable(__name__, calibrate)
