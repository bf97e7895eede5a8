"""The Calibrate-from-beads widget: bead image layers to a ``.psfmap`` operator family.

Each selected layer gives one bead image per frame (a z-stack of beads gives one condition per
plane); :func:`psfmap.calibrate` learns the family ``H_Γ f = Σ_ij γ_ij u_i ⋆ (v_j · f)``
(Debarnot, Mangeat & Weiss, IEEE TCI 2021), which is saved to the chosen file and shown as its
eigen-PSFs ``u_i``, the coefficient maps ``w_i = Σ_j γ_ij v_j`` of every condition and the
spatial basis ``v_j``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import FileEdit, Select, SpinBox

from psfmap.napari._jobs import Ticker
from psfmap.napari._layers import InputError, as_float, frame_geometry, image_data
from psfmap.napari._widget import JobWidget, Plan, image_layers

TITLE = "Calibrate"


class CalibrateWidget(JobWidget):
    """Calibrate an operator family from bead image layers (:func:`psfmap.calibrate`); saves
    it to a ``.psfmap`` file and adds ``"<beads> eigen-PSFs"``,
    ``"<beads> coefficient maps"`` and ``"<beads> spatial basis"``."""

    title = TITLE

    def __init__(self, napari_viewer: Any):
        self.beads = Select(label="bead images", choices=image_layers(napari_viewer),
                            tooltip="one or more layers; every frame of a stack is one "
                                    "acquisition condition")
        self.psf_size = SpinBox(label="PSF size (px)", value=0, min=0, max=255,
                                tooltip="odd side of the bead patches; 0: from the beads' width")
        self.n_eigen = SpinBox(label="eigen-PSFs", value=0, min=0, max=64,
                               tooltip="number of eigen-PSFs; 0: by energy")
        self.output = FileEdit(label="save family to", mode="w", nullable=True,
                               filter="*.psfmap")
        super().__init__(napari_viewer, [self.beads, self.psf_size, self.n_eigen, self.output])

    def prepare(self) -> Plan:
        layers = list(self.beads.value or [])
        if not layers:
            raise InputError(f"{TITLE}: select one or more bead image layers")
        data = [image_data(layer, "the bead image", TITLE) for layer in layers]
        frames = {tuple(int(n) for n in d.shape[-2:]) for d in data}
        if len(frames) > 1:
            raise InputError(f"{TITLE}: the bead images must share one frame size, got "
                             f"{', '.join(f'{h}×{w}' for h, w in sorted(frames))}")
        output = self.output.value
        if output is None or str(output) in ("", "."):
            raise InputError(f"{TITLE}: choose the .psfmap file to save the family to")
        output = Path(output)
        if output.suffix != ".psfmap":
            output = output.with_name(output.name + ".psfmap")
        if not output.parent.is_dir():
            raise InputError(f"{TITLE}: the folder {str(output.parent)!r} does not exist")
        settings: dict[str, Any] = {}
        if self.psf_size.value:
            settings["psf_size"] = int(self.psf_size.value)
        if self.n_eigen.value:
            settings["n_eigen"] = int(self.n_eigen.value)
        n_images = sum(int(np.prod(d.shape[:-2], dtype=int)) for d in data)
        first = layers[0]
        scale, translate = frame_geometry(first)

        def task(ticker: Ticker) -> Any:
            from psfmap.calibrate import calibrate

            images = [frame for d in data for frame in as_float(d).reshape(-1, *d.shape[-2:])]
            family = calibrate(images, progress=ticker, **settings)
            ticker.check()
            family.save(output)
            return family

        def layer_data(family: Any) -> list:
            from psfmap.napari._io import family_layers

            return family_layers(family, first.name, scale, translate)

        def after(family: Any) -> str:
            return (f"{family.n_eigen_psfs} eigen-PSFs, {family.n_conditions} conditions, "
                    f"saved to {output.name}")

        return Plan(task, n_images, layer_data, after)
