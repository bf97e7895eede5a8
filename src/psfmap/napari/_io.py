"""Reader, writer and sample data of the plugin.

* The reader opens psfmap's own ``.psfmap`` files: a PSF map (or the maps of a stack) as the
  mosaic of its local PSFs plus one heat map per parameter (:mod:`psfmap.napari._layers`);
  an operator as its kernels and weight maps; a calibrated operator family as its eigen-PSFs,
  spatial basis and the coefficient maps ``w_i = Σ_j γ_ij v_j`` of every condition.
* The writer saves image layers (restored images) with :func:`psfmap.io.write_image`:
  TIFF/OME-TIFF atomically with the pixel size when the layer's units say micrometres,
  OME-Zarr for ``.ome.zarr``.
* The sample is the real confocal image shipped with psfmap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from psfmap.napari._layers import LayerData, psf_map_layers

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "confocal_neuron_mip.tif"
_MICROMETRE = ("micrometer", "micrometre", "µm", "um", "micron")


def load_psfmap_file(path: str | os.PathLike) -> tuple[str, Any]:
    """``(kind, object)`` of a ``.psfmap`` file: ``psf_map`` (a :class:`PSFMap`),
    ``psf_map_stack`` (a list of them), ``operator`` (``ProductConvolution`` or
    ``Convolution``) or ``operator_family`` (:class:`OperatorFamily`).

    Raises ``ValueError`` (one sentence) for a file that is none of these.
    """
    from psfmap._container import load_container

    kind, _, _ = load_container(path)
    if kind in ("psf_map", "psf_map_stack"):
        from psfmap.operators.psf_map import PSFMap, load_psf_maps

        if kind == "psf_map":
            return kind, PSFMap.load(path)
        return kind, load_psf_maps(path)
    if kind in ("product_convolution", "convolution"):
        from psfmap.operators import load

        return "operator", load(path)
    if kind == "operator_family":
        from psfmap.calibrate import OperatorFamily

        return kind, OperatorFamily.load(path)
    raise ValueError(f"{str(path)!r} holds a {kind!r}; the napari plugin opens PSF maps, "
                     "operators and operator families")


def family_layers(family: Any, name: str, scale: Sequence[float] = (1.0, 1.0),
                  translate: Sequence[float] = (0.0, 0.0)) -> list[LayerData]:
    """Eigen-PSFs ``(I, h, w)``, spatial basis ``(J, H, W)`` and the coefficient maps
    ``(K, I, H, W)`` of every calibrated condition of an operator family."""
    sy, sx = (float(v) for v in scale[-2:])
    ty, tx = (float(v) for v in translate[-2:])
    eigen = family.eigen_psfs.numpy()
    coefficients = np.stack([family.weights(g).numpy() for g in family.gammas])
    basis = family.spatial_basis.numpy()
    return [
        (eigen, {"name": f"{name} eigen-PSFs", "colormap": "twilight_shifted",
                 "scale": (1.0, sy, sx), "translate": (0.0, ty, tx),
                 "metadata": {"family": family}}, "image"),
        (coefficients, {"name": f"{name} coefficient maps", "colormap": "viridis",
                        "scale": (1.0, 1.0, sy, sx), "translate": (0.0, 0.0, ty, tx),
                        "visible": False}, "image"),
        (basis, {"name": f"{name} spatial basis", "colormap": "viridis",
                 "scale": (1.0, sy, sx), "translate": (0.0, ty, tx), "visible": False},
         "image"),
    ]


def operator_layers(operator: Any, name: str) -> list[LayerData]:
    """An operator's kernels ``(I, h, w)`` and, for a product convolution, its weight maps
    ``(I, H, W)``."""
    kernels = operator.kernels.detach().cpu().numpy().astype(np.float32)
    layers: list[LayerData] = [(kernels, {"name": f"{name} kernels", "colormap": "magma",
                                          "metadata": {"operator": operator}}, "image")]
    weights = getattr(operator, "weights", None)
    if weights is not None:
        layers.append((weights.detach().cpu().numpy().astype(np.float32),
                       {"name": f"{name} weights", "colormap": "viridis", "visible": False},
                       "image"))
    return layers


def read_psfmap(path: str | os.PathLike) -> list[LayerData]:
    """The layers of a ``.psfmap`` file (see the module docstring)."""
    kind, value = load_psfmap_file(path)
    name = Path(path).name.removesuffix(".psfmap")
    if kind == "psf_map":
        return psf_map_layers(value, name)
    if kind == "psf_map_stack":
        return psf_map_layers(value, name, frame_shape=(len(value),))
    if kind == "operator":
        return operator_layers(value, name)
    return family_layers(value, name)


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader: a reader for ``.psfmap`` files, ``None`` for anything else (so that napari
    asks the next plugin)."""
    if isinstance(path, list):
        if not all(str(p).endswith(".psfmap") for p in path):
            return None
        return lambda paths: [layer for p in paths for layer in read_psfmap(p)]
    if not str(path).endswith(".psfmap"):
        return None
    return read_psfmap


def _pixel_size(meta: dict[str, Any]) -> float | None:
    """The layer's pixel size in µm when its last two axes share a scale in micrometres."""
    scale = meta.get("scale")
    units = meta.get("units")
    if scale is None or units is None or len(scale) < 2:
        return None
    if not all(str(u).lower() in _MICROMETRE for u in list(units)[-2:]):
        return None
    sy, sx = float(scale[-2]), float(scale[-1])
    return sx if np.isclose(sy, sx) and sx > 0 else None


def write_image_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer of one image layer: TIFF, OME-TIFF or OME-Zarr via
    :func:`psfmap.io.write_image` (atomic TIFF; the pixel size in µm when the layer's units
    are micrometres)."""
    from psfmap.io import write_image

    array = np.asarray(data)
    if meta.get("rgb"):
        raise ValueError(f"cannot write the RGB layer {meta.get('name')!r}: psfmap writes grey "
                         "images")
    written = write_image(path, array, pixel_size=_pixel_size(meta),
                          metadata={"napari_layer": str(meta.get("name", ""))})
    return [str(written)]


def sample_data() -> list[LayerData]:
    """npe2 sample: the confocal neuron image shipped with psfmap (maximum projection of a
    real confocal z-stack; see ``src/psfmap/data/README.md``)."""
    from psfmap.io import read_image

    image, meta = read_image(SAMPLE)
    kwargs: dict[str, Any] = {"name": "confocal neuron (MIP)", "colormap": "gray"}
    if meta.get("pixel_size"):
        kwargs.update(scale=(meta["pixel_size"],) * 2, units=("micrometer",) * 2)
    return [(image, kwargs, "image")]
