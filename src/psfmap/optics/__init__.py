"""Differentiable wave optics (WaveBlocks): propagation, lenses, phase masks, a camera, and
microscopes composed of them whose physical parameters are fitted to real images.

Functions act on complex torch tensors ``(..., H, W)`` (complex64 or complex128), lengths in
µm, and are differentiable in every physical argument. Blocks (``torch.nn.Module``) wrap them
with named parameters; :class:`Microscope` chains blocks from a source to a camera and gives
PSFs, through-focus stacks and PSF grids; :func:`fit` calibrates it; :func:`estimate_depth`
matches images against its focal stack. Reference: Page Vizcaíno, Wang, Lasser, Favaro,
"WaveBlocks: a differentiable wave-optics simulator", ICASSP 2020.
"""

from psfmap.optics.blocks import (
    Block,
    Camera,
    Lens,
    PhaseMask,
    Propagation,
    PSFSource,
    Wave,
    ZernikeSource,
)
from psfmap.optics.camera import add_noise, convolve, integrate_pixels, intensity
from psfmap.optics.depth import DepthEstimate, crop_bead, estimate_depth
from psfmap.optics.fit import FitReport, affine_match, fit, nmse
from psfmap.optics.lens import circular_pupil, lens
from psfmap.optics.masks import circular_gradient, cubic_phase, phase_mask, zernike_phase
from psfmap.optics.microscope import Microscope, build
from psfmap.optics.propagation import propagate, transfer_function

__all__ = [
    "Block", "Camera", "DepthEstimate", "FitReport", "Lens", "Microscope", "PSFSource",
    "PhaseMask", "Propagation", "Wave", "ZernikeSource", "add_noise", "affine_match", "build",
    "circular_gradient", "circular_pupil", "convolve", "crop_bead", "cubic_phase",
    "estimate_depth", "fit", "integrate_pixels", "intensity", "lens", "nmse", "phase_mask",
    "propagate",
    "transfer_function", "zernike_phase",
]
