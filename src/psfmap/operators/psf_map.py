"""A PSF map: a grid of PSF-model parameters over an image.

Cell ``(r, c)`` of a ``gy × gx`` map over an ``H × W`` image is centred at
``((r + ½) H / gy, (c + ½) W / gx)`` and holds the parameters of a parametric PSF family
(``psfmap.psf.model``) there, plus an optional validity in [0, 1] (e.g. the confidence of a
blind estimate). The blur it describes is the overlap-add operator
``from_psf_grid(family(params), image_shape)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psfmap._container import load_container, save_container
from psfmap._validation import as_tensor, check_finite, check_pair, describe
from psfmap.operators.grid import cell_centres, from_psf_grid
from psfmap.operators.product_convolution import ProductConvolution

KIND = "psf_map"


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

    def operator(
        self, image_shape: Any = None, *, dtype: torch.dtype | None = None, device: Any = None
    ) -> ProductConvolution:
        """The blur operator ``from_psf_grid(psfs, image_shape)`` (default: the map's own
        image shape); the map's metadata and family config travel with it."""
        shape = self.image_shape if image_shape is None else _image_shape(image_shape)
        operator = from_psf_grid(self.psfs(dtype=dtype, device=device), shape)
        operator.metadata.update(self.metadata)
        operator.metadata["psf_model"] = self.family.config()
        return operator

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the map to one self-describing psfmap file (kind ``psf_map``), atomically."""
        metadata = {
            "family": self.family.config(),
            "image_shape": list(self.image_shape),
            "names": list(self.names),
            "user": self.metadata,
        }
        return save_container(
            path, KIND, {"params": self.params, "validity": self.validity}, metadata
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> PSFMap:
        """Read a map written by :meth:`save`."""
        _, arrays, metadata = load_container(path, KIND)
        try:
            return cls(
                metadata["family"],
                arrays["params"],
                metadata["image_shape"],
                validity=arrays.get("validity"),
                metadata=metadata.get("user") or {},
            )
        except KeyError as missing:
            raise ValueError(f"{str(path)!r} is missing the field {missing}") from None

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
