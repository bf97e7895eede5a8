"""OME-Zarr images: lazy reading, chunk-by-chunk writing with per-chunk markers, resuming.

Read: ``read_zarr(path) -> (dask array, metadata)`` opens the full-resolution level of an
OME-Zarr image (NGFF 0.4 on zarr v2, NGFF 0.5 on zarr v3) with ``dask.array.from_zarr``: no
pixel is read until computed. The pixel size (µm) comes from the ``scale`` transformation of
the ``x`` axis and its unit; a store without one gives ``pixel_size: None``.

Write: ``write_zarr(path, array, ...)`` creates an NGFF 0.5 store (metadata written by the
``ome-zarr`` package) and computes the full-resolution level chunk by chunk, each chunk
written **as it finishes**, followed by an empty marker file
``<store>/.psfmap-chunks/<i>.<j>...``. A chunk whose marker is missing is not done (a run
killed while writing it leaves at most a half-written chunk without a marker); ``resume=True``
recomputes only those. Once every chunk is in, the pyramid (2× mean downsampling per level,
down to 256 px) is written, the markers are removed and ``psfmap.complete`` is set in the
store's attributes. This is a different contract from the TIFF writers' all-or-nothing
rename: an interrupted run leaves a partial store that ``resume=True`` completes to the same
result.

With a ``distributed.Client`` the chunks run on its cluster (a lost worker's chunks are
rerun by the scheduler); without one, on dask's threaded scheduler.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ZARR_SUFFIXES = (".zarr", ".ome.zarr")
MARKERS = ".psfmap-chunks"
PYRAMID_SMALLEST = 256  # px: no pyramid level smaller than this along Y or X
_UNIT_TO_UM = {"micrometer": 1.0, "micron": 1.0, "um": 1.0, "µm": 1.0, "nanometer": 1e-3,
               "nm": 1e-3, "millimeter": 1e3, "mm": 1e3, "centimeter": 1e4, "meter": 1e6,
               "angstrom": 1e-4}
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def is_zarr_path(path: str | Path) -> bool:
    """Whether ``path`` names an OME-Zarr store (``.zarr`` / ``.ome.zarr``)."""
    return str(path).lower().rstrip("/").endswith(".zarr")


def _multiscales(attrs: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    ome = attrs.get("ome")
    if isinstance(ome, dict) and ome.get("multiscales"):  # NGFF 0.5
        return ome["multiscales"], str(ome.get("version", "0.5"))
    if attrs.get("multiscales"):  # NGFF 0.4 and earlier
        multiscales = attrs["multiscales"]
        return multiscales, str(multiscales[0].get("version", "0.4"))
    return [], ""


def read_zarr(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Open an OME-Zarr image lazily: ``(dask array of level 0, metadata)``.

    Metadata: ``axes`` (upper-case letters, e.g. ``"TYX"``), ``pixel_size`` (µm, or None when
    the store gives no scale for ``x``), ``voxel_size`` (µm per axis, None where unknown),
    ``z_step`` (µm, the ``z`` scale, present when the store has a known one),
    ``format`` (``"ome-zarr 0.5"``), ``path``, ``chunks``, ``description`` (the psfmap
    provenance stored with the image, if any).

    Raises
    ------
    ValueError
        Missing path, not a zarr store, or a store without OME multiscales metadata.
    """
    import dask.array as da
    import zarr

    path = Path(path)
    if not path.exists():
        raise ValueError(f"image store {str(path)!r} does not exist")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as error:  # zarr raises several types for a folder that is no store
        raise ValueError(f"cannot read {str(path)!r}: not a zarr store ({error})") from None
    attrs = group.attrs.asdict()
    multiscales, version = _multiscales(attrs)
    if not multiscales:
        raise ValueError(f"cannot read {str(path)!r}: a zarr group without OME-NGFF "
                         "'multiscales' metadata; expected an OME-Zarr image")
    first = multiscales[0]
    dataset = first["datasets"][0]
    # inlined: every chunk read is a root task, which distributed hands out only as workers
    # have room (no read-ahead of the whole store into worker memory)
    array = da.from_zarr(group[dataset["path"]], inline_array=True)
    axes = first.get("axes") or [{"name": n} for n in "tczyx"[5 - array.ndim:]]
    names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
    scale = [1.0] * array.ndim
    known = False
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale, known = [float(v) for v in transform["scale"]], True
    voxel: list[float | None] = []
    for name, axis, value in zip(names, axes, scale):
        unit = axis.get("unit") if isinstance(axis, dict) else None
        factor = _UNIT_TO_UM.get(str(unit).lower(), 1.0) if unit else 1.0
        is_space = (axis.get("type") == "space") if isinstance(axis, dict) else name in "zyx"
        voxel.append(value * factor if known and is_space and value > 0 else None)
    psfmap_attrs = attrs.get("psfmap", {}) if isinstance(attrs.get("psfmap"), dict) else {}
    if psfmap_attrs.get("pixel_size_known") is False:  # written by psfmap with scale 1 "px"
        voxel = [None] * len(voxel)
    pixel = voxel[names.index("x")] if "x" in names else None
    metadata: dict[str, Any] = {
        "axes": "".join(n[:1].upper() for n in names), "pixel_size": pixel,
        "voxel_size": voxel, "format": f"ome-zarr {version}", "path": str(path),
        "chunks": array.chunksize,
    }
    if "z" in names and voxel[names.index("z")] is not None:
        metadata["z_step"] = voxel[names.index("z")]
    if psfmap_attrs.get("description"):
        metadata["description"] = psfmap_attrs["description"]
    return array, metadata


