"""On-the-fly, seeded training data for the PSF-regression CNN.

Each sample is a noisy blurred patch, the PSF parameters that blurred it and a validity flag
``a0`` (Shajkofci & Liebling, "Spatially-variant CNN-based point spread function estimation
for blind deconvolution and depth estimation in optical microscopy", IEEE TIP 2020, §III):

1. a sharp crop of side ``p + k - 1`` (patch side ``p``, PSF side ``k``) is cut from one of four
   sources: synthetic cells ``syn``, points ``poi``, natural images ``nat`` (scikit-image's
   bundled pictures) and real sharp microscopy ``micr`` (the package's bundled sample plus,
   for training runs, ``../shared/data/sharp`` less the files measured unfit as ground truth,
   ``DataConfig.micr_exclude``); it is turned by a multiple of 90° and maybe mirrored;
2. PSF parameters are drawn uniformly in ``[family.low, family.high]`` and the crop is
   convolved in *valid* mode (FFT of the crop size; the wrapped border is discarded), so the
   ``p × p`` patch has no border artefact;
3. Poisson–Gaussian camera noise (eq. 10 of the paper) of random strength is added::

       y = Poisson(QE · (φ · (h ⋆ f) + b)) + N(0, σ_read²) + offset

   with peak photon count φ (log-uniform), quantum efficiency QE, a background ``b`` and read
   noise σ_read;
4. the patch is normalised to zero mean and unit standard deviation;
5. ``a0 = 1`` when the patch carries enough texture to identify the blur: the sharp object has
   fine detail above the noise (energy ``‖Δf‖₂`` of its discrete Laplacian, in electrons,
   ≥ ``detail_snr`` × noise std) and the blurred signal stands out of the noise (energy
   ``‖QE φ (h ⋆ f − mean)‖₂`` ≥ ``signal_snr`` × noise std); energies, not standard
   deviations, so that a few bright points count as much as a dense texture.
   A fraction of explicit black, flat and linear-ramp samples (``a0 = 0``) teaches the
   network to recognise empty patches; smooth-shading samples (a random field smoother than
   any blur of the family, ``SHADE_SCALE``: uneven background) can be added through
   ``DataConfig.invalid_kinds``.

Everything random draws from one ``torch.Generator``: the same seed and configuration give the
same batches, bit for bit. No file is written; source images stay in memory (a few MB).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psfmap.io import to_grey
from psfmap.psf import PSFFamily

SOURCES = ("syn", "poi", "nat", "micr")
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
INVALID_KINDS = ("black", "flat", "ramp", "shade")
# the shipped models' kinds: "shade" was measured (benchmarks/RESULTS.md) and left optional
DEFAULT_INVALID_KINDS = ("black", "flat", "ramp")
# smoothing scale (px, Gaussian σ) of the shading samples: well above the widest blur (4 px)
SHADE_SCALE = (8.0, 24.0)


@dataclass
class DataConfig:
    """How samples are drawn; stored in every checkpoint.

    Attributes
    ----------
    patch_size : int
        Side ``p`` of the square patches.
    mix : dict
        Relative frequency of the sources ``syn``, ``poi``, ``nat``, ``micr``.
    invalid_fraction : float
        Fraction of explicit invalid samples (``invalid_kinds`` + noise).
    param_margin : float
        Training parameters are drawn over the family range widened by this fraction of its
        span at both ends (periodic astigmatism columns excepted; Gaussian widths kept
        above a quarter of the lower bound); the ``test`` split always draws over the
        family range. A network trained only inside the range shrinks its estimates
        towards the middle near the ends (a squared loss with a bounded prior); training a
        little beyond lets it reach them. Default 0; the shipped gaussian1 uses 0.1.
    blend_fraction : float
        Fraction of ``train`` samples whose blur changes across the patch, as it does in a
        window of a space-variant image: two PSFs of the family, ``h₁`` and ``h₂``, mixed
        pixel by pixel, ``(1 − w) (h₁ ⋆ f) + w (h₂ ⋆ f)``, with a linear ramp ``w`` in a
        random direction (clipped to ``[0, 1]``, changing by up to 1 across the patch). The
        label is the parameters mixed by the mean weight, ``(1 − w̄) θ₁ + w̄ θ₂``: what a
        PSF map interpolates between its cells. Families with an astigmatism axis are
        refused (axes do not mix linearly). Default 0 (the ``test`` split never blends). Measured
        (benchmarks/RESULTS.md): gaussian1 with 0.5 gains 1.8 points of Table V on smoothly
        blended PSFs and loses 10 on one PSF per quadrant, so the shipped models do not blend.
    invalid_kinds : tuple of str
        Kinds of explicit invalid samples, drawn with equal chances, among ``black``,
        ``flat``, ``ramp`` (a linear ramp) and ``shade`` (a smooth random field on an offset:
        uneven background). Default: the first three, as the shipped models. With
        ``shade`` a retrained zernike3 judged 6 % of shading samples valid instead of 68 %,
        with unchanged R², but not fewer of the real bead file's background windows, so
        the shipped weights stay without it (benchmarks/RESULTS.md).
    photons : (float, float)
        Range of the peak photon count φ (drawn log-uniformly). Default 30 to 10⁵: a network
        trained up to 3,000 only got *worse* on brighter patches (zernike1, the same patches
        at 10⁵ instead of 10³ photons: R² 0.88 → 0.73), because their log spectra fall
        further before the noise floor than anything it had seen.
    qe : (float, float)
        Range of the quantum efficiency.
    read_noise : (float, float)
        Range of the read-noise standard deviation (electrons).
    background : (float, float)
        Range of the background level, as a fraction of the peak signal.
    offset : (float, float)
        Range of the camera offset (electrons; removed by normalisation).
    detail_snr, signal_snr : float
        Validity thresholds (see the module docstring).
    shared_data : bool
        Also read the non-bundled sharp images of ``../shared/data/sharp`` when present.
    micr_binning : int
        Binning of the microscopy images not listed in ``MICR_BINNING`` (see
        :func:`microscopy_images`).
    micr_exclude : tuple of str
        File names of ``../shared/data/sharp`` not used. Default: the confocal neuron
        z-stack, whose planes are mostly empty and hold spatially correlated noise
        (neighbour correlation 0.64–0.80 in the empty planes: already blurred by about a
        pixel), so small blur widths drawn on it are mislabelled; its in-focus content is
        the bundled maximum projection, which is used.
    synthetic_images : int
        Number of synthetic cell and point images (``max(256, 2 crop)`` px square each) that
        crops are cut from.
    """

    patch_size: int = 64
    mix: dict[str, float] = field(
        default_factory=lambda: {"syn": 0.2, "poi": 0.15, "nat": 0.2, "micr": 0.45}
    )
    invalid_fraction: float = 0.08
    invalid_kinds: tuple[str, ...] = DEFAULT_INVALID_KINDS
    param_margin: float = 0.0
    blend_fraction: float = 0.0
    photons: tuple[float, float] = (30.0, 100000.0)
    qe: tuple[float, float] = (0.6, 0.95)
    read_noise: tuple[float, float] = (0.0, 4.0)
    background: tuple[float, float] = (0.0, 0.15)
    offset: tuple[float, float] = (0.0, 100.0)
    detail_snr: float = 30.0
    signal_snr: float = 25.0
    shared_data: bool = False
    micr_binning: int = 1
    micr_exclude: tuple[str, ...] = MICR_EXCLUDE
    synthetic_images: int = 16

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DataConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown data config fields {sorted(unknown)}")
        kwargs = dict(values)
        for key in ("photons", "qe", "read_noise", "background", "offset"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        if "micr_exclude" in kwargs:
            kwargs["micr_exclude"] = tuple(str(v) for v in kwargs["micr_exclude"])
        if "invalid_kinds" in kwargs:
            kwargs["invalid_kinds"] = tuple(str(v) for v in kwargs["invalid_kinds"])
        return cls(**kwargs)

    def validate(self) -> None:
        if not isinstance(self.patch_size, int) or self.patch_size < 16:
            raise ValueError(f"patch_size must be an integer >= 16, got {self.patch_size!r}")
        unknown = set(self.mix) - set(SOURCES)
        if unknown or not self.mix or any(v < 0 for v in self.mix.values()):
            raise ValueError(
                f"mix must map some of {SOURCES} to non-negative weights, got {self.mix!r}"
            )
        if sum(self.mix.values()) <= 0:
            raise ValueError(f"mix weights must not all be zero, got {self.mix!r}")
        if not 0 <= self.invalid_fraction < 1:
            raise ValueError(f"invalid_fraction must be in [0, 1), got {self.invalid_fraction}")
        if not 0 <= self.param_margin <= 0.5:
            raise ValueError(f"param_margin must be in [0, 0.5], got {self.param_margin}")
        if not 0 <= self.blend_fraction <= 1:
            raise ValueError(f"blend_fraction must be in [0, 1], got {self.blend_fraction}")
        if not self.invalid_kinds or not set(self.invalid_kinds) <= set(INVALID_KINDS):
            raise ValueError(
                f"invalid_kinds must be some of {INVALID_KINDS}, got {self.invalid_kinds!r}"
            )


@dataclass
class Batch:
    """One batch of samples.

    Attributes
    ----------
    patches : Tensor (B, p, p)
        Normalised noisy patches (zero mean, unit std; flat patches stay 0).
    params : Tensor (B, N)
        PSF parameters (in the family's units; drawn for invalid samples too).
    valid : Tensor (B,)
        Validity flag ``a0`` (1 = enough texture to identify the blur).
    source : list of str
        Source of each sample (``syn``, ``poi``, ``nat``, ``micr`` or one of
        ``INVALID_KINDS``).
    detail_snr, signal_snr : Tensor (B,)
        The two validity criteria (energy of the object's fine detail and of the blurred
        signal, each divided by the noise standard deviation).
    """

    patches: torch.Tensor
    params: torch.Tensor
    valid: torch.Tensor
    source: list[str]
    detail_snr: torch.Tensor | None = None
    signal_snr: torch.Tensor | None = None


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
            images.append(_to_unit(to_grey(getattr(skimage.data, name)())))
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
    then, with ``shared_data``, ``../shared/data/sharp/*.tif`` less the names in ``exclude``."""
    paths = [PACKAGE_DATA / name for name in PACKAGE_SHARP if (PACKAGE_DATA / name).is_file()]
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
    texture = _smooth_noise((h, w), 0.6, generator)
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


def _smooth_noise(shape: tuple[int, int], sigma: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.rand(shape, generator=generator)
    fy = torch.fft.fftfreq(shape[0])[:, None]
    fx = torch.fft.rfftfreq(shape[1])[None, :]
    transfer = torch.exp(-2 * (math.pi * sigma) ** 2 * (fx**2 + fy**2))
    smooth = torch.fft.irfft2(torch.fft.rfft2(noise) * transfer, s=shape)
    smooth = smooth - smooth.min()
    return smooth / max(float(smooth.max()), 1e-6)


# ---------------------------------------------------------------- generator
class PatchGenerator:
    """Seeded generator of ``(patch, params, validity)`` batches for one PSF family.

    Parameters
    ----------
    family : PSFFamily
        The PSF model whose parameters are regressed (``psfmap.psf.model(name)``).
    config : DataConfig or dict, optional
        Sampling configuration (defaults: :class:`DataConfig`).
    seed : int
        Seed of the generator; the same seed gives the same batches.
    split : {"train", "test"}
        Disjoint source material: different scikit-image pictures, different image regions
        of the microscopy data, different seeds for the synthetic samples.

    Examples
    --------
    >>> from psfmap.psf import model
    >>> data = PatchGenerator(model("gaussian1"), seed=0)
    >>> batch = data.batch(8)
    >>> batch.patches.shape, batch.params.shape, batch.valid.shape
    (torch.Size([8, 64, 64]), torch.Size([8, 1]), torch.Size([8]))
    """

    def __init__(
        self,
        family: PSFFamily,
        config: DataConfig | Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        split: str = "train",
    ):
        if not isinstance(family, PSFFamily):
            raise TypeError(f"family must be a psfmap.psf.PSFFamily, got {type(family).__name__}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if config is None:
            config = DataConfig()
        elif isinstance(config, Mapping):
            config = DataConfig.from_dict(config)
        config.validate()
        if config.blend_fraction > 0 and family.periodic:
            raise ValueError(
                f"blend_fraction needs parameters that mix linearly; {family.name!r} has an "
                "astigmatism axis"
            )
        self.family = family
        self.config = config
        self.split = split
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed * 2 + (split == "test"))
        self.crop_size = config.patch_size + family.size - 1
        self.pools = self._build_pools()
        names = [s for s in SOURCES if config.mix.get(s, 0) > 0 and self.pools[s]]
        if not names:
            raise ValueError(f"no source images available for mix {config.mix!r}")
        self.sources = names
        weights = torch.tensor([config.mix[s] for s in names], dtype=torch.float64)
        self.source_weights = weights / weights.sum()

    def _build_pools(self) -> dict[str, list[torch.Tensor]]:
        cfg = self.config
        pool_generator = torch.Generator().manual_seed(1_000_003 * (self.split == "test") + 17)
        pools: dict[str, list[torch.Tensor]] = {s: [] for s in SOURCES}
        side = max(256, 2 * self.crop_size)
        if cfg.mix.get("syn", 0) > 0:
            pools["syn"] = [torch.from_numpy(synthetic_cells((side, side), pool_generator))
                            for _ in range(cfg.synthetic_images)]
        if cfg.mix.get("poi", 0) > 0:
            pools["poi"] = [torch.from_numpy(synthetic_points((side, side), pool_generator))
                            for _ in range(cfg.synthetic_images)]
        if cfg.mix.get("nat", 0) > 0:
            pools["nat"] = [torch.from_numpy(a) for a in natural_images(self.split)]
        if cfg.mix.get("micr", 0) > 0:
            pools["micr"] = [torch.from_numpy(a) for a in microscopy_images(
                self.split, cfg.shared_data, cfg.micr_binning, cfg.micr_exclude)]
        for name in SOURCES:  # images smaller than a crop are padded by reflection
            pools[name] = [self._fit(img) for img in pools[name]]
        return pools

    def _fit(self, image: torch.Tensor) -> torch.Tensor:
        need = self.crop_size
        pad_y, pad_x = max(0, need - image.shape[0]), max(0, need - image.shape[1])
        if pad_y or pad_x:
            image = torch.nn.functional.pad(image[None, None], (0, pad_x, 0, pad_y),
                                            mode="reflect" if max(pad_y, pad_x) < min(image.shape)
                                            else "replicate")[0, 0]
        return image.float()

    # ------------------------------------------------------------ sampling
    def _uniform(self, n: int, bounds: Sequence[float], log: bool = False) -> torch.Tensor:
        low, high = float(bounds[0]), float(bounds[1])
        unit = torch.rand(n, generator=self.generator, dtype=torch.float64)
        if log:
            return torch.exp(math.log(low) + unit * (math.log(high) - math.log(low)))
        return low + unit * (high - low)

    def _crop(self, source: str) -> torch.Tensor:
        pool = self.pools[source]
        index = int(torch.randint(len(pool), (1,), generator=self.generator))
        image = pool[index]
        c = self.crop_size
        row = int(torch.randint(image.shape[0] - c + 1, (1,), generator=self.generator))
        col = int(torch.randint(image.shape[1] - c + 1, (1,), generator=self.generator))
        crop = image[row:row + c, col:col + c]
        turns = int(torch.randint(4, (1,), generator=self.generator))
        if turns:
            crop = torch.rot90(crop, turns, dims=(0, 1))
        if bool(torch.randint(2, (1,), generator=self.generator)):
            crop = torch.flip(crop, dims=(1,))
        return crop

    def _invalid_crop(self) -> tuple[torch.Tensor, str]:
        kinds = self.config.invalid_kinds
        kind = kinds[int(torch.randint(len(kinds), (1,), generator=self.generator))]
        c = self.crop_size
        if kind == "black":
            return torch.zeros(c, c), kind
        level = float(torch.rand(1, generator=self.generator))
        if kind == "flat":
            return torch.full((c, c), level), kind
        if kind == "shade":
            scale = float(self._uniform(1, SHADE_SCALE, log=True))
            amplitude = float(self._uniform(1, (0.05, 0.5)))
            field = _smooth_noise((c, c), scale, self.generator)
            return level * 0.5 + amplitude * field, kind
        angle = float(torch.rand(1, generator=self.generator)) * 2 * math.pi
        ramp = torch.linspace(0, 1, c)
        plane = math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]
        plane = plane - plane.min()
        return level * 0.5 + 0.5 * plane / max(float(plane.max()), 1e-6), kind

    def sharp_crops(self, n: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """``n`` sharp crops ``(n, c, c)``, their source names and an "explicit invalid" mask."""
        crops, names, explicit = [], [], []
        for _ in range(n):
            if float(torch.rand(1, generator=self.generator)) < self.config.invalid_fraction:
                crop, name = self._invalid_crop()
                explicit.append(True)
            else:
                pick = int(torch.multinomial(self.source_weights, 1, generator=self.generator))
                name = self.sources[pick]
                crop = self._crop(name)
                explicit.append(False)
            crops.append(crop)
            names.append(name)
        return torch.stack(crops), names, torch.tensor(explicit)

    def sample_params(self, n: int) -> torch.Tensor:
        """``n`` parameter vectors ``(n, N)`` (float64): uniform over the family range,
        widened by ``param_margin`` for the ``train`` split."""
        margin = float(self.config.param_margin) if self.split == "train" else 0.0
        family = self.family
        if margin == 0:
            return family.sample(n, self.generator, dtype=torch.float64)
        span = family.high - family.low
        low, high = family.low - margin * span, family.high + margin * span
        if family.kind == "gaussian":
            low = np.maximum(low, 0.25 * family.low)
        for column in {c for pair in family.periodic for c in pair}:
            low[column], high[column] = family.low[column], family.high[column]
        return family.sample(n, self.generator, dtype=torch.float64, bounds=(low, high))

    def batch(self, n: int, **noise_overrides: Any) -> Batch:
        """Draw ``n`` samples (see the module docstring for the recipe).

        ``noise_overrides`` fix any of ``photons``, ``qe``, ``read_noise``, ``background``,
        ``offset`` to a ``(low, high)`` range for this batch (robustness studies).
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        sharp, names, explicit = self.sharp_crops(n)
        params = self.sample_params(n)
        psfs = self.family(params.float()).float()
        blend = None
        if self.split == "train" and self.config.blend_fraction > 0:
            params, blend = self._blend(params)
        return self.render(sharp, params, psfs, names, explicit, blend=blend, **noise_overrides)

    def _blend(self, params: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """Pick the blended samples, their second PSFs and weight ramps; mix the labels."""
        n, p = len(params), self.config.patch_size
        chosen = torch.rand(n, generator=self.generator) < self.config.blend_fraction
        count = int(chosen.sum())
        others = self.sample_params(count)
        angle = torch.rand(count, 1, 1, generator=self.generator) * 2 * math.pi
        slope = torch.rand(count, 1, 1, generator=self.generator)  # change across the patch
        centre = torch.rand(count, 1, 1, generator=self.generator)
        axis = (torch.arange(p) - (p - 1) / 2) / p
        along = torch.cos(angle) * axis[None, None, :] + torch.sin(angle) * axis[None, :, None]
        weights = (centre + slope * along).clamp(0, 1)
        mean = weights.mean((-2, -1))[:, None].double()
        mixed = params.clone()
        mixed[chosen] = (1 - mean) * params[chosen] + mean * others
        second = self.family(others.float()).float() if count else None
        return mixed, (chosen, second, weights)

    def render(
        self,
        sharp: torch.Tensor,
        params: torch.Tensor,
        psfs: torch.Tensor,
        names: list[str],
        explicit: torch.Tensor,
        blend: tuple | None = None,
        **noise_overrides: Any,
    ) -> Batch:
        """Blur sharp crops ``(n, c, c)`` with ``psfs`` (valid mode), add noise, flag validity.

        ``blend = (chosen, second_psfs, weights)`` mixes, in the ``chosen`` samples, the blur by
        ``psfs`` with the blur by ``second_psfs`` pixel by pixel (``DataConfig.blend_fraction``).
        """
        cfg = self.config
        n = sharp.shape[0]
        ranges = {key: noise_overrides.get(key, getattr(cfg, key))
                  for key in ("photons", "qe", "read_noise", "background", "offset")}
        unknown = set(noise_overrides) - set(ranges)
        if unknown:
            raise ValueError(f"unknown noise overrides {sorted(unknown)}")
        photons = self._uniform(n, ranges["photons"], log=True).float()[:, None, None]
        qe = self._uniform(n, ranges["qe"]).float()[:, None, None]
        read = self._uniform(n, ranges["read_noise"]).float()[:, None, None]
        background = self._uniform(n, ranges["background"]).float()[:, None, None]
        offset = self._uniform(n, ranges["offset"]).float()[:, None, None]

        blurred = valid_convolve(sharp, psfs)
        if blend is not None and blend[1] is not None:
            chosen, second, weights = blend
            other = valid_convolve(sharp[chosen], second)
            blurred[chosen] = (1 - weights) * blurred[chosen] + weights * other
        p = cfg.patch_size
        k = self.family.size
        center = sharp[:, k // 2:k // 2 + p, k // 2:k // 2 + p]
        electrons = qe * (photons * blurred + photons * background)
        counts = torch.poisson(electrons.clamp_min(0), generator=self.generator)
        noisy = counts + read * torch.randn(counts.shape, generator=self.generator) + offset

        # validity a0: fine detail of the object and blurred signal both above the noise
        noise_level = torch.sqrt(electrons.mean((-2, -1)) + read[:, 0, 0] ** 2).clamp_min(1e-6)
        gain = (qe * photons)[:, 0, 0]
        detail = _laplacian(center).flatten(1).norm(dim=1) * gain
        signal = (blurred - blurred.mean((-2, -1), keepdim=True)).flatten(1).norm(dim=1) * gain
        detail_snr = detail / noise_level
        signal_snr = signal / noise_level
        valid = (detail_snr >= cfg.detail_snr) & (signal_snr >= cfg.signal_snr) & ~explicit
        return Batch(normalize_patches(noisy), params.float(), valid.float(), names,
                     detail_snr, signal_snr)


def _laplacian(images: torch.Tensor) -> torch.Tensor:
    """Five-point Laplacian on the interior (no wrap-around): zero on flat and linear ramps."""
    return (images[..., :-2, 1:-1] + images[..., 2:, 1:-1] + images[..., 1:-1, :-2]
            + images[..., 1:-1, 2:] - 4 * images[..., 1:-1, 1:-1])


def valid_convolve(crops: torch.Tensor, psfs: torch.Tensor) -> torch.Tensor:
    """Linear convolution in *valid* mode: ``(n, c, c) ⋆ (n, k, k) -> (n, c-k+1, c-k+1)``.

    Computed by FFTs of the crop size: the circular wrap only touches the first ``k - 1``
    rows and columns, which are discarded.
    """
    c = crops.shape[-1]
    k = psfs.shape[-1]
    spectrum = torch.fft.rfft2(crops) * torch.fft.rfft2(psfs, s=(c, c))
    full = torch.fft.irfft2(spectrum, s=(c, c))
    return full[..., k - 1:, k - 1:]


def normalize_patches(patches: torch.Tensor) -> torch.Tensor:
    """Per-patch normalisation to zero mean and unit standard deviation (flat patches -> 0)."""
    mean = patches.mean((-2, -1), keepdim=True)
    centred = patches - mean
    std = centred.pow(2).mean((-2, -1), keepdim=True).sqrt()
    return centred / torch.where(std > 1e-6 * (mean.abs() + 1), std, torch.ones_like(std))
