"""Sharp samples to blur: synthetic cells, random points, beads, natural textures, and the
bundled real confocal image.

Every generator returns float64 NumPy images with values in [0, 1] (beads and points: their
amplitudes) and takes a ``seed`` (int, ``numpy.random.Generator`` or ``None``).
"""

from __future__ import annotations

from importlib import resources
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from psfmap._validation import check_pair, check_seed

BUNDLED = {
    "neuron": "confocal_neuron_mip.tif",
    "beads": "psfextractor_beads_crop.ome.tif",
    "measurement": "rdmpy_measurement_crop.tif",
}
TEXTURES = ("camera", "astronaut", "coffee", "brick", "grass", "gravel", "moon", "text",
            "coins", "page", "rocket", "cat")


def _shape(shape: Any, name: str = "shape") -> tuple[int, int]:
    return check_pair(shape, name)


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _amplitude_range(amplitude: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in amplitude)
    except (TypeError, ValueError):
        raise ValueError(f"amplitude must be a pair (low, high), got {amplitude!r}") from None
    if not (np.isfinite(low) and np.isfinite(high)) or low <= 0 or high < low:
        raise ValueError(f"amplitude must satisfy 0 < low <= high, got {amplitude!r}")
    return low, high


class Beads(NamedTuple):
    """Sub-resolution beads: ``image`` (H, W), integer ``positions`` (n, 2) as (row, col),
    and ``amplitudes`` (n,) (each bead is one pixel of that value)."""

    image: np.ndarray
    positions: np.ndarray
    amplitudes: np.ndarray


def beads(
    shape: Any = (128, 128),
    n_beads: int = 20,
    *,
    min_separation: float = 16.0,
    margin: int = 8,
    amplitude: tuple[float, float] = (0.5, 1.0),
    seed: Any = None,
) -> Beads:
    """Isolated point-like beads at least ``min_separation`` px apart.

    Beads are single pixels (sub-resolution: smaller than any PSF), placed by dart throwing
    at least ``margin`` px from the border. Fewer than ``n_beads`` are returned when the field
    cannot hold that many at this separation (the count is ``len(positions)``).

    Returns
    -------
    Beads
        ``image``, ``positions`` (n, 2) int (row, col), ``amplitudes`` (n,) uniform in
        ``amplitude``.
    """
    height, width = _shape(shape)
    n_beads = _count(n_beads, "n_beads")
    margin = _count(margin, "margin")
    low, high = _amplitude_range(amplitude)
    if not np.isfinite(min_separation) or min_separation < 0:
        raise ValueError(f"min_separation must be a finite number >= 0, got {min_separation!r}")
    if 2 * margin >= min(height, width):
        raise ValueError(f"margin {margin} leaves no room in a {height}x{width} field")
    rng = np.random.default_rng(check_seed(seed))
    positions: list[tuple[int, int]] = []
    for _ in range(max(100, 50 * n_beads)):
        if len(positions) == n_beads:
            break
        candidate = (int(rng.integers(margin, height - margin)),
                     int(rng.integers(margin, width - margin)))
        if all(np.hypot(candidate[0] - r, candidate[1] - c) >= min_separation
               for r, c in positions):
            positions.append(candidate)
    coordinates = np.array(positions, dtype=np.int64).reshape(-1, 2)
    amplitudes = rng.uniform(low, high, size=len(coordinates))
    image = np.zeros((height, width))
    image[coordinates[:, 0], coordinates[:, 1]] = amplitudes
    return Beads(image, coordinates, amplitudes)


def random_points(
    shape: Any = (128, 128),
    density: float = 0.002,
    *,
    amplitude: tuple[float, float] = (0.2, 1.0),
    seed: Any = None,
) -> np.ndarray:
    """Dense random point sources (single pixels, no separation constraint), e.g. a field of
    molecules or vesicles: each pixel is a point with probability ``density``."""
    height, width = _shape(shape)
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    low, high = _amplitude_range(amplitude)
    rng = np.random.default_rng(check_seed(seed))
    mask = rng.random((height, width)) < density
    return np.where(mask, rng.uniform(low, high, size=(height, width)), 0.0)


