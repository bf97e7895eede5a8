"""Sharp source images for the CNN's training samples: synthetic cells and points, natural
pictures (scikit-image's bundled ones, disjoint training and test lists), real sharp
microscopy (the package's sample plus ``../shared/data/sharp`` when present) and procedural
fluorescence-like scenes sharp by construction (:func:`psfmap.simulate.scenes.scene`,
rendered 4× finer and binned; disjoint seed ranges for training and test).

Every image is returned scaled to [0, 1] (robust percentiles); synthetic scenes draw from the
``torch.Generator`` they are given, so a seed replays them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from psfmap.io import to_grey

PACKAGE_DATA = Path(__file__).resolve().parents[1] / "data"
SHARED_DATA = Path(
    os.environ.get("PSFMAP_SHARED_DATA", Path(__file__).resolve().parents[4] / "shared" / "data")
)
SHARED_SHARP = SHARED_DATA / "sharp"

# scikit-image pictures (bundled, offline): disjoint training and test lists
NATURAL_TRAIN = ("camera", "astronaut", "coffee", "brick", "grass", "moon", "coins", "chelsea",
                 "hubble_deep_field", "immunohistochemistry", "rocket")
# sum-binning of microscopy files sampled much finer than their resolution
MICR_BINNING = {"airyscan_TCYX.tif": 2}
# shared "sharp" files measured unfit as ground truth (see DataConfig.micr_exclude)
MICR_EXCLUDE = ("confocal_neuron_zstack.tif",)
# the package's sharp sample (src/psfmap/data); the other bundled files are bead images
PACKAGE_SHARP = ("confocal_neuron_mip.tif",)
NATURAL_TEST = ("gravel", "cell", "cat", "clock", "text", "page")
# procedural scenes: scene i of a split is drawn from seed PROC_SEEDS[split] + i; the ranges
# are PROC_SEED_SPAN apart, so no test scene is ever a training scene
PROC_SEEDS = {"train": 10_000_000, "test": 20_000_000}
PROC_SEED_SPAN = 10_000_000
_PROC_CACHE: dict[tuple[str, int, int], np.ndarray] = {}

# ---------------------------------------------------------------- source images
def _to_unit(image: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.8) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(image, [low_pct, high_pct])
    if high <= low:
        return np.zeros_like(image, dtype=np.float32)
    return np.clip((image - low) / (high - low), 0.0, 1.0).astype(np.float32)


def natural_images(split: str) -> list[np.ndarray]:
    """scikit-image's bundled pictures as grey ``[0, 1]`` images (disjoint train/test lists)."""
    import skimage.data

    names = NATURAL_TRAIN if split == "train" else NATURAL_TEST
    images = []
    for name in names:
        try:
            images.append(_to_unit(to_grey(np.asarray(getattr(skimage.data, name)(), np.float64))))
        except Exception:  # noqa: BLE001 - a picture missing from this install is skipped
            continue
    return images


def _read_planes(path: Path) -> list[np.ndarray]:
    import tifffile

    data = np.asarray(tifffile.imread(path))
    planes = data.reshape(-1, data.shape[-2], data.shape[-1])
    return [plane for plane in planes if plane.std() > 0]


def microscopy_paths(shared_data: bool = False, exclude: Sequence[str] = ()) -> list[Path]:
    """The sharp microscopy files :func:`microscopy_images` reads: the bundled sample first,
    then, with ``shared_data``, ``../shared/data/sharp/*.tif``; less the names in ``exclude``."""
    paths = [PACKAGE_DATA / name for name in PACKAGE_SHARP
             if (PACKAGE_DATA / name).is_file() and name not in exclude]
    if shared_data and SHARED_SHARP.is_dir():
        paths += sorted(p for p in SHARED_SHARP.glob("*.tif") if p.name not in exclude)
    return paths


