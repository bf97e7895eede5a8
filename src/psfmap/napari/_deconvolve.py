"""The Deconvolve widget: restore an image layer with a known blur.

The blur comes from a PSF layer (a PSF ``(h, w)``, a PSF grid ``(gy, gx, h, w)``, a 3-D PSF
``(d, h, w)`` or a grid of them ``(gz, gy, gx, d, h, w)``, a PSF map layer made by this
plugin — Blind deblur, Simulate, or a ``.psfmap`` file opened in the viewer — or the
kernels or eigen-PSFs layer of an operator or an operator family opened by the reader) or from
a file (a PSF image ``.tif``, 2-D or 3-D; a PSF map, an operator or an operator family
``.psfmap``). The work is :func:`psfmap.deconvolve`:

* a 2-D blur restores every frame of a stack ``(..., H, W)`` (one map per frame when the PSF
  map layer holds one per frame);
* a 3-D blur restores the last three axes ``(..., Z, Y, X)`` as volumes
  (:mod:`psfmap.napari._sources`);
* an operator family gives each frame its operator: identified from the frame's isolated
  beads, or the family's mean member; the coefficients ``Γ`` used go to the layer's
  metadata and a notification.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, SpinBox

from psfmap.napari import _sources as sources
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

TITLE = sources.TITLE


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
             ticker: Ticker, options: dict[str, Any]) -> np.ndarray:
    """``psfmap.deconvolve`` of the image (or of each frame with its own map)."""
    from psfmap import deconvolve

    if isinstance(blur, list):  # one PSF map (or operator) per frame of the stack
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
    return deconvolve(image, blur, method, iterations, tv, callback=ticker, **options)


def _family_operators(image: np.ndarray, family: Any, mode: str,
                      ticker: Ticker) -> tuple[list[Any], list[dict[str, Any]]]:
    """The operator of every frame within the family and the reports of how each was found."""
    operators, reports = [], []
    for frame in image.reshape(-1, *image.shape[-2:]):
        ticker.check()
        operator, report = sources.family_operator(frame, family, mode)
        operators.append(operator)
        reports.append(report)
    return operators, reports


class DeconvolveWidget(JobWidget):
    """Deconvolve an image layer with a PSF, a PSF map, an operator or an operator family
    (:func:`psfmap.deconvolve`); adds ``"<image> deconvolved"``."""

    title = TITLE

    def __init__(self, napari_viewer: Any):
        self.image = layer_box(napari_viewer, "image")
        self.psf = layer_box(napari_viewer, "PSF layer", nullable=True)
        self.psf_file = FileEdit(label="or PSF file", mode="r", nullable=True,
                                 filter="*.psfmap *.tif *.tiff",
                                 tooltip="a PSF image (.tif, 2-D or 3-D) or a PSF map, operator "
                                         "or operator family (.psfmap); used instead of the "
                                         "PSF layer when given")
        self.method = ComboBox(label="method", choices=list(METHODS), value="rl-tv",
                               tooltip="rl: Richardson–Lucy; rl-tv: with total variation; "
                                       "sparse-smooth: spikes + smooth background (2-D)")
        self.iterations = SpinBox(label="iterations", value=20, min=1, max=100_000)
        self.tv = FloatSpinBox(label="λ_TV", value=DEFAULT_TV, min=0.0, max=1.0, step=0.001,
                               tooltip="weight of the total-variation term (method rl-tv)")
        self.family_mode = ComboBox(
            label="family operator", value="auto",
            choices=[(text, key) for key, text in sources.FAMILY_MODES.items()],
            tooltip="with an operator family (.psfmap from calibration): the operator of each "
                    "frame, identified from its isolated beads (psfmap identify) or the mean "
                    "of the calibrated ones")
        self.accelerate = CheckBox(label="accelerate (3-D)", value=False,
                                   tooltip="volumes: Biggs–Andrews accelerated Richardson–Lucy")
        super().__init__(napari_viewer, [self.image, self.psf, self.psf_file, self.method,
                                         self.iterations, self.tv, self.family_mode,
                                         self.accelerate])

    def _blur(self, frame: tuple[int, int]) -> tuple[Any, str]:
        """The PSF source, as the worker will use it, and its name: an array, PSF map(s), an
        operator, a family, or a path still to read (main thread: no array is read here)."""
        path = self.psf_file.value
        if path is not None and str(path) not in ("", "."):
            path = Path(path)
            if not path.is_file():
                raise InputError(f"{TITLE}: the PSF file {str(path)!r} does not exist")
            return path, path.name
        layer = self.psf.value
        if layer is None:
            raise InputError(f"{TITLE}: choose a PSF layer or a PSF file (.tif, or a PSF map, "
                             "operator or operator family .psfmap)")
        carried = psf_map_of(layer)
        if carried is not None:
            return carried, f"the PSF map layer {layer.name!r}"
        metadata = getattr(layer, "metadata", None) or {}
        for key, what in (("family", "operator family"), ("operator", "operator")):
            if metadata.get(key) is not None:  # the layers the reader and Calibrate add
                return metadata[key], f"the {what} of the layer {layer.name!r}"
        data = image_data(layer, "the PSF", TITLE)
        if data.ndim not in (2, 3, 4, 6):
            raise InputError(f"{TITLE}: the PSF layer {layer.name!r} must be a PSF (h, w), a PSF "
                             "grid (gy, gx, h, w), a 3-D PSF (d, h, w) or a grid of them "
                             f"(gz, gy, gx, d, h, w), got shape {tuple(data.shape)}")
        source = f"the layer {layer.name!r}"
        _check_psf_size(tuple(data.shape), frame, source)
        return data, source

    @staticmethod
    def _check(blur: Any, source: str, shape: tuple[int, ...], method: str,
               image_step: float | None, psf_step: float | None, z_label: str | None) -> str:
        """Check a resolved blur against the image (main thread or worker): ``"volume"``,
        ``"family"`` or ``"2d"``; a bad pairing raises :class:`InputError`."""
        if sources.is_family(blur):
            sources.check_family_shape(shape, blur.image_shape, source)
            return "family"
        if sources.is_volume(blur):
            sources.check_volume(shape, sources.volume_kernel(blur), source, method,
                                 image_step, psf_step, z_label)
            return "volume"
        return "2d"

    def prepare(self) -> Plan:
        layer = self.image.value
        data = image_data(layer, "the image", TITLE)
        shape = tuple(int(n) for n in data.shape)
        frame = shape[-2:]
        blur, source = self._blur(frame)
        method = str(self.method.value)
        iterations = int(self.iterations.value)
        tv = float(self.tv.value) if method == "rl-tv" else None
        mode = str(self.family_mode.value)
        accelerate = bool(self.accelerate.value)
        n_frames = int(np.prod(shape[:-2], dtype=int))
        image_step = sources.z_step_of_layer(layer)
        z_label = sources.z_label_of_layer(layer)
        path = blur if isinstance(blur, Path) else None
        peeked: tuple[str, dict[str, Any]] = ("", {})
        if path is None:
            psf_step = sources.z_step_of_layer(self.psf.value) if sources.is_volume(blur) \
                else None
            kind = self._check(blur, source, shape, method, image_step, psf_step, z_label)
        else:
            peeked = sources.peek_kind(path) or peeked
            kind = "family" if peeked[0] == "operator_family" else None
            if kind == "family" and "image_shape" in peeked[1]:
                sources.check_family_shape(shape, peeked[1]["image_shape"], source)
        # restored frame by frame, one verb call (and its iterations) per frame
        per_frame = isinstance(blur, list) or kind == "family" or peeked[0] == "psf_map_stack"

        def task(ticker: Ticker) -> tuple[np.ndarray, dict[str, Any]]:
            resolved, found = blur, kind
            if path is not None:
                resolved = sources.read_source(path)
                if isinstance(resolved, np.ndarray) and not sources.is_volume(resolved):
                    _check_psf_size(resolved.shape, frame, source)
                psf_step = sources.z_step_of(resolved, path) if sources.is_volume(resolved) \
                    else None
                found = self._check(resolved, source, shape, method, image_step, psf_step,
                                    z_label)
            elif not isinstance(resolved, list) and not hasattr(resolved, "forward") and \
                    not sources.is_family(resolved) and hasattr(resolved, "shape"):
                resolved = np.asarray(resolved, dtype=np.float64)  # a PSF layer's data
            image = as_float(data)
            info: dict[str, Any] = {}
            if found == "family":
                resolved, info["family"] = _family_operators(image, resolved, mode, ticker)
            options: dict[str, Any] = {}
            if found == "volume":
                info["volume"] = True
                if image_step is not None:
                    info["z_step"] = image_step
                if accelerate:
                    options["accelerate"] = info["accelerate"] = True
            return _restore(image, resolved, method, iterations, tv, ticker, options), info

        def metadata(info: dict[str, Any]) -> dict[str, Any]:
            meta = {"method": method, "iterations": iterations, "tv": tv, "psf": source}
            if "family" in info:
                reports = info["family"]
                meta["family"] = reports[0] if len(reports) == 1 else reports
            meta.update({k: v for k, v in info.items() if k != "family"})
            return meta

        def layers(result: tuple[np.ndarray, dict[str, Any]]) -> list:
            restored, info = result
            return [result_layer(restored, f"{layer.name} deconvolved", layer,
                                 colormap=getattr(layer.colormap, "name", "gray"),
                                 metadata={"psfmap": metadata(info)})]

        def after(result: tuple[np.ndarray, dict[str, Any]]) -> str:
            _, info = result
            note = f"{method}, {iterations} iterations, PSF from {source}"
            if info.get("volume"):
                note += ", restored as volumes"
            if "family" in info:
                from napari.utils.notifications import show_info

                used = sources.describe_family(info["family"])
                show_info(f"{TITLE}: {layer.name}: operator {used}")
                note += f"; operator {used}"
            return note

        total = iterations * (n_frames if per_frame else 1)
        return Plan(task, total, layers, after)
