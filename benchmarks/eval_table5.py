"""Table V analogue (Shajkofci & Liebling, IEEE TIP 2020): blind spatially-variant deblurring.

Images: 256 × 256 crops of real sharp fluorescence images (../shared/data/sharp: the in-focus
planes of the confocal neuron z-stack and the Airyscan filaments binned 2×2 — the sampling of
the CNN's [micr] material — plus psfmap's bundled neuron sample), random flips/rotations.
Each image is blurred by a space-variant operator whose four quadrants have random G-1
(Gaussian width) or Z-1 (defocus) PSFs, and Poisson–Gaussian noise is added (eq. 10). Two
blur layouts (``--blur``): ``bilinear`` (default), a 2 × 2 PSF grid interpolated bilinearly
between the quadrant centres (``from_psf_grid``), so the blur varies continuously across the
image; ``quadrants``, each quadrant blurred by its own PSF alone (indicator weights, the
"exact quadrant operator" of ``bench_table5_known_psf.py``), the paper's layout.

Restorations, all Richardson–Lucy + TV (20 iterations, λ_TV = 0.1 and 0.01):
- ``ground truth``: the true operator;
- ``blind map``: psfmap.deblur — the shipped CNN of the family (gaussian1 / zernike1) on
  sliding windows, PSF map, overlap-add operator;
- ``space-invariant blind``: one PSF for the whole image (validity-weighted median of the
  same CNN estimates over the image), a plain convolution;
- ``true PSFs as a 2x2 grid`` (``--blur quadrants`` only): the four true PSFs in the
  overlap-add model (``from_psf_grid``), bilinear between the quadrant centres — a
  mis-specified model of this truth, and the reference a paper-style "ground truth" column
  gets when it restores with the method's own operator;
- ``true params on the blind grid``: the true parameters sampled at the blind map's cell
  centres (``resample_params``; with ``--blur quadrants``, those of the quadrant holding the
  centre), same operator construction as the blind map: what the blind map would give with
  error-free CNN estimates, i.e. the share of the gap due to the grid rather than to the CNN.

ΔSNR / ΔSSIM are improvements over the blurred, noisy image (psfmap.metrics.snr / ssim);
the ΔSNR of the blind rows is also given per image source. The ratio to the ground truth comes
with a 95 % paired-bootstrap interval over the images (with ``--blur quadrants``, also the
ratio to "true PSFs as a 2x2 grid").
With ``--images proc`` the test images are procedural fluorescence-like scenes, sharp by
construction (:func:`psfmap.training.sources.procedural_images`, 320² scenes from the test
seed range ``PROC_SEEDS["test"]``, never used in training), cropped to 256², instead of the
real images, so the ground truth carries no blur of its own.
Run: .venv/bin/python benchmarks/eval_table5.py [--n 100] [--seed 0] [--blur quadrants]
[--weights DIR] [--images proc]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from bench_table5_known_psf import quadrant_operator

import psfmap
from psfmap.blind.estimator import PSFEstimator
from psfmap.blind.psf_maps import resample_params
from psfmap.metrics import snr, ssim
from psfmap.operators import Convolution, PSFMap
from psfmap.operators.grid import cell_centres
from psfmap.restore import richardson_lucy
from psfmap.training import MICR_BINNING, SHARED_DATA, sum_bin
from psfmap.training.sources import procedural_images

SHARP = SHARED_DATA / "sharp"
SIZE = 256
AIRYSCAN = "airyscan_TCYX.tif"


def image_pool(airyscan_binning: int = MICR_BINNING[AIRYSCAN]) -> list[tuple[str, np.ndarray]]:
    """Sharp real images (float64, [0, 1]) to crop from, each with its source name.

    The Airyscan planes (480², 44 nm pixels) are sum-binned ``airyscan_binning`` × as in the
    CNN's [micr] material (``MICR_BINNING``): at 44 nm the "sharp" filaments are already
    blurred over a few pixels, a blur a blind estimator rightly sees but the ground truth
    ignores. Binned planes smaller than 256² are mirrored at their borders to 256².
    """
    pool = [("neuron", psfmap.simulate.samples.bundled_sample("neuron"))]
    neuron = SHARP / "confocal_neuron_zstack.tif"
    if neuron.is_file():
        stack = psfmap.io.read_image(neuron)[0].astype(np.float64)
        pool += [("neuron", plane) for plane in stack if plane.std() > 0.05 * plane.max()]
    airyscan = SHARP / AIRYSCAN
    if airyscan.is_file():
        data = psfmap.io.read_image(airyscan)[0].astype(np.float64)
        label = "airyscan" if airyscan_binning == 1 else f"airyscan binned {airyscan_binning}x"
        for plane in data.reshape(-1, *data.shape[-2:]):
            plane = sum_bin(plane, airyscan_binning)
            short_y, short_x = max(0, SIZE - plane.shape[0]), max(0, SIZE - plane.shape[1])
            plane = np.pad(plane, ((short_y // 2, short_y - short_y // 2),
                                   (short_x // 2, short_x - short_x // 2)), mode="reflect")
            pool.append((label, plane))
    out = []
    for name, image in pool:
        image = image - np.percentile(image, 1)
        out.append((name, np.clip(image / np.percentile(image, 99.9), 0, 1)))
    return out


PROC_SIDE, PROC_COUNT = 320, 16


def proc_pool() -> list[tuple[str, np.ndarray]]:
    """Held-out procedural scenes (test seed range, never used in training), float64."""
    return [("proc (held-out seeds)", image.astype(np.float64))
            for image in procedural_images("test", PROC_COUNT, PROC_SIDE)]


def source_pool(args: argparse.Namespace) -> list[tuple[str, np.ndarray]]:
    """The images a run crops from: real sharp images or held-out procedural scenes."""
    return proc_pool() if args.images == "proc" else image_pool(args.airyscan_binning)


def draw_image(pool, rng) -> tuple[str, np.ndarray]:
    """A random crop with some structure (at least 5 % of its pixels above a tenth of max)."""
    while True:
        name, source = pool[rng.integers(len(pool))]
        top = rng.integers(source.shape[0] - SIZE + 1)
        left = rng.integers(source.shape[1] - SIZE + 1)
        crop = source[top:top + SIZE, left:left + SIZE]
        if crop.max() > 0 and np.mean(crop > 0.1 * crop.max()) > 0.05:
            break
    crop = np.rot90(crop / crop.max(), rng.integers(4))
    return name, np.ascontiguousarray(crop[:, ::-1] if rng.integers(2) else crop)


def blurred_test_image(pool, rng, family, blur: str, photons: float, seed: int, index: int):
    """Test image ``index`` of a family: ``(source, sharp, true_map, truth, blurred)``.

    A random crop, four quadrant parameters drawn uniformly over the family's range (the 2×2
    ``true_map``), the true operator of the ``blur`` layout ("bilinear": the map's overlap-add
    operator; "quadrants": each quadrant blurred by its own PSF), and the blurred image with
    Poisson–Gaussian noise (``photons`` at the peak, read noise 2 e⁻, noise seeded by the run's
    ``seed`` and ``index``). One ``rng`` serves every family of a run in turn, so a run's
    images depend on its ``--families`` and ``--n``.
    """
    source, sharp = draw_image(pool, rng)
    params = rng.uniform(family.low[0], family.high[0], size=(4, 1))
    true_map = PSFMap(family, params.reshape(2, 2, 1), (SIZE, SIZE))
    if blur == "quadrants":
        truth = quadrant_operator(true_map.psfs(dtype=torch.float64).flatten(0, 1))
    else:
        truth = true_map.operator(dtype=torch.float64)
    clean = truth(torch.from_numpy(sharp)).numpy().clip(0, None)
    blurred = psfmap.simulate.noise.poisson_gaussian(
        clean, photons, read_noise=2.0, seed=seed * 100003 + index
    ).clip(0, None)
    return source, sharp, true_map, truth, blurred


def one_psf(psf_map) -> torch.Tensor:
    """Space-invariant estimate: validity-weighted median of the cell parameters."""
    params = psf_map.params.reshape(-1, psf_map.family.n_params)
    weights = psf_map.validity.reshape(-1)
    order = np.argsort(params[:, 0])
    cumulative = np.cumsum(weights[order])
    median = params[order[np.searchsorted(cumulative, cumulative[-1] / 2)]]
    return psf_map.family(torch.from_numpy(median[None]).double())[0]


def quadrant_params(params: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``(gy, gx, N)`` parameters of the quadrant (of ``params``, ``(2, 2, N)``) holding
    each cell centre of a ``grid`` over the SIZE² image (a centre on the midline goes to the
    lower / right quadrant)."""
    rows = (cell_centres(grid[0], SIZE) >= SIZE / 2).astype(int)
    cols = (cell_centres(grid[1], SIZE) >= SIZE / 2).astype(int)
    return params[rows[:, None], cols[None, :]]


