"""Reading and writing images: TIFF, OME-TIFF (physical pixel size), PNG/JPEG (to grey).

``read_image(path) -> (array, metadata)`` returns the pixels as stored (colour images become
grey luminance) and a metadata dict with ``axes``, ``pixel_size`` (µm, ``None`` when the file
does not say) and ``format``. ``write_image`` writes TIFF or OME-TIFF atomically (temporary
file + rename), with the pixel size, and refuses to write over an input file.

Colour or stack: a TIFF whose 3 or 4 "samples" are stored interleaved (``R G B R G B ...``,
planar configuration 1) with a colour photometric tag is colour. Samples stored as separate
planes (planar configuration 2) are a stack of frames, unless the file really says colour:
OME-XML that declares the samples, or integer samples written by software other than
tifffile. tifffile stores any ``(3|4, H, W)`` array as planar "RGB(A)" by default, so the
photometric tag of such a file says nothing about its content, and no colour image is stored
as floating-point planes.

``.zarr``/``.ome.zarr`` paths go to :mod:`psfmap._zarr`: ``read_image`` opens an OME-Zarr
image lazily (a dask array, NGFF 0.4 and 0.5, with pixel and voxel sizes) and ``write_image``
writes one chunk by chunk with a multiscale pyramid.

A damaged file gives one ``ValueError`` sentence: tifffile's own log lines are muted during a
read, and a header that claims more pixels than the memory available is refused before any
allocation.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psfmap._container import atomic_write, jsonable
from psfmap._memory import array_bytes, memory_problem
from psfmap._validation import check_positive, describe
from psfmap._zarr import is_zarr_path

TIFF_SUFFIXES = (".tif", ".tiff")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
# micrometres per unit, for OME / ImageJ unit names
_UNIT_TO_UM = {
    "µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "\\u00B5m": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "m": 1e6,
}
# ITU-R BT.709 luminance weights (as skimage.color.rgb2gray)
_LUMINANCE = np.array([0.2125, 0.7154, 0.0721])
# TIFF PhotometricInterpretation values read as R, G, B (tifffile decodes YCbCr JPEG to RGB);
# for the Lab ones the first sample, lightness, is the grey image
_COLOUR_PHOTOMETRIC = {2: "RGB", 6: "YCbCr"}
_SOFTWARE_TIFFFILE = "tifffile"  # the Software tag tifffile writes by default: 'tifffile.py'


class _ReadError(ValueError):
    """A read failure already described in one sentence."""


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".ome.tif", ".ome.tiff"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a TIFF, OME-TIFF, PNG or JPEG image.

    Parameters
    ----------
    path : str or path
        ``.tif``/``.tiff`` (plain, ImageJ or OME; all pages of the first series),
        ``.png``, ``.jpg``/``.jpeg``. Colour (RGB(A) PNG, JPEG or TIFF) is converted to grey
        luminance ``0.2125 R + 0.7154 G + 0.0721 B``, alpha dropped.

        A TIFF stack of 3 or 4 planes stays a stack (see the module's rule on colour or
        stack).

    Returns
    -------
    array : np.ndarray
        The pixels, dtype as stored (after a colour-to-grey conversion: float64 for integer
        samples, the samples' float dtype for float ones).
    metadata : dict
        ``axes`` (e.g. ``"YX"``, ``"ZYX"``), ``pixel_size`` in µm or ``None``, ``format``,
        ``path``, and ``description`` (dict) when the TIFF stored JSON metadata.

    Raises
    ------
    ValueError
        Missing, unreadable or corrupted file, unsupported extension, an empty image, or one
        larger than the memory available.
    """
    path = Path(path)
    if is_zarr_path(path):  # OME-Zarr: opened lazily, a dask array (psfmap._zarr)
        from psfmap._zarr import read_zarr

        return read_zarr(path)
    suffix = _suffix(path)
    if suffix not in (*TIFF_SUFFIXES, ".ome.tif", ".ome.tiff", *RASTER_SUFFIXES):
        raise ValueError(
            f"cannot read {str(path)!r}: unsupported extension {suffix or '(none)'!r}; expected "
            ".tif, .tiff, .ome.tif, .ome.zarr, .png, .jpg or .jpeg"
        )
    if not path.is_file():
        raise ValueError(f"image file {str(path)!r} does not exist")
    try:
        if suffix in RASTER_SUFFIXES:
            array, metadata = _read_raster(path)
        else:
            array, metadata = _read_tiff(path)
    except _ReadError:
        raise
    except Exception as error:  # tifffile / PIL raise many types for corrupted files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot read {str(path)!r}: corrupted or unsupported file ({reason})")\
            from None
    if array.size == 0:
        raise ValueError(f"image {str(path)!r} is empty (shape {array.shape})")
    metadata["path"] = str(path)
    return array, metadata


