"""Between napari layers and psfmap objects: input checks, result geometry, PSF-map layers.

Every result layer keeps the geometry of the layer it was computed from (``scale``,
``translate``, ``units``, ``axis_labels``), so that it lies exactly over its input. A PSF map
is shown as two kinds of layer over the image it describes:

* a **mosaic** of its local PSFs: cell ``(r, c)`` of a ``gy × gx`` map over an ``H × W``
  image shows that cell's PSF (the central window that holds 95 % of every PSF's flux),
  normalised to its peak, stretched over the cell, its centre pixel on the cell centre
  ``((r + ½) H / gy, (c + ½) W / gx)`` of :func:`psfmap.operators.from_psf_grid`;
* one **heat map** per model parameter (and one of the validity), one value per cell, the
  value of cell ``(r, c)`` drawn centred on that same cell centre.

Only data and layer keywords are built here (napari's ``LayerDataTuple``), so the reader, the
widgets and the tests share one geometry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from psfmap.operators.psf_map import PSFMap

# the layer attributes that place a layer in the world; results copy them from their input
GEOMETRY = ("scale", "translate", "units", "axis_labels")
# display gamma of the PSF mosaic: < 1 brings out the faint rings (as psfmap.figures does)
MOSAIC_GAMMA = 0.5
# each tile of the mosaic is the central window holding this fraction of every PSF's flux
MOSAIC_ENERGY = 0.95
# the Python object travels with the layer that shows it, so that Deconvolve can reuse it
PSF_MAP_KEY = "psfmap_psf_map"
LayerData = tuple[Any, dict[str, Any], str]


class InputError(ValueError):
    """A bad input from the user: shown as a napari notification, never as a traceback."""


def image_data(layer: Any, what: str, widget: str) -> Any:
    """The data of the image layer ``layer`` after checking its kind (main thread: nothing is
    computed, a dask array stays lazy); :func:`as_float` converts it in the worker.

    Raises :class:`InputError` for no layer, a layer that is not an image, an RGB or a
    multiscale image, an image smaller than 2-D or of non-numeric values.
    """
    from napari.layers import Image

    if layer is None:
        raise InputError(f"{widget}: choose {what} (an image layer); none is selected")
    if not isinstance(layer, Image):
        raise InputError(f"{widget}: {what} must be an image layer, got the "
                         f"{type(layer).__name__} layer {layer.name!r}")
    if layer.rgb:
        raise InputError(f"{widget}: {what} {layer.name!r} is an RGB image; psfmap works on "
                         "grey intensities: split its channels first (right-click > Split RGB)")
    if layer.multiscale:
        raise InputError(f"{widget}: {what} {layer.name!r} is a multiscale (pyramid) layer; "
                         "open its full-resolution level as an image layer")
    data = layer.data
    shape = tuple(int(n) for n in data.shape)
    if len(shape) < 2 or min(shape[-2:]) < 2:
        raise InputError(f"{widget}: {what} {layer.name!r} must be at least 2-D with 2 pixels "
                         f"a side, got shape {shape}")
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "biuf":
        raise InputError(f"{widget}: {what} {layer.name!r} holds {dtype} values; expected real "
                         "numbers")
    return data


def as_float(data: Any) -> np.ndarray:
    """Layer data as a float32 NumPy array (computes a dask array)."""
    return np.asarray(data, dtype=np.float32)


def geometry(layer: Any, ndim: int | None = None) -> dict[str, Any]:
    """The ``scale``/``translate``/``units``/``axis_labels`` keywords of ``layer``, keeping
    only the last ``ndim`` axes when given (a per-frame result of fewer dimensions)."""
    found = {}
    for name in GEOMETRY:
        value = getattr(layer, name, None)
        if value is None:
            continue
        value = [str(v) if name == "units" else v for v in value]
        if ndim is not None:
            value = value[len(value) - ndim:]
        found[name] = tuple(value)
    return found


def frame_geometry(layer: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(scale, translate)`` of ``layer`` (unit scale, zero translate without one)."""
    ndim = int(getattr(layer, "ndim", 2))
    scale = tuple(float(v) for v in getattr(layer, "scale", (1.0,) * ndim))
    translate = tuple(float(v) for v in getattr(layer, "translate", (0.0,) * ndim))
    return scale, translate


