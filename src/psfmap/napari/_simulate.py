"""The Simulate widget: blur a sharp layer with a spatially varying PSF (and camera noise).

:func:`psfmap.simulate` evaluates the chosen PSF family on the chosen parameter field over a
``gy × gx`` grid and blurs with the overlap-add operator of those PSFs; the result is the
blurred layer and its true PSF map (mosaic and parameter heat maps), which Deconvolve can
take as its PSF layer. A stack is blurred frame by frame with the same map, each frame with
its own noise (seed + frame index).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, FloatSpinBox, SpinBox

from psfmap.napari._jobs import Ticker
from psfmap.napari._layers import (
    as_float,
    frame_geometry,
    image_data,
    psf_map_layers,
    result_layer,
)
from psfmap.napari._widget import JobWidget, Plan, layer_box

TITLE = "Simulate"


def simulate_stack(sharp: np.ndarray, model: str, field: str, grid: tuple[int, int],
                   photons: float | None, seed: int, ticker: Ticker) -> tuple[np.ndarray, Any]:
    """Blur every frame of ``sharp (..., H, W)`` with one PSF map; returns the blurred stack
    and the map."""
    from psfmap.simulate import simulate

    frames = sharp.reshape(-1, *sharp.shape[-2:])
    blurred = np.empty_like(frames)
    psf_map = None
    for index, frame in enumerate(frames):
        ticker.check()
        # the first frame draws the field; the others reuse its parameters, with their noise
        result = simulate(frame, model, field if psf_map is None else psf_map.params, grid,
                          photons=photons, seed=seed + index)
        psf_map = result.psf_map if psf_map is None else psf_map
        blurred[index] = result.blurred
        ticker()
    return blurred.reshape(sharp.shape), psf_map


class SimulateWidget(JobWidget):
    """Blur a sharp image layer with a varying PSF (:func:`psfmap.simulate`); adds
    ``"<image> blurred"`` and its true map ``"<image> true PSF map"`` with one heat map per
    parameter."""

    title = TITLE

    def __init__(self, napari_viewer: Any):
        from psfmap.psf import FAMILIES
        from psfmap.simulate import FIELDS

        self.image = layer_box(napari_viewer, "sharp image")
        self.model = ComboBox(label="PSF model", choices=list(FAMILIES), value="zernike3")
        self.field = ComboBox(label="field", choices=list(FIELDS), value="tilt",
                              tooltip="how the PSF parameters vary over the field of view")
        self.grid_y = SpinBox(label="cells (y)", value=4, min=1, max=64)
        self.grid_x = SpinBox(label="cells (x)", value=4, min=1, max=64)
        self.photons = FloatSpinBox(label="photons", value=0.0, min=0.0, max=1e9, step=100.0,
                                    tooltip="photons at the brightest pixel; 0: no noise")
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        super().__init__(napari_viewer, [self.image, self.model, self.field, self.grid_y,
                                         self.grid_x, self.photons, self.seed])

    def prepare(self) -> Plan:
        layer = self.image.value
        data = image_data(layer, "the sharp image", TITLE)
        model, field = str(self.model.value), str(self.field.value)
        grid = (int(self.grid_y.value), int(self.grid_x.value))
        photons = float(self.photons.value) or None
        seed = int(self.seed.value)
        lead = tuple(int(n) for n in data.shape[:-2])

        def task(ticker: Ticker) -> tuple[np.ndarray, Any]:
            return simulate_stack(as_float(data), model, field, grid, photons, seed, ticker)

        def layers(result: tuple[np.ndarray, Any]) -> list:
            blurred, psf_map = result
            scale, translate = frame_geometry(layer)
            settings = {"model": model, "field": field, "grid": list(grid),
                        "photons": photons, "seed": seed}
            out = [result_layer(blurred, f"{layer.name} blurred", layer,
                                colormap=getattr(layer.colormap, "name", "gray"),
                                metadata={"psfmap": settings})]
            # the true map of the frame (the same for every frame of a stack)
            out += psf_map_layers(psf_map, f"{layer.name} true", scale=scale[-2:],
                                  translate=translate[-2:], extra={"psfmap": settings})
            return out

        return Plan(task, int(np.prod(lead, dtype=int)), layers)