def ratio_interval(gains, truth_gains, rng, resamples: int = 2000) -> tuple[float, float]:
    """95 % paired-bootstrap interval of ``mean(gains) / mean(truth_gains)`` over the images.

    Both means are taken on the same resampled images, so the interval reflects how much the
    ratio depends on which images were drawn, not the (shared) spread of their difficulty.
    """
    gains, truth_gains = np.asarray(gains), np.asarray(truth_gains)
    picks = rng.integers(len(gains), size=(resamples, len(gains)))
    ratios = gains[picks].mean(1) / truth_gains[picks].mean(1)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def restore(blurred, operator, tv):
    scale = float(blurred.max())
    out = richardson_lucy(torch.from_numpy(blurred / scale), operator, iterations=20, tv=tv)
    return out.numpy() * scale


def add_test_image_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that decide a run's test images (``blurred_test_image`` in ``main``'s
    order), shared with ``eval_table5_errors.py`` so equal options give equal images."""
    parser.add_argument("--n", type=int, default=100, help="images per family")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photons", type=float, default=1000.0)
    parser.add_argument("--families", default="gaussian1,zernike1")
    parser.add_argument("--airyscan-binning", type=int, default=MICR_BINNING[AIRYSCAN],
                        help="sum-binning of the 44 nm Airyscan planes (1: native, as in the "
                             "first runs)")
    parser.add_argument("--blur", choices=("bilinear", "quadrants"), default="bilinear",
                        help="bilinear between the quadrant PSFs (default) or one PSF per "
                             "quadrant")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--images", choices=("real", "proc"), default="real",
                        help="real sharp images (default) or held-out procedural scenes")


def main() -> None:
    parser = argparse.ArgumentParser(description="Table V analogue")
    add_test_image_arguments(parser)
    parser.add_argument("--tv", default="0.1,0.01")
    parser.add_argument("--weights", default=None,
                        help="folder with <model>.pt weights (default: the shipped models)")
    parser.add_argument("--window", type=int, default=None,
                        help="window side of the blind map (default: the model's patch size; "
                             "larger windows average patches)")
    parser.add_argument("--stride", type=int, default=None,
                        help="window step of the blind map (default: psfmap.estimate's)")
    parser.add_argument("--median", type=int, default=3, help="median filter of the blind map")
    parser.add_argument("--save", default=None,
                        help="JSON file for the per-image gains of every restoration")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tvs = [float(v) for v in args.tv.split(",")]
    rng = np.random.default_rng(args.seed)
    pool = source_pool(args)
    print(f"{len(pool)} source images ({args.images}); {args.n} test images per family, "
          f"{SIZE}², {args.photons:g} photons at the peak, {args.blur} blur")
    rows, saved = [], {}
    labels = {"gaussian1": "G-1", "zernike1": "Z-1"}
    for family_name in args.families.split(","):
        label = labels[family_name]
        estimator = (PSFEstimator.pretrained(family_name) if args.weights is None else
                     PSFEstimator.load(Path(args.weights) / f"{family_name}.pt", family_name))
        family = estimator.family
        methods = ("ground truth", "true params on the blind grid", "blind map",
                   "space-invariant blind")
        if args.blur == "quadrants":  # the reference a 2x2 overlap-add model of the truth gives
            methods += ("true PSFs as a 2x2 grid",)
        references = methods[:1] + methods[4:]  # the ratios' denominators
        results = {(m, tv): [] for m in methods for tv in tvs}
        sources = []
        timings, failures = [], []
        for index in range(args.n):
            source, sharp, true_map, truth, blurred = blurred_test_image(
                pool, rng, family, args.blur, args.photons, args.seed, index
            )
            start = time.perf_counter()
            try:
                psf_map = psfmap.estimate(blurred, estimator, args.window, args.stride,
                                          median=args.median)
            except ValueError as error:  # every window judged textureless: count it
                failures.append(str(error))
                continue
            timings.append(time.perf_counter() - start)
            sources.append(source)
            grid_params = (quadrant_params(true_map.params, psf_map.grid)
                           if args.blur == "quadrants" else
                           resample_params(true_map, psf_map.grid))
            operators = {
                "ground truth": truth,
                "true params on the blind grid": PSFMap(
                    family, grid_params, (SIZE, SIZE)
                ).operator(dtype=torch.float64),
                "blind map": psf_map.operator(dtype=torch.float64),
                "space-invariant blind": Convolution(one_psf(psf_map)),
            }
            if args.blur == "quadrants":
                operators["true PSFs as a 2x2 grid"] = true_map.operator(dtype=torch.float64)
            base_snr, base_ssim = snr(sharp, blurred), ssim(sharp, blurred)
            for method, operator in operators.items():
                for tv in tvs:
                    restored = restore(blurred, operator, tv)
                    results[method, tv].append(
                        (snr(sharp, restored) - base_snr, ssim(sharp, restored) - base_ssim)
                    )
        for (method, tv), values in results.items():
            values = np.asarray(values)
            ratios = []
            for reference in references:
                truth_gains = np.asarray(results[reference, tv])[:, 0]
                interval = ratio_interval(values[:, 0], truth_gains,
                                          rng=np.random.default_rng(args.seed))
                ratio = (values[:, 0].mean() / truth_gains.mean() if truth_gains.mean() > 0
                         else float("nan"))
                ratios.append((ratio, *interval))
            rows.append((label, method, tv, values[:, 0].mean(), values[:, 0].std(),
                         values[:, 1].mean(), values[:, 1].std(), ratios))
        saved[label] = {"sources": sources, **{
            f"{method} | tv={tv:g}": np.asarray(values).tolist()
            for (method, tv), values in results.items()}}
        print(f"{label}: PSF map {np.mean(timings):.2f} s per image (median-{args.median} filter, "
              f"{psf_map.grid[0]}x{psf_map.grid[1]} windows); {len(timings)} images, "
              f"{len(failures)} with no valid window (left out of every column)")
        sources = np.asarray(sources)
        for source in sorted(set(sources)):  # the same rows restricted to one image source
            chosen = sources == source
            parts = []
            for tv in tvs:
                truth_gain = np.asarray(results["ground truth", tv])[chosen, 0].mean()
                for method in methods[1:]:
                    gain = np.asarray(results[method, tv])[chosen, 0].mean()
                    parts.append(f"{method} λ={tv:g}: {gain:+.2f} dB = "
                                 f"{100 * gain / truth_gain:.0f} %")
            print(f"  {label} [{source}, {chosen.sum()} images] ground truth = 100 %; "
                  + "; ".join(parts))
    print("| blur | PSFs used | λ_TV | ΔSNR (dB) | ΔSSIM | "
          + " | ".join(f"ΔSNR / {reference} (95 % interval)" for reference in references) + " |")
    print("|---|---|---|---|---|" + "---|" * len(references))
    for label, method, tv, dsnr, dsnr_sd, dssim, dssim_sd, ratios in rows:
        print(f"| {label} | {method} | {tv:g} | {dsnr:+.2f} ± {dsnr_sd:.2f} | "
              f"{dssim:+.3f} ± {dssim_sd:.3f} | "
              + " | ".join(f"{100 * ratio:.0f} % ({100 * low:.0f}–{100 * high:.0f} %)"
                           for ratio, low, high in ratios) + " |")
    if args.save:
        Path(args.save).write_text(json.dumps({"arguments": vars(args), "per_image": saved}))
        print(f"per-image gains (ΔSNR, ΔSSIM) written to {args.save}")


if __name__ == "__main__":
    main()
