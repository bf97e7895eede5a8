"""Depth from astigmatism: the axial position of a source from its local Z-3 PSF parameters.

Shajkofci & Liebling, "Spatially-variant CNN-based point spread function estimation for
blind deconvolution and depth estimation in optical microscopy", IEEE TIP 2020, Sec. V-D:
with a cylindrical lens in the detection path, a source above focus is blurred by a PSF
stretched along one diagonal and a source below focus along the other. The ``zernike3``
parameters of the local PSF — focus ``a1`` (RMS waves, >= 0) and astigmatism axis ``a3``
(radians, period π) — give a signed depth

    z = a1 (2 a3 / π − 1),

which an affine map ``z_µm = slope · z + intercept`` fitted on images at known depths turns
into micrometres (:func:`calibrate_depth`). The formula assumes the instrument's astigmatism
lies on the diagonals (axes π/4 and 3π/4); for another orientation the axis is first rotated
by ``axis_offset`` (``a3 ← (a3 − axis_offset) mod π``), which :func:`calibrate_depth` finds.

``formula="twin-invariant"`` is an alternative that is robust to a near-ambiguity of the Z-3
family (``benchmarks/eval_zernike3_twins.py``): the pupil phase ``a ρ² + b ρ² cos 2(θ − φ)``
of defocus ``a = 2√3 a1`` and astigmatism ``b = √6 C`` is ``(a + b) x'² + (a − b) y'²`` in
axes turned by φ, so (a1, C, φ) and its twin ``(C/√2, √2 a1, φ)`` give nearly the same blur
and a blind estimator often reports one for the other. Through a z-scan the defocus
changes sign and the instrument's astigmatism stays; the estimator reports ``|a|`` with the
axis turned by π/2 on one side of focus. ``s = (2√3 a1 + √6 C) cos 2(a3 − axis_offset)``
is the same for both twins and equals ``a + b sign(a)`` for an ideal scan, so

    z_µm = slope · s + step · sign(cos 2(a3 − axis_offset)) + intercept

is linear in the defocus once ``step`` (fitted too) cancels the jump ``2b`` at focus.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psfmap._container import load_container, save_container
from psfmap._validation import ArrayKind, as_tensor, check_finite

CALIBRATION_KIND = "depth_calibration"
VALIDITY_THRESHOLD = 0.5
DEPTH_FORMULAS = ("paper", "twin-invariant")


def _finite_offset(axis_offset: Any) -> float:
    """The axis offset as a finite number of radians (a NaN would make every depth NaN)."""
    if isinstance(axis_offset, (str, bytes, bool)):
        raise TypeError(f"axis_offset must be a number of radians, got {axis_offset!r}")
    try:
        value = float(axis_offset)
    except (TypeError, ValueError):
        raise TypeError(f"axis_offset must be a number of radians, got {axis_offset!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"axis_offset must be a finite number of radians, got {axis_offset!r}")
    return value


def astigmatic_depth(params: Any, axis_offset: float = 0.0) -> Any:
    """Raw depth ``z = a1 (2 ((a3 − axis_offset) mod π) / π − 1)`` from Z-3 parameters.

    Parameters
    ----------
    params : array or tensor (..., 3)
        ``(focus, cylinder, axis)`` as ordered by ``psfmap.psf.model("zernike3")``.
    axis_offset : float
        Rotation of the astigmatism axis (radians) applied before the formula; 0 gives the
        formula of Shajkofci & Liebling (2020) as published.

    Returns
    -------
    Same kind as ``params``, shape (...): depth in the model's units (not micrometres).
    """
    kind = ArrayKind(params)
    tensor = _z3_params(params)
    focus, axis = tensor[..., 0], tensor[..., 2]
    axis = torch.remainder(axis - _finite_offset(axis_offset), math.pi)
    return kind.restore(focus * (2 * axis / math.pi - 1))


def twin_invariant_depth(params: Any, axis_offset: float = 0.0) -> tuple[Any, Any]:
    """Raw depth ``s = (2√3 a1 + √6 C) cos 2(a3 − axis_offset)`` and the side of focus
    ``sign(cos 2(a3 − axis_offset))`` from Z-3 parameters ``(..., 3)`` (module docstring).

    ``axis_offset`` is here the axis of the instrument's astigmatism itself (the published
    formula's offset 0 puts it on the diagonal π/4); :func:`best_axis_offset` finds it.
    Returns two arrays of shape (...), the same kind as ``params``.
    """
    kind = ArrayKind(params)
    tensor = _z3_params(params)
    focus, cylinder, axis = tensor.unbind(-1)
    turn = torch.cos(2 * (axis - _finite_offset(axis_offset)))
    raw = (2 * math.sqrt(3) * focus + math.sqrt(6) * cylinder) * turn
    return kind.restore(raw), kind.restore(torch.sign(turn))


def _z3_params(params: Any) -> torch.Tensor:
    tensor = check_finite(as_tensor(params, "params"), "params")
    if tensor.ndim < 1 or tensor.shape[-1] != 3:
        raise ValueError(
            f"params must have shape (..., 3) (focus, cylinder, axis), got {tuple(tensor.shape)}"
        )
    return tensor


def check_formula(formula: str) -> str:
    if formula not in DEPTH_FORMULAS:
        raise ValueError(f"formula must be one of {DEPTH_FORMULAS}, got {formula!r}")
    return formula


@dataclass
class DepthCalibration:
    """Map from Z-3 parameters to micrometres: ``z_µm = slope · z + intercept`` of the raw
    depth ``z`` of :func:`astigmatic_depth` (``formula="paper"``), or ``slope · s + step ·
    sign + intercept`` of :func:`twin_invariant_depth` (``formula="twin-invariant"``).

    Attributes
    ----------
    slope, intercept : float
        Affine coefficients.
    axis_offset : float
        Axis rotation (radians) applied before the formula.
    formula : str
        ``"paper"`` or ``"twin-invariant"``.
    step : float
        Coefficient of the side-of-focus term (``"twin-invariant"`` only; 0 otherwise).
    model : str
        The PSF model whose parameters are used.
    z_range : (float, float)
        Range of the calibration depths (µm).
    rms_error : float
        Root-mean-square residual of the fit on the calibration data (µm).
    metadata : dict
        Anything else (window, number of images, source file...).
    """

    slope: float
    intercept: float
    axis_offset: float = 0.0
    model: str = "zernike3"
    z_range: tuple[float, float] = (0.0, 0.0)
    rms_error: float = float("nan")
    metadata: dict = field(default_factory=dict)
    formula: str = "paper"
    step: float = 0.0

    def __post_init__(self) -> None:
        check_formula(self.formula)

    def apply(self, raw_depth: Any) -> Any:
        """Convert raw depths of :func:`astigmatic_depth` to micrometres (``"paper"`` only)."""
        if self.formula != "paper":
            raise ValueError(
                f"a {self.formula!r} calibration needs the Z-3 parameters: use .depth(params)"
            )
        if isinstance(raw_depth, torch.Tensor):
            return raw_depth * self.slope + self.intercept
        return np.asarray(raw_depth, dtype=np.float64) * self.slope + self.intercept

    def depth(self, params: Any) -> Any:
        """Depth in micrometres from Z-3 parameters ``(..., 3)``."""
        if self.formula == "paper":
            return self.apply(astigmatic_depth(params, self.axis_offset))
        raw, side = twin_invariant_depth(params, self.axis_offset)
        return raw * self.slope + side * self.step + self.intercept

    def save(self, path: str | Path) -> Path:
        """Write the calibration to one self-describing psfmap file (atomic)."""
        metadata = {
            "slope": float(self.slope),
            "intercept": float(self.intercept),
            "axis_offset": float(self.axis_offset),
            "formula": self.formula,
            "step": float(self.step),
            "model": self.model,
            "z_range": [float(v) for v in self.z_range],
            "rms_error": None if not np.isfinite(self.rms_error) else float(self.rms_error),
            "extra": dict(self.metadata),
        }
        return save_container(path, CALIBRATION_KIND, {}, metadata)

    @classmethod
    def load(cls, path: str | Path) -> DepthCalibration:
        """Read a file written by :meth:`save` (clear ``ValueError`` for any other file)."""
        _, _, metadata = load_container(path, CALIBRATION_KIND)
        try:
            rms = metadata.get("rms_error")
            return cls(
                slope=float(metadata["slope"]),
                intercept=float(metadata["intercept"]),
                axis_offset=float(metadata.get("axis_offset", 0.0)),
                model=str(metadata.get("model", "zernike3")),
                z_range=tuple(float(v) for v in metadata.get("z_range", (0.0, 0.0))),
                rms_error=float("nan") if rms is None else float(rms),
                metadata=dict(metadata.get("extra", {})),
                formula=check_formula(str(metadata.get("formula", "paper"))),
                step=float(metadata.get("step", 0.0)),
            )
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{str(path)!r} holds a corrupted depth calibration") from None


def fit_depth_calibration(
    raw_depths: Any,
    z_um: Any,
    *,
    axis_offset: float = 0.0,
    model: str = "zernike3",
    side: Any = None,
) -> DepthCalibration:
    """Least-squares fit ``z_um ≈ slope · raw + intercept`` (``+ step · side`` when given).

    Parameters
    ----------
    raw_depths, z_um : 1-D arrays of equal length (at least as many as the fitted numbers:
        2, or 3 with ``side``; neither all equal). With no more points than that the fit is
        exact and ``rms_error`` 0 says nothing.
        Raw depths of :func:`astigmatic_depth`, or ``s`` of :func:`twin_invariant_depth`.
    side : 1-D array, optional
        The side of focus of :func:`twin_invariant_depth`: fits a ``"twin-invariant"``
        calibration.

    Returns
    -------
    DepthCalibration
    """
    raw = np.asarray(raw_depths, dtype=np.float64).reshape(-1)
    z = np.asarray(z_um, dtype=np.float64).reshape(-1)
    if raw.shape != z.shape:
        raise ValueError(
            f"z_um must have one depth per raw depth ({raw.size}), got {z.size} values"
        )
    unknowns = 2 if side is None else 3
    if raw.size < unknowns:
        raise ValueError(f"this calibration fits {unknowns} numbers and needs at least "
                         f"{unknowns} depths, got {raw.size}")
    if not (np.all(np.isfinite(raw)) and np.all(np.isfinite(z))):
        raise ValueError("raw depths and z_um must be finite numbers")
    if np.ptp(z) == 0:
        raise ValueError("every z_um is the same; a depth calibration needs images at several "
                         "known depths")
    if np.ptp(raw) == 0:
        raise ValueError(
            "every raw depth is the same; the images do not resolve depth, so no affine "
            "calibration can be fitted"
        )
    columns = [raw, np.ones_like(raw)]
    if side is not None:
        side = np.asarray(side, dtype=np.float64).reshape(-1)
        if side.shape != raw.shape or not np.all(np.isfinite(side)):
            raise ValueError(f"side must be {raw.size} finite numbers, got shape {side.shape}")
        columns.append(side)
    design = np.stack(columns, axis=1)
    coefficients, *_ = np.linalg.lstsq(design, z, rcond=None)
    residual = design @ coefficients - z
    return DepthCalibration(
        slope=float(coefficients[0]),
        intercept=float(coefficients[1]),
        axis_offset=float(axis_offset),
        model=model,
        z_range=(float(z.min()), float(z.max())),
        rms_error=float(np.sqrt(np.mean(residual**2))),
        metadata={"n_points": int(raw.size)},
        formula="paper" if side is None else "twin-invariant",
        step=0.0 if side is None else float(coefficients[2]),
    )


def fit_depth(
    params: Any, z_um: Any, *, axis_offset: float = 0.0, formula: str = "paper",
    model: str = "zernike3",
) -> DepthCalibration:
    """Fit a calibration of ``formula`` from Z-3 parameters ``(n, 3)`` at known depths."""
    if check_formula(formula) == "paper":
        return fit_depth_calibration(astigmatic_depth(params, axis_offset), z_um,
                                     axis_offset=axis_offset, model=model)
    raw, side = twin_invariant_depth(params, axis_offset)
    return fit_depth_calibration(raw, z_um, axis_offset=axis_offset, model=model, side=side)


def best_axis_offset(
    params: np.ndarray, z_um: np.ndarray, steps: int = 36, formula: str = "paper"
) -> float:
    """Axis rotation in ``[0, π)`` for which the fit of depth has the smallest error."""
    check_formula(formula)
    best, best_error = 0.0, math.inf
    for offset in np.arange(steps) * math.pi / steps:
        raw = (astigmatic_depth(params, offset) if formula == "paper"
               else twin_invariant_depth(params, offset)[0])
        if np.ptp(raw) == 0:
            continue
        error = fit_depth(params, z_um, axis_offset=offset, formula=formula).rms_error
        if error < best_error - 1e-12:
            best, best_error = float(offset), error
    return best


def depth_images_needed(formula: str, search_axis: bool = True) -> int:
    """Fewest images for a calibration with a residual: one more than the numbers it fits
    (slope and intercept, the step of ``"twin-invariant"``, the axis offset when searched)."""
    return (2 if formula == "paper" else 3) + int(search_axis) + 1


def fit_psf_params(
    patches: Any,
    family: Any,
    *,
    steps: Sequence[int] = (9, 7, 12),
    refine: int = 2,
    refine_points: int = 3,
) -> np.ndarray:
    """Model-based alternative to the CNN: least-squares PSF parameters of bead patches.

    For each patch ``y`` (a single bead, centred) and each parameter vector ``θ`` of a grid
    over ``[family.low, family.high]``, the model ``a · k_θ + b`` (amplitude, background) is
    fitted in closed form and ``θ`` minimising ``‖y − a k_θ − b‖²`` is kept; ``refine``
    rounds of a finer grid around the best point follow.

    Parameters
    ----------
    patches : array (B, s, s)
        Bead patches of the family's kernel size ``s``.
    family : PSFFamily
        E.g. ``psfmap.psf.model("zernike3", na=..., wavelength=..., pixel_size=...)``.
    steps : ints
        Grid points per parameter.
    refine : int
        Refinement rounds (each halves the grid span around the current best).
    refine_points : int
        Grid points per parameter in a refinement round.

    Returns
    -------
    ndarray (B, N) of parameters.
    """
    data = np.asarray(patches, dtype=np.float64)
    if data.ndim != 3 or data.shape[1:] != (family.size, family.size):
        raise ValueError(
            f"patches must have shape (B, {family.size}, {family.size}), got {data.shape}"
        )
    if len(steps) != family.n_params:
        raise ValueError(f"steps must give one count per parameter {family.names}, got {steps}")
    low = np.asarray(family.low, dtype=np.float64)
    high = np.asarray(family.high, dtype=np.float64)
    y = data.reshape(data.shape[0], -1)
    y_centred = y - y.mean(1, keepdims=True)
    grids = [np.linspace(lo, hi, n) for lo, hi, n in zip(low, high, steps)]
    best = _grid_search(family, y_centred, grids)
    span = (high - low) / (np.asarray(steps) - 1).clip(1)
    for _ in range(refine):
        best = np.concatenate([
            _grid_search(
                family,
                y_centred[i:i + 1],
                [np.unique(np.clip(np.linspace(c - s, c + s, refine_points), lo, hi))
                 for c, s, lo, hi in zip(row, span, low, high)],
            )
            for i, row in enumerate(best)
        ])
        span = span / 2
    return best


def _grid_search(
    family: Any, y_centred: np.ndarray, grids: list[np.ndarray], chunk: int = 128
) -> np.ndarray:
    """Best grid point per row of ``y_centred`` (B, s²) for the model ``a k_θ + b``, a >= 0.

    The residual of the best ``a, b`` is ``|y_c|² − max(<y_c, k_c>, 0)² / |k_c|²`` (``_c``:
    mean removed), so minimising it maximises the explained energy.
    """
    mesh = np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1).reshape(-1, len(grids))
    best_value = np.full(y_centred.shape[0], -np.inf)
    best_index = np.zeros(y_centred.shape[0], dtype=np.int64)
    for start in range(0, len(mesh), chunk):  # bounded memory for large grids
        with torch.no_grad():
            kernels = family(torch.from_numpy(mesh[start:start + chunk])).double()
        kernels = kernels.reshape(kernels.shape[0], -1).numpy()
        k_centred = kernels - kernels.mean(1, keepdims=True)
        k_energy = np.maximum((k_centred**2).sum(1), 1e-30)
        cross = y_centred @ k_centred.T
        explained = np.where(cross > 0, cross**2 / k_energy[None, :], 0.0)
        index = explained.argmax(1)
        value = explained[np.arange(len(index)), index]
        better = value > best_value
        best_value[better] = value[better]
        best_index[better] = index[better] + start
    return mesh[best_index]
