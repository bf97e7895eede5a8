"""A PSF map: a grid of PSF-model parameters over an image.

Cell ``(r, c)`` of a ``gy × gx`` map over an ``H × W`` image is centred at
``((r + ½) H / gy, (c + ½) W / gx)`` and holds the parameters of a parametric PSF family
(``psfmap.psf.model``) there, plus an optional validity in [0, 1] (e.g. the confidence of a
blind estimate). The blur it describes is the overlap-add operator
``from_psf_grid(family(params), image_shape)``.

The maps of the frames of a stack (one map per plane or time point) go to one file with
:func:`save_psf_maps` and come back with :func:`load_psf_maps`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psfmap._container import load_container, save_container
from psfmap._validation import as_tensor, check_finite, check_pair, describe
from psfmap.operators.grid import cell_centres, from_psf_grid
from psfmap.operators.product_convolution import ProductConvolution

KIND = "psf_map"
STACK_KIND = "psf_map_stack"


def _family(family: Any):
    from psfmap.psf import PSFFamily, model, model_from_config

    if isinstance(family, PSFFamily):
        return family
    if isinstance(family, str):
        return model(family)
    if isinstance(family, Mapping):
        return model_from_config(family)
    raise TypeError(
        f"family must be a PSFFamily, a model name or a model config dict, got {describe(family)}"
    )


def _image_shape(image_shape: Any) -> tuple[int, int]:
    return check_pair(image_shape, "image_shape")


class PSFMap:
    """Parameters of a PSF family on a ``gy × gx`` grid of cells over an image.

    Parameters
    ----------
    family : PSFFamily, str or dict
        The PSF model (object from ``psfmap.psf.model``, its name, or its ``config()``).
    params : array or tensor, shape (gy, gx, N)
        Model parameters of every cell (``N = family.n_params``, columns ``family.names``).
    image_shape : (int, int)
        ``(H, W)`` of the image the map covers.
    validity : array, shape (gy, gx), optional
        Confidence of every cell in [0, 1] (default: ones).
    metadata : dict, optional
        JSON-able provenance and optics (pixel size in µm, how the map was obtained, ...).
    std : array, shape (gy, gx, N), optional
        Uncertainty of every cell's parameters (standard deviation, the parameters' units),
        e.g. the CNN's prediction of its own error; ``None`` when unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from psfmap.operators.psf_map import PSFMap
    >>> params = np.full((2, 3, 1), 1.5)              # gaussian1: width 1.5 px everywhere
    >>> psf_map = PSFMap("gaussian1", params, image_shape=(64, 96))
    >>> psf_map.psfs().shape
    torch.Size([2, 3, 33, 33])
    >>> psf_map.operator().image_shape
    (64, 96)
    """

    def __init__(
        self,
        family: Any,
        params: Any,
        image_shape: Any,
        validity: Any = None,
        metadata: Mapping[str, Any] | None = None,
        std: Any = None,
    ):
        self.family = _family(family)
        tensor = check_finite(as_tensor(params, "params", dtype=torch.float64), "params")
        n_params = self.family.n_params
        if tensor.ndim != 3 or tensor.shape[-1] != n_params:
            raise ValueError(
                f"params must have shape (gy, gx, {n_params}) for {self.family.names}, "
                f"got {tuple(tensor.shape)}"
            )
        if tensor.shape[0] < 1 or tensor.shape[1] < 1:
            raise ValueError(f"params must hold at least one cell, got {tuple(tensor.shape)}")
        self.params = tensor.detach().cpu().numpy().copy()
        self.image_shape = _image_shape(image_shape)
        gy, gx = self.grid
        if gy > self.image_shape[0] or gx > self.image_shape[1]:
            raise ValueError(
                f"a {gy}x{gx} grid needs an image of at least that many pixels, got "
                f"image_shape {self.image_shape}"
            )
        if validity is None:
            self.validity = np.ones((gy, gx))
        else:
            valid = check_finite(as_tensor(validity, "validity", dtype=torch.float64), "validity")
            if tuple(valid.shape) != (gy, gx):
                raise ValueError(f"validity must have shape ({gy}, {gx}), got "
                                 f"{tuple(valid.shape)}")
            if bool((valid < 0).any()) or bool((valid > 1).any()):
                raise ValueError("validity must be in [0, 1]")
            self.validity = valid.detach().cpu().numpy().copy()
        self.std = None
        if std is not None:
            spread = check_finite(as_tensor(std, "std", dtype=torch.float64), "std")
            if tuple(spread.shape) != tuple(tensor.shape):
                raise ValueError(f"std must have the shape of params {tuple(tensor.shape)}, "
                                 f"got {tuple(spread.shape)}")
            if bool((spread < 0).any()):
                raise ValueError("std must be >= 0")
            self.std = spread.detach().cpu().numpy().copy()
        self.metadata: dict[str, Any] = dict(metadata or {})

    # ------------------------------------------------------------------ geometry
    @property
    def grid(self) -> tuple[int, int]:
        """``(gy, gx)``, the number of cells along y and x."""
        return int(self.params.shape[0]), int(self.params.shape[1])

    @property
    def names(self) -> tuple[str, ...]:
        """Parameter names (the last axis of ``params``)."""
        return tuple(self.family.names)

    @property
    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell-centre coordinates in pixels: rows ``(gy,)`` and columns ``(gx,)``."""
        gy, gx = self.grid
        height, width = self.image_shape
        return cell_centres(gy, height), cell_centres(gx, width)

    @property
    def positions(self) -> np.ndarray:
        """``(gy, gx, 2)`` cell centres as (row, col) in pixels."""
        rows, cols = self.centres
        grid_rows, grid_cols = np.meshgrid(rows, cols, indexing="ij")
        return np.stack([grid_rows, grid_cols], axis=-1)

    # ------------------------------------------------------------------ PSFs and operator
    def psfs(self, *, dtype: torch.dtype | None = None, device: Any = None) -> torch.Tensor:
        """Local PSFs ``(gy, gx, h, w)`` of the cells (``family(params)``)."""
        gy, gx = self.grid
        params = torch.from_numpy(self.params.reshape(gy * gx, -1))
        params = params.to(dtype=dtype or torch.get_default_dtype(), device=device)
        kernels = self.family(params)
        return kernels.reshape(gy, gx, *kernels.shape[-2:])

    def check_covers(self, image_shape: tuple[int, int], name: str = "psf_map") -> None:
        """Raise ``ValueError`` unless the map was made for images of ``image_shape``: a map
        used on another size would be stretched over the wrong field."""
        if tuple(self.image_shape) != tuple(int(n) for n in image_shape):
            raise ValueError(
                f"{name} covers an image of {tuple(self.image_shape)}, but the image's frames "
                f"are {tuple(int(n) for n in image_shape)}"
            )

    def operator(
        self,
        image_shape: Any = None,
        *,
        region: Any = None,
        dtype: torch.dtype | None = None,
        device: Any = None,
    ) -> ProductConvolution:
        """The blur operator ``from_psf_grid(psfs, image_shape, region)`` (default: the map's
        own image shape, the whole field); the map's metadata and family config travel with
        it. ``region=(top, bottom, left, right)`` gives the operator of that box of the field
        only (see :func:`~psfmap.operators.from_psf_grid`)."""
        shape = self.image_shape if image_shape is None else _image_shape(image_shape)
        operator = from_psf_grid(self.psfs(dtype=dtype, device=device), shape, region)
        operator.metadata.update(self.metadata)
        operator.metadata["psf_model"] = self.family.config()
        return operator

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the map to one self-describing psfmap file (kind ``psf_map``), atomically."""
        arrays = {"params": self.params, "validity": self.validity}
        if self.std is not None:
            arrays["std"] = self.std
        return save_container(path, KIND, arrays, _file_metadata(self, self.metadata))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PSFMap:
        """Read a map written by :meth:`save`."""
        kind, arrays, metadata = load_container(path, (KIND, STACK_KIND))
        if kind == STACK_KIND:
            frames = len(arrays.get("params", ()))
            raise ValueError(
                f"{str(path)!r} holds the PSF maps of {frames} frames: psfmap.load_psf_maps "
                "reads them, 'psfmap deblur --psf-map' applies them frame by frame"
            )
        return _single_map(path, arrays, metadata)

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        gy, gx = self.grid
        ranges = ", ".join(
            f"{name}∈[{self.params[..., k].min():.3g}, {self.params[..., k].max():.3g}]"
            for k, name in enumerate(self.names)
        )
        height, width = self.image_shape
        return (
            f"PSFMap({self.family.name!r}, grid={gy}x{gx}, image_shape={height}x{width}, "
            f"{ranges}, validity mean={self.validity.mean():.2f})"
        )


def _file_metadata(psf_map: PSFMap, user: Any) -> dict[str, Any]:
    """The header fields shared by map and map-stack files."""
    return {
        "family": psf_map.family.config(),
        "image_shape": list(psf_map.image_shape),
        "names": list(psf_map.names),
        "user": user,
    }


def _map_from_fields(
    path, metadata: Mapping[str, Any], params, validity, user, std=None
) -> PSFMap:
    """Build a map from the fields of a file; a missing field is a clear error."""
    try:
        if params is None:
            raise KeyError("params")
        return PSFMap(metadata["family"], params, metadata["image_shape"], validity=validity,
                      metadata=user or {}, std=std)
    except KeyError as missing:
        raise ValueError(f"{str(path)!r} is missing the field {missing}") from None


def _single_map(path, arrays: Mapping[str, Any], metadata: Mapping[str, Any]) -> PSFMap:
    """The map of a one-map file (kind ``psf_map``)."""
    return _map_from_fields(path, metadata, arrays.get("params"), arrays.get("validity"),
                            metadata.get("user"), arrays.get("std"))


def psf_map_list(maps: Any, action: str, name: str = "maps") -> list[PSFMap]:
    """``maps`` as a list, refused when empty (``no PSF maps to <action>``) or when an item
    is not a :class:`PSFMap` (``<name>[i] must be a PSFMap``)."""
    maps = list(maps)
    if not maps:
        raise ValueError(f"no PSF maps to {action}")
    for index, psf_map in enumerate(maps):
        if not isinstance(psf_map, PSFMap):
            raise TypeError(f"{name}[{index}] must be a PSFMap, got {describe(psf_map)}")
    return maps


def save_psf_maps(path: str | os.PathLike, maps: Sequence[PSFMap] | PSFMap) -> Path:
    """Write the PSF maps of the frames of a stack to one psfmap file (kind ``psf_map_stack``);
    one map (not in a list) is saved as :meth:`PSFMap.save` does, readable by both loaders.

    The maps must share their family, grid and image shape (as the maps that
    :func:`psfmap.estimate` gives for the frames of one stack do); each keeps its own
    parameters, validity and metadata. Read them back with :func:`load_psf_maps`.
    """
    if isinstance(maps, PSFMap):
        return maps.save(path)
    maps = psf_map_list(maps, "save")
    first = maps[0]
    for index, psf_map in enumerate(maps[1:], start=1):
        if psf_map.family.config() != first.family.config():
            raise ValueError(f"maps[{index}] is a {psf_map.family.name} map, maps[0] a "
                             f"{first.family.name} one: one file holds one family")
        if (psf_map.grid, psf_map.image_shape) != (first.grid, first.image_shape):
            raise ValueError(
                f"maps[{index}] has grid {psf_map.grid} over {psf_map.image_shape}, maps[0] "
                f"grid {first.grid} over {first.image_shape}: the maps of one file must match"
            )
    metadata = _file_metadata(first, [psf_map.metadata for psf_map in maps])
    arrays = {
        "params": np.stack([psf_map.params for psf_map in maps]),
        "validity": np.stack([psf_map.validity for psf_map in maps]),
    }
    if all(psf_map.std is not None for psf_map in maps):
        arrays["std"] = np.stack([psf_map.std for psf_map in maps])
    return save_container(path, STACK_KIND, arrays, metadata)


def load_psf_maps(path: str | os.PathLike) -> list[PSFMap]:
    """Read the maps written by :func:`save_psf_maps`, one per frame; a file written by
    :meth:`PSFMap.save` gives a list of one map."""
    kind, arrays, metadata = load_container(path, (KIND, STACK_KIND))
    if kind == KIND:
        return [_single_map(path, arrays, metadata)]
    params, validity, std = arrays.get("params"), arrays.get("validity"), arrays.get("std")
    if params is None or params.ndim != 4:
        raise ValueError(f"{str(path)!r} must hold params of shape (frames, gy, gx, N)")
    users = metadata.get("user") or [{}] * len(params)
    if any(field is not None and len(field) != len(params) for field in (validity, std)) or \
            len(users) != len(params):
        raise ValueError(f"{str(path)!r} is corrupted: its fields disagree on the frame count")
    return [
        _map_from_fields(path, metadata, params[index],
                         None if validity is None else validity[index], users[index],
                         None if std is None else std[index])
        for index in range(len(params))
    ]