def _axes(axes: str | None, ndim: int) -> list[dict[str, str]]:
    if axes is None or len(axes) != ndim:
        axes = "TCZYX"[5 - ndim:] if ndim <= 5 else None
    if axes is None:
        raise ValueError(f"axes must have one letter per dimension of an image with {ndim} "
                         "dimensions (at most 5 for OME-Zarr)")
    out = []
    for letter in axes.lower():
        name = letter if letter in _AXIS_TYPES else "t"  # frames of unknown kind: time
        entry = {"name": name, "type": _AXIS_TYPES[name]}
        if entry["type"] == "space":
            entry["unit"] = "micrometer"
        out.append(entry)
    if len({a["name"] for a in out}) != len(out):
        raise ValueError(f"axes {axes!r} name an axis twice; expected distinct letters of TCZYX")
    return out


def _levels(shape: tuple[int, ...]) -> int:
    levels = 1
    height, width = shape[-2:]
    while min(height, width) // 2 >= PYRAMID_SMALLEST:
        height, width, levels = height // 2, width // 2, levels + 1
    return levels


def _chunk_keys(numblocks: tuple[int, ...]) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(n) for n in numblocks)))


def _marker(path: Path, key: tuple[int, ...]) -> Path:
    return path / MARKERS / ".".join(str(k) for k in key)


