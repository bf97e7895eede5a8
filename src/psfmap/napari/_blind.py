"""The Blind deblur widget: estimate the PSF map of an image with a shipped CNN, restore it.

Every frame gets its own map (:func:`psfmap.blind.estimate`), then Richardson–Lucy with total
variation restores it with that map, as :func:`psfmap.blind.deblur` does (frames larger than
its tile size in tiles); the two steps run separately so that the progress bar moves and
Cancel stops the work between two iterations. The result is three kinds of layer: the
restored image, the mosaic of the local PSFs over the image and one heat map per parameter.
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

TITLE = "Blind deblur"


def _models() -> list[str]:
    from psfmap.blind.estimator import pretrained_names

    return pretrained_names()


def blind_deblur(image: np.ndarray, model: str, iterations: int, tv: float,
                 ticker: Ticker) -> tuple[np.ndarray, list]:
    """Estimate the map of every frame of ``image (..., H, W)``, then restore each frame with
    its map (RL-TV, ``tv`` relative to the frame's maximum, tiles as ``psfmap.deblur``).

    Returns the restored image and the maps (one per frame, C order of the leading axes).
    """
    from psfmap import deconvolve
    from psfmap.blind import estimate
    from psfmap.blind.verbs import DEFAULT_TILE

    frames = image.reshape(-1, *image.shape[-2:])
    maps = []
    for frame in frames:  # all maps first: a frame that cannot be estimated fails fast
        ticker.check()
        maps.append(estimate(frame, model=model, callback=ticker))
    restored = np.empty_like(frames)
    for index, (frame, psf_map) in enumerate(zip(frames, maps)):
        ticker.check()
        if float(frame.max()) <= 0:
            raise ValueError(f"{TITLE}: frame {index} of the image is all zero; nothing to "
                             "deblur")
        restored[index] = deconvolve(frame, psf_map, "rl-tv", iterations, tv,
                                     tile=DEFAULT_TILE, callback=ticker)
    return restored.reshape(image.shape), maps


class BlindDeblurWidget(JobWidget):
    """Blind deblurring of an image layer with a shipped model (:func:`psfmap.estimate` and
    :func:`psfmap.deconvolve`); adds ``"<image> deblurred"``, ``"<image> PSF map"`` and one
    ``"<image> <parameter>"`` heat map per model parameter."""

    title = TITLE

    def __init__(self, napari_viewer: Any):
        from psfmap.blind.verbs import DEFAULT_ITERATIONS, DEFAULT_MODEL, DEFAULT_TV

        models = _models()
        self.image = layer_box(napari_viewer, "image")
        self.model = ComboBox(label="model", choices=models,
                              value=DEFAULT_MODEL if DEFAULT_MODEL in models else models[0],
                              tooltip="the shipped CNN and its PSF family (see the model cards)")
        self.iterations = SpinBox(label="iterations", value=DEFAULT_ITERATIONS, min=1,
                                  max=100_000)
        self.tv = FloatSpinBox(label="λ_TV", value=DEFAULT_TV, min=0.0, max=1.0, step=0.001)
        super().__init__(napari_viewer, [self.image, self.model, self.iterations, self.tv])

    def prepare(self) -> Plan:
        layer = self.image.value
        data = image_data(layer, "the image", TITLE)
        model, iterations, tv = str(self.model.value), int(self.iterations.value), \
            float(self.tv.value)
        lead = tuple(int(n) for n in data.shape[:-2])
        n_frames = int(np.prod(lead, dtype=int))

        def task(ticker: Ticker) -> tuple[np.ndarray, list]:
            return blind_deblur(as_float(data), model, iterations, tv, ticker)

        def layers(result: tuple[np.ndarray, list]) -> list:
            restored, maps = result
            scale, translate = frame_geometry(layer)
            settings = {"model": model, "iterations": iterations, "tv": tv}
            out = [result_layer(restored, f"{layer.name} deblurred", layer,
                                colormap=getattr(layer.colormap, "name", "gray"),
                                metadata={"psfmap": settings})]
            out += psf_map_layers(maps[0] if not lead else maps, layer.name,
                                  frame_shape=lead or None, scale=scale, translate=translate,
                                  extra={"psfmap": settings})
            return out

        def after(result: tuple[np.ndarray, list]) -> str:
            maps = result[1]
            return f"{model}, {maps[0].grid[0]}×{maps[0].grid[1]} cells per frame"

        return Plan(task, n_frames * (1 + iterations), layers, after)