def microscopy_images(
    split: str, shared_data: bool = False, binning: int = 1, exclude: Sequence[str] = ()
) -> list[np.ndarray]:
    """Sharp real fluorescence images as ``[0, 1]`` planes, split into train and test.

    Reads the sharp sample bundled with the package (``PACKAGE_SHARP``; the bundled bead
    images are blurred, not sharp, and are not used) and, with ``shared_data``, the sharp
    images of ``../shared/data/sharp`` except the file names in ``exclude``. Every plane is
    split by region: the bottom ``max(25 %, 96 px)`` rows are test material, the rest
    training material (planes lower than 192 px are training only). Splitting by region, not
    by plane, keeps a specimen seen twice (a stack and its projection) out of the test
    material.
    Real "sharp" images already carry the blur of their microscope (a few px when sampled
    finer than Nyquist, as the Airyscan data at 44 nm), which would make small blur widths
    unidentifiable: those files are sum-binned (``MICR_BINNING``), others by ``binning``.
    Each part is rescaled to ``[0, 1]`` (0.5–99.8 percentiles).
    """
    images = []
    for path in microscopy_paths(shared_data, exclude):
        try:
            planes = _read_planes(path)
        except Exception:  # noqa: BLE001 - unreadable or non-image TIFFs are skipped
            continue
        factor = MICR_BINNING.get(path.name, binning)
        for plane in planes:
            if factor > 1:
                plane = sum_bin(plane, factor)
            height = plane.shape[0]
            test_rows = max(height // 4, 96)
            if height < 2 * test_rows:
                if split == "train":
                    images.append(_to_unit(plane))
                continue
            part = plane[:height - test_rows] if split == "train" else plane[height - test_rows:]
            images.append(_to_unit(part))
    return images


def procedural_scene(split: str, index: int, side: int) -> np.ndarray:
    """Procedural scene ``index`` of a split: ``side²`` px in ``[0, 1]``, sharp by construction.

    The scene is :func:`psfmap.simulate.scenes.scene` (``kind="mixed"``: nuclei with textured
    interiors and sharp or soft edges, membranes, filaments, puncta, sparse to dense fields,
    smooth background) drawn from seed ``PROC_SEEDS[split] + index``: the training and test
    seed ranges are disjoint, so the test scenes are never seen in training. It is rendered
    ``4×`` finer and sum-binned, so its only blur is the pixel's integration and a blur drawn
    on it is labelled exactly. Rendering costs about 3 s per 256² scene on one core, so each
    scene is kept for the life of the process (read-only) once made.
    """
    if split not in PROC_SEEDS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not isinstance(index, int) or not 0 <= index < PROC_SEED_SPAN:
        raise ValueError(f"index must be an integer in [0, {PROC_SEED_SPAN}), got {index!r}")
    key = (split, int(index), int(side))
    if key not in _PROC_CACHE:
        from psfmap.simulate.scenes import scene

        generator = torch.Generator().manual_seed(PROC_SEEDS[split] + index)
        image = scene((side, side), generator=generator, kind="mixed", supersample=4)
        image.requires_grad_(False)
        _PROC_CACHE[key] = image.numpy()
    return _PROC_CACHE[key]


def procedural_images(split: str, count: int, side: int) -> list[np.ndarray]:
    """The first ``count`` procedural scenes of a split (:func:`procedural_scene`), all made now.

    :class:`psfmap.training.PatchGenerator` does not call this: it renders a scene the first
    time one of its crops is drawn (:class:`LazyImages`), so a generator that draws a few
    batches does not pay for every scene of its config.
    """
    if split not in PROC_SEEDS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not isinstance(count, int) or not 0 <= count <= PROC_SEED_SPAN:
        raise ValueError(f"count must be an integer in [0, {PROC_SEED_SPAN}], got {count!r}")
    return [procedural_scene(split, index, side) for index in range(count)]


class LazyImages(Sequence):
    """A read-only pool of ``count`` images, image ``i`` made by ``make(i)`` on first use.

    For source images that take seconds each to make (procedural scenes): the pool has its
    full length from the start, so the random draws over it are those of a list of the same
    images, and only the images actually drawn are ever made.
    """

    def __init__(self, count: int, make):
        self._count = int(count)
        self._make = make
        self._made: dict[int, object] = {}

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if not -self._count <= index < self._count:
            raise IndexError(f"index {index} out of range for {self._count} images")
        index %= self._count
        if index not in self._made:
            self._made[index] = self._make(index)
        return self._made[index]

    @property
    def made(self) -> int:
        """How many images have been made so far."""
        return len(self._made)


def sum_bin(plane: np.ndarray, factor: int) -> np.ndarray:
    """Sum ``factor × factor`` blocks of a plane (float64; trailing rows/columns dropped)."""
    h, w = (plane.shape[0] // factor) * factor, (plane.shape[1] // factor) * factor
    blocks = plane[:h, :w].astype(np.float64).reshape(h // factor, factor, w // factor, factor)
    return blocks.sum((1, 3))


def synthetic_cells(shape: tuple[int, int], generator: torch.Generator) -> np.ndarray:
    """Cell-like sample: textured ellipses (cytoplasm), bright nuclei, granules and filaments.

    A minimal stand-in for fluorescent cells: smooth-edged ellipses filled with fine random
    texture, brighter nuclei, punctate granules and thin curved filaments, on a dark
    background. Values in ``[0, 1]``.
    """
    h, w = shape
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    image = torch.zeros(h, w)
    n_cells = int(torch.randint(4, 12, (1,), generator=generator)) * (h * w) // (256 * 256)
    texture = smooth_noise((h, w), 0.6, generator)
    for _ in range(max(n_cells, 1)):
        cy, cx = (torch.rand(2, generator=generator) * torch.tensor([h, w])).tolist()
        ry, rx = (15 + 35 * torch.rand(2, generator=generator)).tolist()
        angle = float(torch.rand(1, generator=generator)) * math.pi
        level = 0.2 + 0.4 * float(torch.rand(1, generator=generator))
        nucleus_level = 0.4 * float(torch.rand(1, generator=generator))
        reach = int(1.2 * max(ry, rx)) + 2  # work inside the cell's bounding box only
        r0, r1 = max(0, int(cy) - reach), min(h, int(cy) + reach)
        c0, c1 = max(0, int(cx) - reach), min(w, int(cx) + reach)
        if r0 >= r1 or c0 >= c1:
            continue
        y, x = yy[r0:r1, c0:c1], xx[r0:r1, c0:c1]
        cos, sin = math.cos(angle), math.sin(angle)
        u = ((x - cx) * cos + (y - cy) * sin) / rx
        v = (-(x - cx) * sin + (y - cy) * cos) / ry
        radius = torch.sqrt(u**2 + v**2)
        body = torch.sigmoid((1 - radius) * 40)
        image[r0:r1, c0:c1] += body * level * (0.6 + 0.8 * texture[r0:r1, c0:c1])
        image[r0:r1, c0:c1] += torch.sigmoid((0.45 - radius) * 60) * nucleus_level
    # granules
    n_points = int((h * w) / 400)
    rows = torch.randint(0, h, (n_points,), generator=generator)
    cols = torch.randint(0, w, (n_points,), generator=generator)
    inside_cells = image[rows, cols] > 0.05
    image[rows, cols] += torch.rand(n_points, generator=generator) * 1.5 * inside_cells
    # filaments: random walks with smooth direction changes
    for _ in range(max(3, (h * w) // 8000)):
        start = torch.rand(2, generator=generator) * torch.tensor([h, w])
        direction0 = float(torch.rand(1, generator=generator)) * 2 * math.pi
        brightness = 0.3 + 0.7 * float(torch.rand(1, generator=generator))
        length = int(40 + 200 * float(torch.rand(1, generator=generator)))
        direction = direction0 + torch.cumsum(0.3 * torch.randn(length, generator=generator), 0)
        rows = (start[0] + torch.cumsum(torch.sin(direction), 0)).long()
        cols = (start[1] + torch.cumsum(torch.cos(direction), 0)).long()
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        image.index_put_((rows[inside], cols[inside]),
                         torch.full((int(inside.sum()),), brightness), accumulate=True)
    return (image / max(float(image.max()), 1e-6)).numpy()


def synthetic_points(shape: tuple[int, int], generator: torch.Generator) -> np.ndarray:
    """Sparse point sources of random brightness on a black background (``[0, 1]``)."""
    h, w = shape
    image = torch.zeros(h, w)
    density = 10 ** (-3.5 + 1.8 * float(torch.rand(1, generator=generator)))
    n_points = max(1, int(density * h * w))
    rows = torch.randint(0, h, (n_points,), generator=generator)
    cols = torch.randint(0, w, (n_points,), generator=generator)
    image.index_put_((rows, cols), 0.2 + 0.8 * torch.rand(n_points, generator=generator),
                     accumulate=True)
    return (image / max(float(image.max()), 1e-6)).numpy()


def smooth_noise(shape: tuple[int, int], sigma: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.rand(shape, generator=generator)
    fy = torch.fft.fftfreq(shape[0])[:, None]
    fx = torch.fft.rfftfreq(shape[1])[None, :]
    transfer = torch.exp(-2 * (math.pi * sigma) ** 2 * (fx**2 + fy**2))
    smooth = torch.fft.irfft2(torch.fft.rfft2(noise) * transfer, s=shape)
    smooth = smooth - smooth.min()
    return smooth / max(float(smooth.max()), 1e-6)