def support_crop(psfs: np.ndarray, energy: float = MOSAIC_ENERGY, minimum: int = 7) -> np.ndarray:
    """The central ``(2r + 1)²`` window of every PSF ``(..., h, w)``, with the smallest ``r``
    that keeps ``energy`` of the flux of every one of them (at least ``minimum`` pixels a
    side): a mosaic of these windows magnifies the PSFs rather than their empty margins."""
    height, width = psfs.shape[-2:]
    cy, cx = height // 2, width // 2
    largest = min(cy, cx, height - 1 - cy, width - 1 - cx)
    total = np.clip(psfs, 0, None).sum(axis=(-2, -1))
    total = np.where(total > 0, total, 1.0)
    for radius in range(max(minimum // 2, 1), largest + 1):
        window = psfs[..., cy - radius:cy + radius + 1, cx - radius:cx + radius + 1]
        if np.all(np.clip(window, 0, None).sum(axis=(-2, -1)) >= energy * total):
            return window
    return psfs[..., cy - largest:cy + largest + 1, cx - largest:cx + largest + 1]


def psf_mosaic(psfs: Any) -> np.ndarray:
    """Local PSFs ``(..., gy, gx, h, w)`` tiled into ``(..., gy h, gx w)``, each normalised to
    its peak and shown with gamma :data:`MOSAIC_GAMMA` (float32 in [0, 1])."""
    psfs = np.asarray(psfs, dtype=np.float64)
    lead, (gy, gx, height, width) = psfs.shape[:-4], psfs.shape[-4:]
    peak = psfs.max(axis=(-2, -1), keepdims=True)
    shown = np.where(peak > 0, np.clip(psfs, 0, None) / np.where(peak > 0, peak, 1), 0.0)
    shown = shown ** MOSAIC_GAMMA
    # (..., gy, h, gx, w) -> (..., gy h, gx w)
    tiles = np.moveaxis(shown, -3, -2).reshape(*lead, gy * height, gx * width)
    return tiles.astype(np.float32)


def _placed(
    image_shape: Sequence[int], cells: Sequence[int], pixels: Sequence[int],
    scale: Sequence[float], translate: Sequence[float], centre_index: Sequence[float],
) -> tuple[list[float], list[float]]:
    """Scale and translate (last two axes) of a layer whose ``pixels`` per cell along each axis
    put its pixel ``centre_index`` of cell ``k`` on the cell centre ``(k + ½) L / n``."""
    out_scale, out_translate = [], []
    for axis in range(2):
        length, n, per_cell = image_shape[axis], cells[axis], pixels[axis]
        step = length / (n * per_cell)  # image pixels per layer pixel
        # layer pixel k·per_cell + centre lies at (k + ½) L / n image pixels
        offset = 0.5 * length / n - centre_index[axis] * step
        out_scale.append(step * scale[axis])
        out_translate.append(translate[axis] + offset * scale[axis])
    return out_scale, out_translate


def _with_leading(values: Sequence[float], lead: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in (*lead, *values))


def psf_map_layers(
    maps: PSFMap | Sequence[PSFMap],
    name: str,
    *,
    frame_shape: Sequence[int] | None = None,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> list[LayerData]:
    """The layers of one PSF map or of a stack's maps (one per frame): the PSF mosaic
    (``"<name> PSF map"``), one heat map per parameter (``"<name> <parameter>"``) and the
    validity when it is not all ones.

    ``scale``/``translate`` are those of the image the maps cover (all its axes: the leading
    ones are the frames', the last two the frame's); ``frame_shape`` gives the shape of the
    stack's leading axes when the maps are a flat list of its frames.
    """
    single = isinstance(maps, PSFMap)
    maps = [maps] if single else list(maps)
    first = maps[0]
    lead_shape = () if single else tuple(frame_shape or (len(maps),))
    ndim = len(lead_shape) + 2
    scale = tuple(scale) if scale is not None else (1.0,) * ndim
    translate = tuple(translate) if translate is not None else (0.0,) * ndim
    lead_scale, lead_translate = scale[:-2], translate[:-2]
    gy, gx = first.grid
    image_shape = first.image_shape
    psfs = support_crop(np.stack([m.psfs().detach().cpu().numpy() for m in maps]))
    kernel = psfs.shape[-2:]
    mosaic = psf_mosaic(psfs).reshape(*lead_shape, gy * kernel[0], gx * kernel[1])
    mosaic_scale, mosaic_translate = _placed(
        image_shape, (gy, gx), kernel, scale[-2:], translate[-2:],
        (kernel[0] // 2, kernel[1] // 2))
    metadata = {PSF_MAP_KEY: first if single else maps, "psf_model": first.family.name}
    metadata.update(extra or {})
    layers: list[LayerData] = [(
        mosaic,
        {"name": f"{name} PSF map", "colormap": "magma", "blending": "additive",
         "opacity": 0.8, "contrast_limits": (0.0, 1.0), "metadata": metadata,
         "scale": _with_leading(mosaic_scale, lead_scale),
         "translate": _with_leading(mosaic_translate, lead_translate)},
        "image",
    )]
    cell_scale, cell_translate = _placed(image_shape, (gy, gx), (1, 1), scale[-2:],
                                         translate[-2:], (0, 0))
    heat = {"scale": _with_leading(cell_scale, lead_scale),
            "translate": _with_leading(cell_translate, lead_translate),
            "colormap": "viridis", "opacity": 0.5, "visible": False}
    params = np.stack([m.params for m in maps]).reshape(*lead_shape, gy, gx, -1)
    for index, parameter in enumerate(first.names):
        values = params[..., index].astype(np.float32)
        layers.append((values, {**heat, "name": f"{name} {parameter}",
                                "metadata": {"parameter": parameter,
                                             "psf_model": first.family.name}}, "image"))
    validity = np.stack([m.validity for m in maps]).reshape(*lead_shape, gy, gx)
    if not np.all(validity == 1):
        layers.append((validity.astype(np.float32),
                       {**heat, "name": f"{name} validity", "contrast_limits": (0.0, 1.0),
                        "metadata": {"parameter": "validity"}}, "image"))
    return layers


def result_layer(data: Any, name: str, source: Any, **kwargs: Any) -> LayerData:
    """An image layer named ``name`` with the geometry of the layer ``source``."""
    return (np.asarray(data), {"name": name, **geometry(source), **kwargs}, "image")


def add_or_update(viewer: Any, layer_data: LayerData) -> Any:
    """Add the layer to ``viewer``, or, when a layer of that name and type exists (a re-run),
    replace its data and geometry in place, so that the user's display settings stay."""
    data, kwargs, kind = layer_data
    name = kwargs.get("name")
    existing = viewer.layers[name] if name in viewer.layers else None
    if existing is not None and existing.as_layer_data_tuple()[2] == kind and \
            np.ndim(existing.data) == np.ndim(data):
        for key in ("scale", "translate"):
            if key in kwargs:
                setattr(existing, key, kwargs[key])
        existing.data = data
        existing.metadata.update(kwargs.get("metadata", {}))
        return existing
    from napari.layers import Layer

    if existing is not None:  # another kind or dimensionality: a new layer takes its place
        viewer.layers.remove(existing)
    return viewer.add_layer(Layer.create(data, kwargs, kind))


def psf_map_of(layer: Any) -> Any:
    """The PSF map (or maps) carried by a layer made by this plugin, or ``None``."""
    metadata = getattr(layer, "metadata", None) or {}
    return metadata.get(PSF_MAP_KEY)
