"""Spatially varying PSF-parameter fields over a ``gy × gx`` grid (or per pixel).

A *unit field* ``u(y, x) ∈ [0, 1]`` describes how blur varies over the field of view; it is
evaluated at the centres ``((r + ½)/n, (c + ½)/m)`` of an ``n × m`` grid in normalised field
coordinates, so the same field can be sampled on a coarse PSF grid (these are the cell centres
of :func:`psfmap.operators.from_psf_grid`) or on every pixel. :func:`parameter_field` maps
unit fields to the parameters of a PSF family, ``p = low + u (high − low)``.

Kinds:

* ``constant`` — the same PSF everywhere (``u = ½`` unless given);
* ``tilt`` — ``u`` linear along a direction: a tilted slide, whose defocus grows across the
  field;
* ``radial`` — ``u = (r / r_max)^power``: field curvature (defocus) and astigmatism growing
  off-axis; an astigmatism ``axis`` parameter follows the azimuth (sagittal astigmatism);
* ``smooth_random`` — a seeded sum of a few low-frequency cosines (a random smooth surface).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from psfmap._validation import check_int, check_pair, check_positive, check_seed

FIELDS = ("constant", "tilt", "radial", "smooth_random")


def _grid_shape(shape: Any) -> tuple[int, int]:
    return check_pair(shape, "grid", "(gy, gx)")


def field_coordinates(shape: Any) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates ``(y, x)`` in (0, 1) of the centres of an ``n × m`` grid."""
    rows, cols = _grid_shape(shape)
    y = (np.arange(rows) + 0.5) / rows
    x = (np.arange(cols) + 0.5) / cols
    return np.meshgrid(y, x, indexing="ij")


def constant(shape: Any, value: float = 0.5) -> np.ndarray:
    """Unit field equal to ``value`` everywhere."""
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"value must be in [0, 1], got {value!r}")
    return np.full(_grid_shape(shape), value)


def tilt(shape: Any, angle: float = 0.0) -> np.ndarray:
    """Unit field linear along direction ``angle`` (radians; 0 = increasing with x, π/2 = with
    y), 0 and 1 at the outermost grid centres: ``u ∝ x cos θ + y sin θ``."""
    y, x = field_coordinates(shape)
    projection = x * math.cos(angle) + y * math.sin(angle)
    span = projection.max() - projection.min()
    if span < 1e-12:
        return np.full(projection.shape, 0.5)
    return (projection - projection.min()) / span


def radial(shape: Any, power: float = 2.0, centre: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """Unit field growing off-axis: ``u = (r / r_max)^power``, ``r`` the distance to ``centre``
    (normalised field coordinates) and ``r_max`` the distance to the farthest field corner."""
    check_positive(power, "power")
    cy, cx = (float(v) for v in centre)
    y, x = field_coordinates(shape)
    radius = np.hypot(y - cy, x - cx)
    corners = [math.hypot(a - cy, b - cx) for a in (0.0, 1.0) for b in (0.0, 1.0)]
    return np.clip((radius / max(corners)) ** power, 0.0, 1.0)


def azimuth(shape: Any, centre: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """Azimuth ``θ ∈ [0, π)`` of every grid centre around ``centre`` (an axis, modulo π)."""
    cy, cx = (float(v) for v in centre)
    y, x = field_coordinates(shape)
    return np.mod(np.arctan2(y - cy, x - cx), np.pi)


def smooth_random(shape: Any, seed: Any = None, n_waves: int = 6,
                  max_frequency: float = 1.5) -> np.ndarray:
    """Seeded smooth random unit field, the same continuous surface at any sampling.

    ``u = ½ + ½ Σ_k a_k cos(2π f_k · p + φ_k) / Σ_k |a_k|`` with ``n_waves`` random waves of
    at most ``max_frequency`` cycles per field of view.
    """
    check_int(n_waves, "n_waves")
    check_positive(max_frequency, "max_frequency")
    rng = np.random.default_rng(check_seed(seed))
    frequencies = rng.uniform(-max_frequency, max_frequency, size=(n_waves, 2))
    phases = rng.uniform(0, 2 * np.pi, size=n_waves)
    amplitudes = rng.uniform(0.5, 1.0, size=n_waves)
    y, x = field_coordinates(shape)
    total = np.zeros_like(y)
    for (fy, fx), phase, amplitude in zip(frequencies, phases, amplitudes):
        total += amplitude * np.cos(2 * np.pi * (fy * y + fx * x) + phase)
    return 0.5 + 0.5 * total / amplitudes.sum()


def unit_field(kind: str, shape: Any, *, angle: float = 0.0, power: float = 2.0,
               value: float = 0.5, seed: int | None = None) -> np.ndarray:
    """Unit field of the named ``kind`` (one of ``FIELDS``) on an ``n × m`` grid."""
    if kind == "constant":
        return constant(shape, value)
    if kind == "tilt":
        return tilt(shape, angle)
    if kind == "radial":
        return radial(shape, power)
    if kind == "smooth_random":
        return smooth_random(shape, seed)
    raise ValueError(f"unknown field {kind!r}; expected one of {', '.join(FIELDS)}")


def parameter_field(
    family: Any,
    kind: str,
    shape: Any,
    *,
    low: Any = None,
    high: Any = None,
    angle: float = 0.0,
    power: float = 2.0,
    value: float = 0.5,
    seed: int | None = None,
) -> np.ndarray:
    """Parameters ``(n, m, N)`` of a PSF family varying over the field as ``kind``.

    Every parameter follows ``p = low + u (high − low)`` with the unit field ``u`` of ``kind``
    (``low``/``high`` default to the family's range). A parameter named ``axis`` (astigmatism
    axis, radians modulo π) instead follows the geometry: the azimuth for ``radial``, the tilt
    direction for ``tilt``, ``low`` for ``constant``. With ``smooth_random`` every parameter
    gets its own independent surface (all derived from ``seed``).

    Parameters
    ----------
    family : PSFFamily
        Object with ``names``, ``low`` and ``high`` (``psfmap.psf.model(name)``).
    kind : str
        ``constant``, ``tilt``, ``radial`` or ``smooth_random``.
    shape : (int, int)
        Grid ``(gy, gx)``, or the image shape for a per-pixel field.
    """
    names = tuple(family.names)
    low = np.asarray(family.low if low is None else low, dtype=np.float64)
    high = np.asarray(family.high if high is None else high, dtype=np.float64)
    for label, bound in (("low", low), ("high", high)):
        if bound.shape != (len(names),) or not np.all(np.isfinite(bound)):
            raise ValueError(
                f"{label} must be {len(names)} finite numbers for {names}, got {bound.tolist()}"
            )
    unit = unit_field(kind, shape, angle=angle, power=power, value=value, seed=seed)
    # smooth random fields: one independent surface per parameter, all from ``seed``
    child_seeds = np.random.SeedSequence(seed).spawn(len(names))
    layers = []
    for index, name in enumerate(names):
        span = high[index] - low[index]
        if kind == "smooth_random":
            layer = low[index] + smooth_random(shape, child_seeds[index]) * span
        elif name == "axis":
            if kind == "radial":
                layer = azimuth(shape)
            elif kind == "tilt":
                layer = np.full(unit.shape, math.fmod(angle, math.pi) % math.pi)
            else:
                layer = np.full(unit.shape, low[index])
        else:
            layer = low[index] + unit * span
        if name == "axis":
            layer = np.clip(layer, min(low[index], high[index]), max(low[index], high[index]))
        layers.append(layer)
    return np.stack(layers, axis=-1)