def _write_chunk(block: np.ndarray, path: str, key: tuple[int, ...],
                 starts: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
    """Write one block into level 0, then its marker (the marker only after the data)."""
    import zarr

    target = zarr.open_array(str(Path(path) / "0"), mode="r+")
    region = tuple(slice(s[k], s[k] + n) for s, k, n in zip(starts, key, block.shape))
    target[region] = block
    _marker(Path(path), key).touch()
    return key


def zarr_state(path: str | Path) -> str:
    """``"missing"``, ``"complete"`` or ``"partial"`` (a store left by an interrupted run)."""
    import zarr

    path = Path(path)
    if not path.exists():
        return "missing"
    try:
        attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    except Exception:
        return "partial"
    return "complete" if attrs.get("psfmap", {}).get("complete") else "partial"


def write_zarr(
    path: str | Path,
    array: Any,
    pixel_size: float | None = None,
    metadata: dict[str, Any] | None = None,
    *,
    axes: str | None = None,
    chunks: tuple[int, ...] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    client: Any = None,
    progress: Callable[[int, int], Any] | None = None,
    z_step: float | None = None,
) -> Path:
    """Write ``array`` (NumPy, torch or dask, ``(..., H, W)``) as an OME-Zarr image.

    Parameters
    ----------
    path : str or path
        ``.zarr`` / ``.ome.zarr`` store to create.
    array : array-like or dask.array.Array
        A dask array is computed chunk by chunk (its own chunks, unless ``chunks``), each
        written as it finishes.
    pixel_size : float, optional
        Pixel size in µm (the ``scale`` of the Y and X axes; Z and T get 1).
    metadata : dict, optional
        JSON-able provenance, stored under ``psfmap.description``.
    axes : str, optional
        Axis letters (default ``"YX"``, ``"ZYX"``, ... ``"TCZYX"`` by dimension).
    chunks : tuple of int, optional
        Chunk shape of the store (default: the dask array's chunks, or up to 1024 px squares
        one frame deep).
    resume : bool
        Complete an existing store left by an interrupted run: only the chunks without a
        marker are computed. The store's shape, dtype and chunks must match.
    overwrite : bool
        Replace an existing store.
    client : distributed.Client, optional
        Run the chunks on this cluster (default: dask's threaded scheduler).
    progress : callable, optional
        ``progress(done, total)`` after every chunk written (and once at the start).
    z_step : float, optional
        Axial step in µm (the ``scale`` of the Z axis, read back as ``z_step``); needs
        ``pixel_size`` (a store without pixel sizes has none).

    Returns
    -------
    Path
        The store.
    """
    import dask
    import dask.array as da
    import zarr

    path = Path(path)
    if not is_zarr_path(path):
        raise ValueError(f"cannot write {str(path)!r} as OME-Zarr: expected a .zarr or "
                         ".ome.zarr name")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other; pass one of them")
    if z_step is not None and not 0 < float(z_step) < float("inf"):
        raise ValueError(f"z_step must be an axial step in µm > 0, got {z_step!r}")
    if not isinstance(array, da.Array):
        if hasattr(array, "detach"):
            array = array.detach().cpu().numpy()
        array = np.asarray(array)
        size = chunks or (1,) * (array.ndim - 2) + tuple(min(1024, n) for n in array.shape[-2:])
        array = da.from_array(array, chunks=size)
    if chunks is not None:
        array = array.rechunk(chunks)
    if array.ndim < 2 or array.size == 0:
        raise ValueError(f"array must be a non-empty image (..., H, W), got shape {array.shape}")
    if array.dtype == np.float16 or array.dtype == np.bool_:
        array = array.astype(np.float32 if array.dtype == np.float16 else np.uint8)
    chunk_shape = tuple(int(c[0]) for c in array.chunks)
    state = zarr_state(path)
    if state != "missing" and not (resume or overwrite):
        raise ValueError(f"output store {str(path)!r} exists ({state}); pass --resume "
                         "(resume=True) to complete it or --overwrite (overwrite=True) to "
                         "replace it")
    if state != "missing" and overwrite:
        shutil.rmtree(path)
        state = "missing"
    if state == "missing" or not (path / "0").exists():
        _create(path, array, chunk_shape, pixel_size, metadata, axes, z_step)
    else:
        existing = zarr.open_array(str(path / "0"), mode="r")
        if (tuple(existing.shape), np.dtype(existing.dtype), tuple(existing.chunks)) != \
                (tuple(array.shape), np.dtype(array.dtype), chunk_shape):
            raise ValueError(
                f"cannot resume {str(path)!r}: it holds {existing.shape} {existing.dtype} in "
                f"chunks {existing.chunks}, this run writes {array.shape} {array.dtype} in "
                f"chunks {chunk_shape}; pass --overwrite (overwrite=True) to replace it")
        if state == "complete":
            if progress is not None:
                n = int(np.prod(array.numblocks))
                progress(n, n)
            return path
    (path / MARKERS).mkdir(exist_ok=True)
    keys = _chunk_keys(array.numblocks)
    todo = [k for k in keys if not _marker(path, k).exists()]
    done = len(keys) - len(todo)
    if progress is not None:
        progress(done, len(keys))
    starts = tuple(tuple(int(v) for v in np.cumsum((0,) + c[:-1])) for c in array.chunks)
    blocks = array.to_delayed()
    tasks = [dask.delayed(_write_chunk, pure=False)(blocks[k], str(path), k, starts)
             for k in todo]
    counter = [done]

    def tick() -> None:
        counter[0] += 1
        if progress is not None:
            progress(counter[0], len(keys))

    if tasks:
        _run(tasks, client, tick)
    _pyramid(path, metadata)
    return path


def _create(path: Path, array: Any, chunk_shape: tuple[int, ...], pixel_size: float | None,
            metadata: dict[str, Any] | None, axes: str | None,
            z_step: float | None = None) -> None:
    import zarr
    from ome_zarr.writer import write_multiscales_metadata

    from psfmap._container import jsonable

    axis_list = _axes(axes, array.ndim)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    datasets = []
    shape = tuple(int(n) for n in array.shape)
    for level in range(_levels(shape)):
        factor = 2 ** level
        level_shape = shape[:-2] + tuple(n // factor for n in shape[-2:])
        level_chunks = chunk_shape[:-2] + tuple(min(c, n) for c, n in
                                                zip(chunk_shape[-2:], level_shape[-2:]))
        group.create_array(str(level), shape=level_shape, chunks=level_chunks,
                           dtype=array.dtype, fill_value=0)
        scale = [1.0] * array.ndim
        for index, axis in enumerate(axis_list):
            if axis["name"] in "yx":
                scale[index] = (pixel_size or 1.0) * factor
            elif axis["name"] == "z" and z_step is not None and pixel_size is not None:
                scale[index] = float(z_step)
        datasets.append({"path": str(level),
                         "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    write_multiscales_metadata(group, datasets, axes=axis_list)
    group.attrs["psfmap"] = {"complete": False, "pixel_size_known": pixel_size is not None,
                             "description": jsonable(dict(metadata or {}))}


def _run(tasks: list[Any], client: Any, tick: Callable[[], Any]) -> None:
    """Compute the write tasks, ticking the progress after each; on the cluster of
    ``client`` (lost workers' tasks rerun by its scheduler) or on threads."""
    if client is not None:
        from distributed import as_completed

        futures = client.compute(tasks)
        try:
            for future in as_completed(futures):
                future.result()  # raises the task's error, if any
                tick()
        except BaseException:
            client.cancel(futures)  # an interrupted run stops scheduling new chunks
            raise
        return
    import dask
    from dask.callbacks import Callback

    class _Tick(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):  # noqa: D401
            if "_write_chunk" in str(key):
                tick()

    with _Tick():
        dask.compute(*tasks, scheduler="threads")


def _pyramid(path: Path, metadata: dict[str, Any] | None) -> None:
    """Levels 1.. as 2× means of the level above; then drop the markers, mark complete."""
    import dask.array as da
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    level = 1
    while str(level) in group:
        above = da.from_zarr(group[str(level - 1)], inline_array=True)
        target = group[str(level)]
        axes = {above.ndim - 2: 2, above.ndim - 1: 2}
        small = da.coarsen(np.mean, above, axes, trim_excess=True).astype(target.dtype)
        small = small[tuple(slice(0, n) for n in target.shape)].rechunk(target.chunks)
        da.to_zarr(small, target, compute=True)
        level += 1
    shutil.rmtree(path / MARKERS, ignore_errors=True)
    attrs = dict(group.attrs.get("psfmap", {}))
    attrs["complete"] = True
    group.attrs["psfmap"] = attrs
