"""psfmap's napari plugin: restore, estimate PSF maps, calibrate and simulate from the viewer.

Installed with ``pip install "psfmap[napari]"`` and declared to napari by the npe2 manifest
``napari.yaml`` beside this file (entry point ``napari.manifest``). It contributes four dock
widgets (Deconvolve, Blind deblur, Calibrate from beads, Simulate), each running its work in
a thread worker with a progress bar and a Cancel button; a reader for ``.psfmap`` files; a
writer of image layers to TIFF / OME-TIFF / OME-Zarr; and the confocal sample shipped with
psfmap. Nothing in psfmap imports this package; it imports napari, magicgui and Qt only when
napari loads it.
"""

from __future__ import annotations

from psfmap.napari._blind import BlindDeblurWidget
from psfmap.napari._calibrate import CalibrateWidget
from psfmap.napari._deconvolve import DeconvolveWidget
from psfmap.napari._io import get_reader, read_psfmap, sample_data, write_image_layer
from psfmap.napari._layers import psf_map_layers
from psfmap.napari._simulate import SimulateWidget

__all__ = [
    "BlindDeblurWidget",
    "CalibrateWidget",
    "DeconvolveWidget",
    "SimulateWidget",
    "get_reader",
    "psf_map_layers",
    "read_psfmap",
    "sample_data",
    "write_image_layer",
]