def to_grey(array: np.ndarray) -> np.ndarray:
    """Channel-last colour ``(..., H, W, C)`` to grey ``(..., H, W)``: alpha dropped, RGB to
    luminance ``0.2125 R + 0.7154 G + 0.0721 B`` (float32 for 8- and 16-bit samples, whose
    luminance float32 holds to 1e-7, float64 for wider integers, float32 or float64 as the
    samples for float ones), a single channel kept as it is. A 2-D array is returned as it
    is."""
    array = np.asarray(array)
    if array.ndim < 3:
        return array
    if array.shape[-1] in (2, 4):  # grey+alpha or RGBA: drop alpha
        array = array[..., :-1]
    if array.shape[-1] == 3:
        dtype = np.float32 if array.dtype.itemsize <= 2 else np.float64
        if np.issubdtype(array.dtype, np.floating):  # keep a float image's precision
            dtype = np.promote_types(array.dtype, np.float32)
        return array.astype(dtype) @ _LUMINANCE.astype(dtype)
    return array[..., 0]


@contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """Mute tifffile while it reads: it logs (logger ``'tifffile'``) and warns about every
    damaged tag it recovers from, lines that would precede psfmap's own one-line error. The
    logger's state is restored afterwards."""
    logger = logging.getLogger("tifffile")
    disabled = logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled


def check_memory(shape: tuple[int, ...], dtype: Any, what: str) -> None:
    """Refuse to allocate ``shape`` × ``dtype`` when it exceeds the memory available: a
    forged or corrupted header can claim any size.

    Raises
    ------
    ValueError
        ``"<what> (100000x100000 float32) needs 40.0 GB of memory to read; ..."``.
    """
    problem = memory_problem(array_bytes(shape, dtype))
    if problem is not None:
        raise _ReadError(
            f"{what} ({'x'.join(str(int(n)) for n in shape)} {np.dtype(dtype)}) {problem} "
            "(a corrupted header, or an image too large for this machine: crop or split it)"
        )


def _read_raster(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    from PIL import Image

    with warnings.catch_warnings():
        # Pillow warns about an image over ~89 Mpixel before its own error over ~179 Mpixel
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(path)
    with image:
        bands = len(image.getbands())
        check_memory((image.height, image.width, bands), np.uint8 if image.mode in
                     ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr") else np.float32,
                     f"cannot read {str(path)!r}: the image")
        image.load()
        mode = image.mode
        if mode == "P":
            image = image.convert("RGBA")
            mode = "RGBA"
        array = np.asarray(image)
    if array.ndim == 3:
        array = to_grey(array)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8)
    return np.ascontiguousarray(array), {
        "axes": "YX",
        "pixel_size": None,
        "format": path.suffix.lower().lstrip("."),
        "mode": mode,
    }


