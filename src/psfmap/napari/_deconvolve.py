"""The Deconvolve widget: restore an image layer with a known blur.

The blur comes from a PSF layer (a PSF ``(h, w)``, a PSF grid ``(gy, gx, h, w)``, or a PSF
map layer made by this plugin: Blind deblur, Simulate, or a ``.psfmap`` file opened in the
viewer) or from a file (a PSF image ``.tif``, a PSF map or an operator ``.psfmap``). The work
is :func:`psfmap.deconvolve`; a stack is restored frame by frame with one map per frame when
the PSF map layer holds one per frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox, SpinBox

from psfmap.napari._jobs import Ticker
from psfmap.napari._layers import (
    InputError,
    as_float,
    image_data,
    psf_map_of,
    result_layer,
)
from psfmap.napari._widget import JobWidget, Plan, layer_box
from psfmap.restore import DEFAULT_TV, METHODS

TITLE = "Deconvolve"


def _psf_from_file(path: Path) -> Any:
    """A PSF array, PSF map(s) or operator from a file (worker thread)."""
    if path.suffix.lower() in (".psfmap", ".npz"):
        from psfmap.napari._io import load_psfmap_file

        kind, value = load_psfmap_file(path)
        if kind == "operator_family":
            raise InputError(
                f"{TITLE}: {path.name} is a calibrated operator family ({value.n_conditions} "
                "operators); pick one first (psfmap identify, or OperatorFamily.operators() "
                "and .save()) and open that operator"
            )
        return value
    from psfmap.io import read_image

    psf, _ = read_image(path)
    return np.asarray(psf, dtype=np.float64)


def _check_psf_size(psf_shape: tuple[int, ...], frame: tuple[int, int], source: str) -> None:
    """A PSF larger than the image frames cannot be restored with: say so before the work."""
    kernel = tuple(int(n) for n in psf_shape[-2:])
    if kernel[0] > frame[0] or kernel[1] > frame[1]:
        raise InputError(
            f"{TITLE}: the PSF of {source} ({kernel[0]}×{kernel[1]} px) is larger than the "
            f"image frames ({frame[0]}×{frame[1]} px); crop the PSF around its centre or "
            "choose the right PSF"
        )


def _restore(image: np.ndarray, blur: Any, method: str, iterations: int, tv: float | None,
             ticker: Ticker) -> np.ndarray:
    """``psfmap.deconvolve`` of the image (or of each frame with its own map)."""
    from psfmap import deconvolve

    if isinstance(blur, list):  # one PSF map per frame of the stack
        frames = image.reshape(-1, *image.shape[-2:])
        if len(blur) != len(frames):
            raise InputError(f"{TITLE}: the PSF map layer holds {len(blur)} maps for a stack of "
                             f"{len(frames)} frames")
        restored = np.empty_like(frames)
        for index, (frame, psf_map) in enumerate(zip(frames, blur)):
            ticker.check()
            restored[index] = deconvolve(frame, psf_map, method, iterations, tv,
                                         callback=ticker)
        return restored.reshape(image.shape)
    return deconvolve(image, blur, method, iterations, tv, callback=ticker)


class DeconvolveWidget(JobWidget):
    """Deconvolve an image layer with a PSF, a PSF map or an operator
    (:func:`psfmap.deconvolve`); adds ``"<image> deconvolved"``."""

    title = TITLE

    def __init__(self, napari_viewer: Any):
        self.image = layer_box(napari_viewer, "image")
        self.psf = layer_box(napari_viewer, "PSF layer", nullable=True)
        self.psf_file = FileEdit(label="or PSF file", mode="r", nullable=True,
                                 filter="*.psfmap *.tif *.tiff",
                                 tooltip="a PSF image (.tif) or a PSF map / operator (.psfmap); "
                                         "used instead of the PSF layer when given")
        self.method = ComboBox(label="method", choices=list(METHODS), value="rl-tv",
                               tooltip="rl: Richardson–Lucy; rl-tv: with total variation; "
                                       "sparse-smooth: spikes + smooth background")
        self.iterations = SpinBox(label="iterations", value=20, min=1, max=100_000)
        self.tv = FloatSpinBox(label="λ_TV", value=DEFAULT_TV, min=0.0, max=1.0, step=0.001,
                               tooltip="weight of the total-variation term (method rl-tv)")
        super().__init__(napari_viewer, [self.image, self.psf, self.psf_file, self.method,
                                         self.iterations, self.tv])

    def _blur(self, frame: tuple[int, int]) -> tuple[Any, str]:
        """The PSF source, as the worker will use it, and its name: an array, PSF map(s), or
        a path still to read (main thread: no file is read here)."""
        path = self.psf_file.value
        if path is not None and str(path) not in ("", "."):
            path = Path(path)
            if not path.is_file():
                raise InputError(f"{TITLE}: the PSF file {str(path)!r} does not exist")
            return path, path.name
        layer = self.psf.value
        if layer is None:
            raise InputError(f"{TITLE}: choose a PSF layer or a PSF file (.tif, or a PSF map "
                             "or operator .psfmap)")
        carried = psf_map_of(layer)
        if carried is not None:
            return carried, f"the PSF map layer {layer.name!r}"
        data = image_data(layer, "the PSF", TITLE)
        if data.ndim not in (2, 4):
            raise InputError(f"{TITLE}: the PSF layer {layer.name!r} must be a PSF (h, w) or a "
                             f"PSF grid (gy, gx, h, w), got shape {tuple(data.shape)}")
        source = f"the layer {layer.name!r}"
        _check_psf_size(tuple(data.shape), frame, source)
        return data, source

    def prepare(self) -> Plan:
        layer = self.image.value
        data = image_data(layer, "the image", TITLE)
        frame = tuple(int(n) for n in data.shape[-2:])
        blur, source = self._blur(frame)
        method = str(self.method.value)
        iterations = int(self.iterations.value)
        tv = float(self.tv.value) if method == "rl-tv" else None
        n_frames = int(np.prod(data.shape[:-2], dtype=int))
        per_frame = isinstance(blur, list)

        def task(ticker: Ticker) -> np.ndarray:
            resolved = blur
            if isinstance(resolved, Path):
                resolved = _psf_from_file(resolved)
                if isinstance(resolved, np.ndarray):
                    _check_psf_size(resolved.shape, frame, source)
            elif not isinstance(resolved, list) and hasattr(resolved, "shape"):
                resolved = np.asarray(resolved, dtype=np.float64)  # a PSF layer's data
            return _restore(as_float(data), resolved, method, iterations, tv, ticker)

        def layers(restored: np.ndarray) -> list:
            return [result_layer(restored, f"{layer.name} deconvolved", layer,
                                 colormap=getattr(layer.colormap, "name", "gray"),
                                 metadata={"psfmap": {"method": method, "iterations": iterations,
                                                      "tv": tv, "psf": source}})]

        total = iterations * (n_frames if per_frame else 1)
        return Plan(task, total, layers, lambda _: f"{method}, {iterations} iterations, "
                                                   f"PSF from {source}")
