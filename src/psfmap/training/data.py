"""On-the-fly, seeded training data for the PSF-regression CNN.

Each sample is a noisy blurred patch, the PSF parameters that blurred it and a validity flag
``a0`` (Shajkofci & Liebling, "Spatially-variant CNN-based point spread function estimation
for blind deconvolution and depth estimation in optical microscopy", IEEE TIP 2020, §III):

1. a sharp crop of side ``p + k - 1`` (patch side ``p``, PSF side ``k``) is cut from one of four
   sources: synthetic cells ``syn``, points ``poi``, natural images ``nat`` (scikit-image's
   bundled pictures), real sharp microscopy ``micr`` (the package's bundled sample plus,
   for training runs, ``../shared/data/sharp`` less the files measured unfit as ground truth,
   ``DataConfig.micr_exclude``) and procedural scenes ``proc``, sharp by construction
   (:func:`~psfmap.training.sources.procedural_scene`: rendered 4× finer and binned when
   first drawn, seed ranges disjoint between the ``train`` and ``test`` splits); it is
   turned by a multiple of 90° and maybe mirrored;
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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from psfmap.psf import PSFFamily
from psfmap.training.sources import (
    MICR_EXCLUDE,
    LazyImages,
    microscopy_images,
    natural_images,
    procedural_scene,
    smooth_noise,
    synthetic_cells,
    synthetic_points,
)

# "proc" last: adding it left the random draws of the mixes without it unchanged
SOURCES = ("syn", "poi", "nat", "micr", "proc")
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
        Relative frequency of the sources ``syn``, ``poi``, ``nat``, ``micr``, ``proc``.
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
    proc_images : int
        Number of procedural scenes (``max(256, 2 crop)`` px square each) that ``proc`` crops
        are cut from, per split (rendering costs ~3 s per scene: each is rendered the first
        time a crop of it is drawn, once per process).
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
    proc_images: int = 64

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
        if not isinstance(self.proc_images, int) or self.proc_images < 1:
            raise ValueError(f"proc_images must be a positive integer, got {self.proc_images!r}")
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
        Source of each sample (``syn``, ``poi``, ``nat``, ``micr``, ``proc`` or one of
        ``INVALID_KINDS``).
    detail_snr, signal_snr : Tensor (B,)
        The two validity criteria (energy of the object's fine detail and of the blurred
        signal, each divided by the noise standard deviation).
    counts : Tensor (B, p, p)
        The noisy patches before normalisation, in camera units (``patches`` standardised).
    noise : dict of Tensor (B, 1, 1)
        The noise draw of each sample: ``photons``, ``qe``, ``read_noise``, ``background``,
        ``offset`` (what a fit that knows the noise model needs, e.g. a bound on the
        regression's accuracy).
    """

    patches: torch.Tensor
    params: torch.Tensor
    valid: torch.Tensor
    source: list[str]
    detail_snr: torch.Tensor | None = None
    signal_snr: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    noise: dict[str, torch.Tensor] | None = None


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
        of the microscopy data, different seeds for the synthetic samples and the procedural scenes.

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

    def _build_pools(self) -> dict[str, Sequence[torch.Tensor]]:
        cfg = self.config
        pool_generator = torch.Generator().manual_seed(1_000_003 * (self.split == "test") + 17)
        pools: dict[str, Sequence[torch.Tensor]] = {s: [] for s in SOURCES}
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
        if cfg.mix.get("proc", 0) > 0:  # seconds per scene: each is rendered when first drawn
            pools["proc"] = LazyImages(cfg.proc_images, lambda index: self._fit(torch.from_numpy(
                procedural_scene(self.split, index, side))))
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
            field = smooth_noise((c, c), scale, self.generator)
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
        noise = {"photons": photons, "qe": qe, "read_noise": read, "background": background,
                 "offset": offset}
        electrons = expected_electrons(blurred, noise)
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
                     detail_snr, signal_snr, noisy, noise)


def expected_electrons(blurred: torch.Tensor, noise: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean photo-electrons of blurred patches (peak 1) under a noise draw (``Batch.noise``):
    ``qe · photons · (blurred + background)``; the camera adds Poisson noise to it, then read
    noise and the offset."""
    photons = noise["photons"]
    return noise["qe"] * (photons * blurred + photons * noise["background"])


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