def _read_tiff(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import tifffile

    with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise _ReadError(f"cannot read {str(path)!r}: corrupted or empty TIFF (no image)")
        series = tif.series[0]
        check_memory(series.shape, series.dtype, f"cannot read {str(path)!r}: the image")
        array = series.asarray()
        axes = series.axes
        if np.iscomplexobj(array):
            raise _ReadError(f"cannot read {str(path)!r}: complex pixels ({array.dtype}); "
                             "expected a real-valued image")
        if "S" in axes:
            role = _samples_role(tif, series)
            if role == "colour":
                array = to_grey(np.moveaxis(array, axes.index("S"), -1)[..., :4])
            elif role == "extra":
                array = np.take(array, 0, axis=axes.index("S"))
            if role == "frames":  # separate planes of one stack: frames, as stored
                axes = axes.replace("S", "Q")
            else:
                axes = axes.replace("S", "")
        metadata: dict[str, Any] = {"axes": axes, "pixel_size": None, "format": "tiff"}
        if tif.is_ome and tif.ome_metadata:
            metadata["format"] = "ome-tiff"
            metadata["pixel_size"] = _ome_pixel_size(tif.ome_metadata)
        elif tif.is_imagej and tif.imagej_metadata is not None:
            metadata["format"] = "imagej-tiff"
            metadata["pixel_size"] = _resolution_pixel_size(
                tif.pages[0], tif.imagej_metadata.get("unit")
            )
        elif tif.shaped_metadata:
            description = dict(tif.shaped_metadata[0])
            description.pop("shape", None)
            if description:
                metadata["description"] = description
            if "pixel_size" in description:
                metadata["pixel_size"] = float(description["pixel_size"])
        if metadata["pixel_size"] is None and not tif.is_ome:
            unit = tif.pages[0].tags.get("ResolutionUnit")
            if unit is not None and int(unit.value) == 3:  # centimetre
                metadata["pixel_size"] = _resolution_pixel_size(tif.pages[0], "cm")
        metadata["z_step"] = _z_step(tif)
    return array, metadata


def _samples_role(tif: Any, series: Any) -> str:
    """What the samples (axis ``S``) of ``series`` are: ``"colour"`` components, ``"extra"``
    samples beside one grey sample (alpha, masks), or ``"frames"`` of a stack.

    Interleaved samples with a colour photometric tag are colour (how every colour writer
    stores them). Separate sample planes are colour only when the file says so beyond the
    photometric tag, which tifffile sets to RGB for any ``(3|4, H, W)`` array by default:
    OME-XML (it declares the samples per pixel), or integer samples from other software.
    """
    page = series.keyframe
    samples = series.shape[series.axes.index("S")]
    interleaved = int(page.planarconfig) == 1
    if not interleaved and series.kind != "ome":
        if int(page.photometric) not in _COLOUR_PHOTOMETRIC or samples > 4:
            return "frames"
        if int(page.sampleformat) == 3:  # IEEE float planes: a stack, never a colour image
            return "frames"
        software = str(page.software or "")
        if software.startswith(_SOFTWARE_TIFFFILE) or tif.is_shaped:
            return "frames"
    if int(page.photometric) in _COLOUR_PHOTOMETRIC and 3 <= samples <= 4:
        return "colour"
    return "extra"


def _ome_pixel_size(xml: str, axis: str = "X") -> float | None:
    """``PhysicalSize{axis}`` of the first OME ``Pixels`` element, in µm (None if absent)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    for element in root.iter():
        if element.tag.endswith("Pixels") and f"PhysicalSize{axis}" in element.attrib:
            size = float(element.attrib[f"PhysicalSize{axis}"])
            unit = element.attrib.get(f"PhysicalSize{axis}Unit", "µm")
            scale = _UNIT_TO_UM.get(unit)
            return size * scale if scale is not None and size > 0 else None
    return None


def _z_step(tif: Any) -> float | None:
    """The axial step (µm) a TIFF's metadata gives: OME ``PhysicalSizeZ``, ImageJ
    ``spacing`` (in its ``unit``), or psfmap's own ``z_step``; None when it says none."""
    if tif.is_ome and tif.ome_metadata:
        return _ome_pixel_size(tif.ome_metadata, "Z")
    if tif.is_imagej and tif.imagej_metadata and "spacing" in tif.imagej_metadata:
        scale = _UNIT_TO_UM.get(str(tif.imagej_metadata.get("unit", "µm")).strip(), 1.0)
        step = float(tif.imagej_metadata["spacing"]) * scale
        return step if step > 0 else None
    if tif.shaped_metadata and "z_step" in tif.shaped_metadata[0]:
        step = float(tif.shaped_metadata[0]["z_step"])
        return step if step > 0 else None
    return None


def read_z_step(path: str | os.PathLike) -> float | None:
    """The axial step in µm of a TIFF z-stack (:func:`read_image`'s ``metadata["z_step"]``)
    without reading its pixels; None when the file does not say (or is not a TIFF)."""
    import tifffile

    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
            return _z_step(tif)
    except (OSError, ValueError, tifffile.TiffFileError):
        return None


def _resolution_pixel_size(page: Any, unit: str | None) -> float | None:
    """Pixel size from the TIFF XResolution tag (pixels per ``unit``)."""
    scale = _UNIT_TO_UM.get(str(unit).strip()) if unit is not None else None
    tag = page.tags.get("XResolution")
    if scale is None or tag is None:
        return None
    numerator, denominator = tag.value
    if numerator <= 0 or denominator <= 0:
        return None
    return scale * denominator / numerator


def _as_image_array(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    if not isinstance(array, np.ndarray):
        raise TypeError(f"array must be a NumPy array or torch tensor, got {describe(array)}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"array must hold real numbers, got dtype {array.dtype}")
    if array.ndim < 2 or array.size == 0:
        raise ValueError(f"array must be a non-empty image (..., H, W), got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ValueError("array contains NaN or infinite values; expected finite numbers")
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    return np.ascontiguousarray(array)


def write_image(
    path: str | os.PathLike,
    array: Any,
    pixel_size: float | None = None,
    metadata: Mapping[str, Any] | None = None,
    *,
    axes: str | None = None,
    inputs: Iterable[str | os.PathLike] = (),
    zarr_options: Mapping[str, Any] | None = None,
    z_step: float | None = None,
) -> Path:
    """Write an image to TIFF or OME-TIFF, atomically.

    Parameters
    ----------
    path : str or path
        ``.tif``/``.tiff`` (JSON metadata in the description, pixel size also as the standard
        resolution tags in pixels per cm) or ``.ome.tif``/``.ome.tiff`` (OME-XML
        ``PhysicalSizeX/Y`` in µm).
    array : array or tensor, shape (..., H, W)
        Finite real pixels.
    pixel_size : float, optional
        Pixel size in µm.
    z_step : float, optional
        Axial step of a z-stack in µm (OME ``PhysicalSizeZ``; ``z_step`` in a plain TIFF's
        description), read back as ``metadata["z_step"]``.
    metadata : dict, optional
        JSON-able values stored in the TIFF description (plain TIFF only).
    axes : str, optional
        Axis letters for OME-TIFF (default ``"YX"``, ``"ZYX"``, ... by dimension).
    inputs : path or iterable of paths
        Files this run read; writing over one of them is refused.
    zarr_options : dict, optional
        For a ``.zarr``/``.ome.zarr`` path: keywords of :func:`psfmap._zarr.write_zarr`
        (``resume``, ``overwrite``, ``client``, ``chunks``, ``progress``). An OME-Zarr store
        is written chunk by chunk as the chunks are computed (a dask ``array`` stays lazy
        until then), with a multiscale pyramid; it is not an atomic write (see
        :mod:`psfmap._zarr`).

    Returns
    -------
    Path
        The written file.
    """
    import tifffile

    path = Path(path)
    if is_zarr_path(path):  # OME-Zarr: chunk by chunk, with a pyramid (psfmap._zarr)
        from psfmap._zarr import write_zarr

        for source in [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs:
            if source is not None and Path(source).resolve() == path.resolve():
                raise ValueError(f"output {str(path)!r} is also an input; refusing to "
                                 "overwrite it")
        if pixel_size is not None:
            pixel_size = check_positive(pixel_size, "pixel_size (µm)")
        return write_zarr(path, array, pixel_size, dict(metadata or {}), axes=axes,
                          z_step=z_step, **(zarr_options or {}))
    suffix = _suffix(path)
    if suffix not in (*TIFF_SUFFIXES, ".ome.tif", ".ome.tiff"):
        raise ValueError(
            f"cannot write {str(path)!r}: unsupported extension {suffix or '(none)'!r}; expected "
            ".tif, .tiff, .ome.tif or .ome.zarr"
        )
    target = path.resolve()
    if isinstance(inputs, (str, os.PathLike)):  # one path, not an iterable of its characters
        inputs = [inputs]
    for source in inputs:
        if source is not None and Path(source).resolve() == target:
            raise ValueError(f"output {str(path)!r} is also an input; refusing to overwrite it")
    data = _as_image_array(array)
    if pixel_size is not None:
        pixel_size = check_positive(pixel_size, "pixel_size (µm)")
    if z_step is not None:
        z_step = check_positive(z_step, "z_step (µm)")
    ome = suffix.startswith(".ome")
    if ome:
        if axes is None and data.ndim <= 5:
            axes = "TCZYX"[5 - data.ndim:]
        if axes is None or len(axes) != data.ndim:
            raise ValueError(f"axes must have one letter per dimension of shape {data.shape}")
        description: dict[str, Any] = {"axes": axes}
        if pixel_size is not None:
            description.update(PhysicalSizeX=pixel_size, PhysicalSizeXUnit="µm",
                               PhysicalSizeY=pixel_size, PhysicalSizeYUnit="µm")
        if z_step is not None:
            description.update(PhysicalSizeZ=z_step, PhysicalSizeZUnit="µm")
        options: dict[str, Any] = {"ome": True, "metadata": description}
    else:
        try:  # NumPy numbers and arrays become plain JSON, as in every psfmap file
            description = jsonable(dict(metadata or {}))
            json.dumps(description)
        except (TypeError, ValueError) as error:
            raise ValueError(f"metadata must be JSON-able ({error})") from None
        if "pixel_size" in description and pixel_size is None:
            # read back as the image's pixel size: it must be one
            pixel_size = check_positive(description["pixel_size"], "metadata['pixel_size'] (µm)")
        if pixel_size is not None:
            description["pixel_size"] = pixel_size
        if z_step is not None:
            description["z_step"] = z_step
        options = {"ome": False, "metadata": description}
        if pixel_size is not None:
            options["resolution"] = (1e4 / pixel_size, 1e4 / pixel_size)
            options["resolutionunit"] = "CENTIMETER"

    # microscopy stacks are grey frames: never let tifffile read a 3- or 4-frame axis as RGB(A)
    options["photometric"] = "minisblack"

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as stream:
            tifffile.imwrite(stream, data, **options)

    return atomic_write(path, write)
