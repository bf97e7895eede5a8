"""Named parametric PSF families (Shajkofci & Liebling, IEEE TIP 2020, Table II).

| name        | parameters                 | model                                           |
|-------------|----------------------------|-------------------------------------------------|
| ``gaussian1`` | width                    | isotropic Gaussian, σ in px (G-1)               |
| ``gaussian2`` | width_x, width_y         | axis-aligned anisotropic Gaussian (G-2)         |
| ``zernike1``  | focus                    | defocus ``a4`` in RMS waves (Z-1)               |
| ``zernike2``  | cylinder, axis           | astigmatism power and axis (Z-2)                |
| ``zernike3``  | focus, cylinder, axis    | defocus + astigmatism (Z-3)                     |
| ``zernike7``  | a4 … a10                 | Noll 4–10 in [−0.15, 0.15] waves (Deep-Blur)    |

Astigmatism of power ``C`` along ``axis`` φ is ``C √6 ρ² cos 2(θ − φ)``, i.e. Noll
``a6 = C cos 2φ`` and ``a5 = C sin 2φ``; it is periodic in φ with period π. The default
ranges keep the largest PSF inside the default 33 × 33 window; pass ``low``/``high`` or
optics keywords to :func:`model` to change them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from psfmap._validation import as_tensor, check_finite, check_int, check_positive, describe
from psfmap.psf.gaussian import gaussian_batch
from psfmap.psf.zernike import zernike_batch

DEFAULT_SIZE = 33
_EVALUATION_BATCH = 64
DEFAULT_OPTICS = {"na": 0.8, "wavelength": 0.55, "pixel_size": 0.2, "immersion_index": 1.0}

# name -> (parameter names, default low, default high, kind)
_CATALOGUE: dict[str, tuple[tuple[str, ...], tuple[float, ...], tuple[float, ...], str]] = {
    "gaussian1": (("width",), (0.5,), (4.0,), "gaussian"),
    "gaussian2": (("width_x", "width_y"), (0.5, 0.5), (4.0, 4.0), "gaussian"),
    "zernike1": (("focus",), (0.0,), (0.4,), "zernike"),
    "zernike2": (("cylinder", "axis"), (0.0, 0.0), (0.3, np.pi), "zernike"),
    "zernike3": (("focus", "cylinder", "axis"), (0.0, 0.0, 0.0), (0.4, 0.3, np.pi), "zernike"),
    # Noll 4-10 (defocus, astigmatisms, comas, trefoils) as plain coefficients: the linear
    # family of the Deep-Blur Zernike example (Debarnot & Weiss)
    "zernike7": (("a4", "a5", "a6", "a7", "a8", "a9", "a10"), (-0.15,) * 7, (0.15,) * 7,
                 "zernike"),
}
FAMILIES = tuple(_CATALOGUE)


def _zernike_coefficients(name: str, params: torch.Tensor) -> torch.Tensor:
    """Map family parameters ``(B, N)`` to Noll coefficients ``(B, 6)`` (j = 1..6), or
    ``(B, 10)`` (j = 1..10) for ``zernike7``."""
    if name == "zernike7":
        return torch.cat([params.new_zeros(params.shape[0], 3), params], dim=1)
    coefficients = params.new_zeros(params.shape[0], 6)
    if name == "zernike1":
        coefficients[:, 3] = params[:, 0]
        return coefficients
    offset = 1 if name == "zernike3" else 0
    if name == "zernike3":
        coefficients[:, 3] = params[:, 0]
    cylinder, axis = params[:, offset], params[:, offset + 1]
    coefficients[:, 4] = cylinder * torch.sin(2 * axis)
    coefficients[:, 5] = cylinder * torch.cos(2 * axis)
    return coefficients


class PSFFamily:
    """A parametric PSF model: ``family(params (B, N)) -> PSFs (B, size, size)``.

    Attributes
    ----------
    name : str
        Catalogue name (``gaussian1`` ... ``zernike3``).
    names : tuple of str
        Parameter names, in column order.
    units : tuple of str
        Unit of each parameter (``"px"``, ``"waves RMS"`` or ``"rad"``).
    low, high : np.ndarray
        Admissible range of each parameter (used for sampling and for normalising regressions).
    size : int
        PSF window side in pixels (odd).
    optics : dict
        ``na``, ``wavelength`` (µm), ``pixel_size`` (µm), ``immersion_index`` for Zernike
        families; empty for Gaussian ones (widths are in pixels).
    """

    def __init__(
        self,
        name: str,
        *,
        size: int = DEFAULT_SIZE,
        low: Sequence[float] | None = None,
        high: Sequence[float] | None = None,
        optics: Mapping[str, float] | None = None,
    ):
        if name not in _CATALOGUE:
            raise ValueError(f"unknown PSF model {name!r}; expected one of {', '.join(FAMILIES)}")
        if check_int(size, "size", minimum=3) % 2 == 0:
            raise ValueError(f"size must be an odd integer >= 3, got {size!r}")
        size = int(size)
        names, default_low, default_high, kind = _CATALOGUE[name]
        self.name = name
        self.names = names
        self.kind = kind
        self.size = size
        self.low = self._range(low, default_low, "low")
        self.high = self._range(high, default_high, "high")
        if np.any(self.high < self.low):
            raise ValueError(f"high must be >= low, got low={self.low}, high={self.high}")
        if kind == "gaussian" and np.any(self.low <= 0):
            raise ValueError(f"Gaussian widths must be > 0 px, got low={self.low}")
        self.optics: dict[str, float] = {}
        if kind == "zernike":
            merged = {**DEFAULT_OPTICS, **dict(optics or {})}
            unknown = set(merged) - set(DEFAULT_OPTICS)
            if unknown:
                raise ValueError(f"unknown optics keywords {sorted(unknown)}")
            self.optics = {k: check_positive(v, k) for k, v in merged.items()}
            if self.optics["na"] > self.optics["immersion_index"]:
                raise ValueError("na cannot exceed immersion_index")
        elif optics:
            raise ValueError(f"the {name} model takes no optics keywords, got {sorted(optics)}")

    def _range(self, values, default, label) -> np.ndarray:
        array = np.asarray(default if values is None else values, dtype=np.float64)
        if array.shape != (len(self.names),) or not np.all(np.isfinite(array)):
            raise ValueError(
                f"{label} must be {len(self.names)} finite numbers for {self.names}, got {values!r}"
            )
        return array

    @property
    def n_params(self) -> int:
        return len(self.names)

    @property
    def units(self) -> tuple[str, ...]:
        """Unit of each parameter: ``"px"`` (Gaussian widths), ``"waves RMS"`` (Zernike
        coefficients and astigmatism power), ``"rad"`` (astigmatism axis)."""
        if self.kind == "gaussian":
            return ("px",) * self.n_params
        return tuple("rad" if name == "axis" else "waves RMS" for name in self.names)

    def __repr__(self) -> str:
        ranges = ", ".join(
            f"{n}∈[{lo:g}, {hi:g}]" for n, lo, hi in zip(self.names, self.low, self.high)
        )
        return f"PSFFamily({self.name!r}, size={self.size}, {ranges})"

    def __call__(self, params: Any) -> torch.Tensor:
        """Evaluate the PSFs of a batch of parameters ``(B, N)`` (or one ``(N,)`` vector)."""
        tensor = check_finite(as_tensor(params, "params"), "params")
        single = tensor.ndim == 1
        batch = tensor[None] if single else tensor
        if batch.ndim != 2 or batch.shape[1] != self.n_params:
            raise ValueError(
                f"params must have shape (B, {self.n_params}) for {self.names}, "
                f"got {tuple(tensor.shape)}"
            )
        if batch.shape[0] == 0:  # no PSFs (the FFT backends refuse an empty batch)
            return batch.new_zeros((0, self.size, self.size))
        # a few dozen PSFs at a time: each one is rendered supersampled (Gaussian) or through a
        # padded pupil (Zernike), 0.5-2.5 MB of temporaries per PSF; each block is copied
        # out at once, as it may be a view that keeps its padded buffer alive
        psfs = self._evaluate(batch[:_EVALUATION_BATCH])
        if batch.shape[0] > _EVALUATION_BATCH:
            first, psfs = psfs, psfs.new_empty((batch.shape[0],) + tuple(psfs.shape[1:]))
            psfs[:_EVALUATION_BATCH] = first
            for start in range(_EVALUATION_BATCH, batch.shape[0], _EVALUATION_BATCH):
                psfs[start : start + _EVALUATION_BATCH] = self._evaluate(
                    batch[start : start + _EVALUATION_BATCH])
        return psfs[0] if single else psfs

    def _evaluate(self, batch: torch.Tensor) -> torch.Tensor:
        if self.kind == "gaussian":
            if bool((batch <= 0).any()):
                raise ValueError("Gaussian widths must be > 0 px")
            width_x = batch[:, 0]
            width_y = batch[:, 1] if self.n_params == 2 else batch[:, 0]
            return gaussian_batch(self.size, width_x, width_y, torch.zeros_like(width_x))
        optics = self.optics
        return zernike_batch(
            self.size,
            _zernike_coefficients(self.name, batch),
            na=optics["na"],
            wavelength=optics["wavelength"],
            pixel_size=optics["pixel_size"],
        )

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype | None = None,
        bounds: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` parameter vectors uniformly in ``[low, high]`` -> ``(n, N)``; replayable.

        ``bounds = (low, high)`` (arrays of length N) replaces the family range, e.g. to train
        a little beyond it; the same generator state gives the same unit draws either way.
        """
        n = check_int(n, "n", minimum=0)
        dtype = dtype or torch.get_default_dtype()
        unit = torch.rand(n, self.n_params, generator=generator, dtype=torch.float64)
        low, high = (self.low, self.high) if bounds is None else bounds
        low = torch.as_tensor(np.asarray(low, dtype=np.float64))
        high = torch.as_tensor(np.asarray(high, dtype=np.float64))
        return (low + unit * (high - low)).to(dtype)

    def normalize(self, params: torch.Tensor) -> torch.Tensor:
        """Map parameters to ``[0, 1]`` over the family range (constant ranges map to 0)."""
        low = torch.as_tensor(self.low, dtype=params.dtype, device=params.device)
        span = torch.as_tensor(self.high - self.low, dtype=params.dtype, device=params.device)
        return (params - low) / torch.where(span > 0, span, torch.ones_like(span))

    def denormalize(self, unit: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`."""
        low = torch.as_tensor(self.low, dtype=unit.dtype, device=unit.device)
        span = torch.as_tensor(self.high - self.low, dtype=unit.dtype, device=unit.device)
        return low + unit * span

    @property
    def periodic(self) -> list:
        """``[[cylinder, axis]]`` column pairs whose axis spans one period π (else ``[]``)."""
        if "cylinder" in self.names and "axis" in self.names:
            axis = self.names.index("axis")
            if np.isclose(self.high[axis] - self.low[axis], np.pi, rtol=1e-6, atol=0.0):
                return [[self.names.index("cylinder"), axis]]
        return []

    def _columns(self, values: Any, name: str) -> np.ndarray:
        """A float64 copy of ``values (..., N)``, N the family's number of parameters."""
        array = np.array(values, dtype=np.float64, copy=True)
        if array.ndim < 1 or array.shape[-1] != self.n_params:
            raise ValueError(f"{name} must have shape (..., {self.n_params}) for {self.names}, "
                             f"got {array.shape}")
        return array

    def to_linear(self, params: Any) -> np.ndarray:
        r"""Parameters ``(..., N)`` -> coordinates in which they can be averaged ``(..., N)``.

        An astigmatism axis is periodic (φ and φ + π are the same PSF), so averaging, median
        filtering or interpolating it as a number is wrong near the wrap: cells at 0.05 and
        π − 0.05 rad, both nearly horizontal, average to a vertical axis. Each periodic
        (cylinder ``C``, axis ``φ``) pair is therefore replaced by the Noll coefficients
        ``(a6, a5) = (C cos 2φ, C sin 2φ)``, linear in the pupil phase, so a mean of
        coefficients is the phase of the mean aberration. Other columns are unchanged
        (identity for Gaussian and defocus-only families). :meth:`from_linear` inverts it.
        """
        values = self._columns(params, "params")
        for magnitude, angle in self.periodic:
            cylinder, axis = values[..., magnitude].copy(), values[..., angle].copy()
            values[..., magnitude] = cylinder * np.cos(2 * axis)
            values[..., angle] = cylinder * np.sin(2 * axis)
        return values

    def from_linear(self, values: Any) -> np.ndarray:
        """Inverse of :meth:`to_linear`: ``C = |(a6, a5)|``, ``φ`` back in ``[low, low + π)``."""
        params = self._columns(values, "values")
        for magnitude, angle in self.periodic:
            cosine, sine = params[..., magnitude].copy(), params[..., angle].copy()
            low = float(self.low[angle])
            params[..., magnitude] = np.hypot(cosine, sine)
            params[..., angle] = low + np.remainder(0.5 * np.arctan2(sine, cosine) - low, np.pi)
        return params

    def config(self) -> dict[str, Any]:
        """JSON-able description; :func:`model_from_config` rebuilds the family."""
        return {
            "name": self.name,
            "size": self.size,
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "optics": dict(self.optics),
        }


def model(
    name: str,
    *,
    size: int | None = None,
    low: Sequence[float] | None = None,
    high: Sequence[float] | None = None,
    **optics: float,
) -> PSFFamily:
    """The named parametric PSF family (see the module table).

    Examples
    --------
    >>> family = model("zernike3")
    >>> family.names
    ('focus', 'cylinder', 'axis')
    >>> family(family.sample(4)).shape
    torch.Size([4, 33, 33])
    """
    return PSFFamily(name, size=DEFAULT_SIZE if size is None else size, low=low, high=high,
                     optics=optics or None)


def model_from_config(config: Mapping[str, Any]) -> PSFFamily:
    """Rebuild a family from :meth:`PSFFamily.config` output."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a PSF model config (a dict from PSFFamily.config()), "
                        f"got {describe(config)}")
    try:
        return PSFFamily(
            config["name"],
            size=int(config["size"]),
            low=config.get("low"),
            high=config.get("high"),
            optics=config.get("optics") or None,
        )
    except KeyError as missing:
        raise ValueError(f"PSF model config lacks the field {missing}") from None
