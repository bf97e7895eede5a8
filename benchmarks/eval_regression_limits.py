"""What limits the CNN's R² on real microscopy (issue 5, Table III targets).

Three measurements on the held-out test split of ``eval_regression.py`` (same seed), each
changing one thing and keeping the rest:

* **richness**: R² on the [micr] patches whose fine detail stands at least ``T`` times above
  the noise (the ``detail_snr`` that defines the ground-truth validity a0, ``T`` = 30 there):
  how much of the error sits in poorly textured patches;
* **brightness**: R² on [micr] with every patch at one peak photon count (Poisson only);
* **intrinsic blur**: R² at 10⁴ peak photons when the sharp objects are first blurred by a
  Gaussian of random width σ₀ (uniform in ``--pre-blur``, px) that the label ignores, as real
  "sharp" images carry their microscope's own blur, which varies with the object's depth. For
  [syn] and [poi], whose objects are exactly sharp, it shows what an unknown σ₀ of that size
  costs; for [micr], what a further one costs.

R² is eq. 15 as in ``eval_regression.py`` (coefficient of determination, truly valid patches).

Run: .venv/bin/python benchmarks/eval_regression_limits.py [--models gaussian1] [--samples 3000]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from eval_regression import _r2 as table_iii_r2
from scipy import ndimage

from psfmap.blind.estimator import PSFEstimator
from psfmap.training import PatchGenerator

RICHNESS = (30.0, 100.0, 300.0, 1000.0)
PHOTONS = (100.0, 1000.0, 10000.0, 100000.0, 1000000.0)
PRE_BLUR_PHOTONS = 10000.0


def _r2(estimator, batch, mask=None, valid=None) -> tuple[float, int]:
    """Mean R² over the parameters on the truly valid patches (``valid``: those of another
    rendering of the same crops) that ``mask`` keeps, and their count."""
    keep = (batch.valid if valid is None else valid).numpy() > 0.5
    if mask is not None:
        keep &= mask
    predicted, _ = estimator.predict(batch.patches)
    return table_iii_r2(estimator, batch.params, predicted, keep)[0], int(keep.sum())


def _generator(estimator, source: str, seed: int) -> PatchGenerator:
    config = {**estimator.config["data"], "mix": {source: 1.0}, "invalid_fraction": 0.0}
    return PatchGenerator(estimator.family, config, seed=seed, split="test")


def _draw(data: PatchGenerator, samples: int):
    sharp, names, explicit = data.sharp_crops(samples)
    params = data.sample_params(samples)
    return sharp, params, data.family(params.float()).float(), names, explicit


def richness(estimator, samples: int, seed: int) -> list[dict]:
    data = _generator(estimator, "micr", seed)
    batch = data.render(*_draw(data, samples))
    detail = batch.detail_snr.numpy()
    rows = []
    for threshold in RICHNESS:
        r2, kept = _r2(estimator, batch, detail >= threshold)
        rows.append({"detail_snr_at_least": threshold, "r2": r2, "patches": kept})
    return rows


def brightness(estimator, samples: int, seed: int) -> list[dict]:
    data = _generator(estimator, "micr", seed)
    sharp, params, psfs, names, explicit = _draw(data, samples)
    rows = []
    for photons in PHOTONS:
        batch = data.render(sharp, params, psfs, names, explicit, photons=(photons, photons))
        r2, kept = _r2(estimator, batch)
        rows.append({"photons": photons, "r2": r2, "patches": kept})
    return rows


def intrinsic_blur(estimator, samples: int, seed: int, pre_blur: tuple[float, float]) -> dict:
    rows = {}
    widths = np.random.default_rng(seed).uniform(*pre_blur, samples)
    for source in ("syn", "poi", "micr"):
        data = _generator(estimator, source, seed)
        sharp, params, psfs, names, explicit = _draw(data, samples)
        pre_blurred = torch.from_numpy(np.stack([
            ndimage.gaussian_filter(crop, width, mode="reflect")
            for crop, width in zip(sharp.numpy(), widths)]))
        photons = (PRE_BLUR_PHOTONS, PRE_BLUR_PHOTONS)
        as_is = data.render(sharp, params, psfs, names, explicit, photons=photons)
        # scored on the same patches: those valid before the extra blur
        sharp_r2, kept = _r2(estimator, as_is)
        blurred_r2, _ = _r2(estimator, data.render(pre_blurred, params, psfs, names, explicit,
                                                   photons=photons), valid=as_is.valid)
        rows[source] = {"r2_as_is": sharp_r2, "r2_pre_blurred": blurred_r2, "patches": kept}
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gaussian1,gaussian2,zernike1")
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--pre-blur", default="0.3,1.0", metavar="LOW,HIGH",
                        help="range of the unknown intrinsic blur σ₀ (px)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pre_blur = tuple(float(v) for v in args.pre_blur.split(","))
    results = {}
    for name in args.models.split(","):
        estimator = PSFEstimator.pretrained(name)
        entry = {"richness": richness(estimator, args.samples, args.seed),
                 "brightness": brightness(estimator, args.samples, args.seed),
                 "intrinsic_blur": intrinsic_blur(estimator, args.samples, args.seed, pre_blur)}
        results[name] = entry
        print(f"{name}: [micr] R² by detail SNR " + " / ".join(
            f"≥{row['detail_snr_at_least']:g}: {row['r2']:.3f} ({row['patches']})"
            for row in entry["richness"]))
        print(f"{name}: [micr] R² by peak photons " + " / ".join(
            f"{row['photons']:g}: {row['r2']:.3f}" for row in entry["brightness"]))
        print(f"{name}: R² at {PRE_BLUR_PHOTONS:g} photons, as is → pre-blurred σ₀ "
              f"{pre_blur[0]:g}–{pre_blur[1]:g} px: " + " / ".join(
                  f"[{source}] {row['r2_as_is']:.3f} → {row['r2_pre_blurred']:.3f}"
                  for source, row in entry["intrinsic_blur"].items()), flush=True)
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(results, stream, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