def cells(
    shape: Any = (128, 128),
    n_cells: int = 12,
    *,
    radius: tuple[float, float] = (8.0, 18.0),
    seed: Any = None,
) -> np.ndarray:
    """Synthetic fluorescent cells: elliptical cytoplasm with a fine texture (filaments and
    vesicles), a bright membrane rim and a dimmer nucleus, smoothed below the pixel scale.

    Returns an image in [0, 1] of the given ``shape``.
    """
    height, width = _shape(shape)
    n_cells = _count(n_cells, "n_cells")
    try:
        r_low, r_high = (float(v) for v in radius)
    except (TypeError, ValueError):
        raise ValueError(f"radius must be a pair (low, high), got {radius!r}") from None
    if r_low <= 0 or r_high < r_low:
        raise ValueError(f"radius must satisfy 0 < low <= high, got {radius!r}")
    rng = np.random.default_rng(check_seed(seed))
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width))
    texture = ndimage.gaussian_filter(rng.random((height, width)), 1.0)
    texture = (texture - texture.min()) / max(np.ptp(texture), 1e-12)
    for _ in range(n_cells):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        a, b = rng.uniform(r_low, r_high, size=2)
        theta = rng.uniform(0, np.pi)
        dy, dx = rows - cy, cols - cx
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
        r = np.hypot(u, v)
        brightness = rng.uniform(0.4, 1.0)
        cytoplasm = (r < 1.0) * (0.35 + 0.65 * texture)
        membrane = np.exp(-(((r - 1.0) * min(a, b)) ** 2) / 2.0)
        nucleus_r = np.hypot(u - rng.uniform(-0.2, 0.2), v - rng.uniform(-0.2, 0.2)) / 0.45
        nucleus = (nucleus_r < 1.0) * 0.5
        cell = brightness * np.maximum(cytoplasm - nucleus * 0.5, 0) + brightness * membrane
        image = np.maximum(image, cell)
    vesicles = random_points((height, width), density=0.003, seed=rng) * (image > 0.1)
    image = ndimage.gaussian_filter(image + vesicles, 0.5)
    peak = image.max()
    return image / peak if peak > 0 else image


def texture(name: str = "camera", shape: Any = None) -> np.ndarray:
    """A natural image from scikit-image's bundled data (offline), grey, in [0, 1].

    Parameters
    ----------
    name : str
        One of ``TEXTURES`` (``camera``, ``astronaut``, ``coffee``, ``brick``, ``grass``,
        ``gravel``, ...). Colour images are converted to luminance.
    shape : (int, int), optional
        Centre crop to this shape (resized first, preserving the aspect ratio, when the image
        is smaller).
    """
    import skimage.data
    from skimage.color import rgb2gray, rgba2rgb
    from skimage.transform import resize

    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}; expected one of {', '.join(TEXTURES)}")
    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 3:
        image = rgb2gray(rgba2rgb(image) if image.shape[-1] == 4 else image)
    image = image.astype(np.float64)
    image = (image - image.min()) / max(np.ptp(image), 1e-12)
    if shape is None:
        return image
    height, width = _shape(shape)
    factor = max(height / image.shape[0], width / image.shape[1])
    if factor > 1:
        new_shape = (int(np.ceil(image.shape[0] * factor)), int(np.ceil(image.shape[1] * factor)))
        image = resize(image, new_shape, order=1, anti_aliasing=False)
    top = (image.shape[0] - height) // 2
    left = (image.shape[1] - width) // 2
    return np.clip(image[top:top + height, left:left + width], 0.0, 1.0)


def bundled_sample(name: str = "neuron") -> np.ndarray:
    """Real sharp fluorescence image shipped with psfmap, as float64 in [0, 1].

    The background offset is removed (minimum subtracted) and the image scaled to [0, 1].

    Parameters
    ----------
    name : str
        ``"neuron"``: 256 × 256 maximum-intensity projection of a confocal stack of a
        Purkinje neuron (Cell Image Library 10106–10108, via hammerlab/flowdec, Apache-2.0);
        ``"measurement"``: 512 × 512 crop of a real blurred fluorescence measurement
        (apsk14/rdmpy, MIT; no sharp version exists; never used to train a network);
        ``"beads"``: 128 × 128 crop of an in-focus slice of 200 nm beads, 0.108 µm pixels
        (hoogenboom-group/PSF-Extractor, CC-BY-4.0). See ``psfmap/data/README.md``.
    """
    image, _ = bundled_image(name)
    image = image.astype(np.float64)
    image -= image.min()
    return image / max(image.max(), 1e-12)


def bundled_image(name: str = "neuron") -> tuple[np.ndarray, dict[str, Any]]:
    """The bundled file ``name`` as stored, with its metadata (see :func:`bundled_sample`)."""
    from psfmap.io import read_image

    if name not in BUNDLED:
        raise ValueError(f"unknown bundled sample {name!r}; expected one of {', '.join(BUNDLED)}")
    resource = resources.files("psfmap") / "data" / BUNDLED[name]
    with resources.as_file(resource) as path:
        return read_image(path)
