"""Depth from astigmatism on real beads at known depths (issue 5, section 5).

Data: ../shared/data/beads/psfextractor_astigmatic_beads_zstack.tif (80 slices, 0.100 µm
apart, xy ~0.0635 µm, ~11 beads; hoogenboom-group/PSF-Extractor, CC-BY-4.0).

For every bead and every slice where the beads are visible, a bead-centred patch gives Z-3
parameters (focus a1, cylinder, axis a3) and the raw depth z = a1 (2 a3 / π − 1) (Shajkofci
& Liebling, IEEE TIP 2020), or the twin-invariant raw depth of ``psfmap.depth`` (second row
of each estimator). The affine map to micrometres (and the astigmatism axis offset) is
fitted on all beads but one and tested on the held-out bead (leave-one-bead-out), so every
reported error is on a bead the calibration never saw.

Two estimators of the parameters:
- ``cnn``: the shipped ``zernike3`` PSFEstimator on patch_size patches (skipped if absent);
- ``model-fit``: least squares of ``a k_θ + b`` over ``psfmap.psf.model("zernike3")`` with the
  file's pixel size (NA 1.4, λ 0.6 µm, n 1.518 assumed: the file gives no optics) — a
  model-based alternative, not the CNN;
- ``model-fit-fixed-astigmatism``: the same with the cylinder fixed to the instrument's
  astigmatism A (one value for the whole stack, as a cylindrical lens gives), A chosen in
  the calibration (on the training beads only) among a few values.

Run: .venv/bin/python benchmarks/eval_depth.py [--methods cnn,model-fit]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

import psfmap
from psfmap.depth import (
    DEPTH_FORMULAS,
    astigmatic_depth,
    best_axis_offset,
    fit_depth,
    fit_psf_params,
)
from psfmap.training import SHARED_DATA

STACK = SHARED_DATA / "beads" / "psfextractor_astigmatic_beads_zstack.tif"
Z_STEP = 0.100
PIXEL = 0.0635


def find_beads(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bead centres (row, col) from the maximum projection of the smoothed stack."""
    smooth = ndimage.gaussian_filter(stack, (0, 2, 2))
    mip = smooth.max(0)
    peaks = (mip == ndimage.maximum_filter(mip, 25)) & (mip > mip.mean() + 2 * mip.std())
    return np.nonzero(peaks)


def away_from_border(rows, cols, shape, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """The centres at least ``margin`` px inside a ``shape = (height, width)`` plane."""
    keep = ((rows >= margin) & (cols >= margin) & (rows < shape[0] - margin)
            & (cols < shape[1] - margin))
    return rows[keep], cols[keep]


def visible_slices(stack: np.ndarray, rows, cols, snr: float = 4.0) -> np.ndarray:
    """Slices where the median bead peak stands ``snr`` noise std above the background."""
    smooth = ndimage.gaussian_filter(stack, (0, 2, 2))
    background = np.median(smooth, axis=(1, 2))
    noise = np.median(np.abs(smooth - background[:, None, None]), axis=(1, 2)) * 1.4826
    peaks = np.median(smooth[:, rows, cols], axis=1)
    return np.nonzero(peaks - background > snr * noise)[0]


def patches_at(stack, slices, rows, cols, size):
    half = size // 2
    out, z, bead = [], [], []
    for b, (r, c) in enumerate(zip(rows, cols)):
        for s in slices:
            out.append(stack[s, r - half:r - half + size, c - half:c - half + size])
            z.append(s * Z_STEP)
            bead.append(b)
    return np.asarray(out), np.asarray(z), np.asarray(bead)


def background_judged_valid(stack, slices, rows, cols, estimator, clearance: int = 20) -> float:
    """Fraction of bead-free windows (no bead centre within ``clearance`` px) judged valid.

    Such windows hold only the uneven background of the slice: a trustworthy validity output
    rejects them, or whole-slice maps mix background estimates into the bead ones.
    """
    size = estimator.patch_size
    patches = []
    for s in slices[:: max(1, len(slices) // 4)]:
        for y0 in range(0, stack.shape[1] - size + 1, size // 4):
            for x0 in range(0, stack.shape[2] - size + 1, size // 4):
                gap = np.maximum(np.maximum(y0 - rows, rows - (y0 + size - 1)),
                                 np.maximum(x0 - cols, cols - (x0 + size - 1)))
                if gap.min() > clearance:
                    patches.append(stack[s, y0:y0 + size, x0:x0 + size])
    _, validity = estimator.predict(np.asarray(patches, dtype=np.float32))
    return float(np.mean(np.asarray(validity) > 0.5))


def calibrate(params, z, formula="paper"):
    offset = best_axis_offset(params, z, formula=formula)
    return fit_depth(params, z, axis_offset=offset, formula=formula)


def leave_one_bead_out(params, z, bead, formula="paper"):
    errors = []
    for b in np.unique(bead):
        train = bead != b
        errors.append(calibrate(params[train], z[train], formula).depth(params[~train])
                      - z[~train])
    return np.concatenate(errors)


def report_formulas(name, params, z, bead, seconds):
    """One row per depth formula (psfmap.depth.DEPTH_FORMULAS), same parameters."""
    for formula in DEPTH_FORMULAS:
        label = name if formula == "paper" else f"{name}, {formula} formula"
        report(label, leave_one_bead_out(params, z, bead, formula), z, seconds)


def leave_one_bead_out_choosing(candidates, z, bead):
    """LOBO where each fold also picks, among parameter sets, the one calibrating best."""
    errors, chosen = [], []
    for b in np.unique(bead):
        train = bead != b
        fits = [calibrate(params[train], z[train]) for params in candidates]
        best = int(np.argmin([fit.rms_error for fit in fits]))
        chosen.append(best)
        errors.append(fits[best].depth(candidates[best][~train]) - z[~train])
    return np.concatenate(errors), chosen


def report(name, errors, z, seconds):
    span = z.max() - z.min()
    rmse = float(np.sqrt(np.mean(errors**2)))
    mae = float(np.mean(np.abs(errors)))
    print(f"| {name} | {rmse:.3f} | {100 * rmse / span:.1f} % | {mae:.3f} | "
          f"{100 * mae / span:.1f} % | {seconds:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="cnn,model-fit,model-fit-fixed-astigmatism")
    parser.add_argument("--weights", default=None,
                        help="zernike3 weights file (default: the shipped model)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not STACK.is_file():
        print(f"skipped: {STACK} not found")
        return
    stack = psfmap.io.read_image(STACK)[0].astype(np.float64)
    all_rows, all_cols = find_beads(stack)
    rows, cols = away_from_border(all_rows, all_cols, stack.shape[1:], margin=40)
    slices = visible_slices(stack, rows, cols)
    slices = np.arange(slices.min(), slices.max() + 1)
    span = (slices.max() - slices.min()) * Z_STEP
    print(f"{len(rows)} beads, slices {slices.min()}..{slices.max()} "
          f"({len(slices)} slices, range {span:.2f} µm), {len(rows) * len(slices)} patches")
    print("| parameters from | RMSE (µm) | RMSE / range | MAE (µm) | MAE / range | time |")
    print("|---|---|---|---|---|---|")
    methods = args.methods.split(",")
    z_all = np.tile(slices * Z_STEP, len(rows))
    report("baseline: no information (the mean depth)", z_all - z_all.mean(), z_all, 0.0)
    if "cnn" in methods:
        from psfmap.blind.estimator import PSFEstimator, pretrained_names

        if args.weights is not None or "zernike3" in pretrained_names():
            estimator = (PSFEstimator.pretrained("zernike3") if args.weights is None
                         else PSFEstimator.load(args.weights, "zernike3"))
            judged = background_judged_valid(stack, slices, all_rows, all_cols, estimator)
            print(f"  background: {judged:.0%} of bead-free {estimator.patch_size}² windows "
                  "judged valid (native pixels)")
            optics = estimator.family.optics
            label = ("shipped zernike3" if args.weights is None
                     else f"zernike3 from {Path(args.weights).name}, optics {optics}")
            # sampling of the pupil cut-off 2 NA / λ in cycles per pixel: the CNN's family vs
            # the file (NA 1.4, λ 0.6 assumed); bin the stack so the two match
            ratio = (2 * optics["na"] / optics["wavelength"] * optics["pixel_size"]) / (
                2 * 1.4 / 0.6 * PIXEL)
            for factor in sorted({1, max(1, int(round(ratio)))}):
                binned = stack[:, : stack.shape[1] // factor * factor,
                               : stack.shape[2] // factor * factor]
                binned = binned.reshape(stack.shape[0], stack.shape[1] // factor, factor,
                                        stack.shape[2] // factor, factor).sum((2, 4))
                size = estimator.patch_size
                half = size // 2 + 1
                inside = ((rows // factor >= half) & (cols // factor >= half)
                          & (rows // factor < binned.shape[1] - half)
                          & (cols // factor < binned.shape[2] - half))
                patches, z, bead = patches_at(binned, slices, rows[inside] // factor,
                                              cols[inside] // factor, size)
                start = time.perf_counter()
                params, validity = estimator.predict(patches.astype(np.float32))
                params = np.asarray(params, dtype=np.float64)
                seconds = time.perf_counter() - start
                report_formulas(f"CNN ({label}), stack binned {factor}x{factor}", params,
                                z, bead, seconds)
                validity = np.asarray(validity)
                print(f"  {inside.sum()} beads; CNN validity mean {validity.mean():.2f} "
                      f"({np.mean(validity > 0.5):.0%} of bead patches valid); focus "
                      f"{params[:, 0].min():.3f}..{params[:, 0].max():.3f}; "
                      f"corr(raw depth at offset 0, z) = "
                      f"{np.corrcoef(astigmatic_depth(params), z)[0, 1]:.2f}")
        else:
            print("| CNN (shipped zernike3) | not available | | | | |")
    if "model-fit" in methods:
        family = psfmap.psf.model(
            "zernike3", size=33, low=(0.0, 0.0, 0.0), high=(0.8, 0.6, math.pi),
            na=1.4, wavelength=0.6, pixel_size=PIXEL, immersion_index=1.518,
        )
        patches, z, bead = patches_at(stack, slices, rows, cols, family.size)
        start = time.perf_counter()
        params = fit_psf_params(patches, family, steps=(13, 9, 18), refine=2)
        seconds = time.perf_counter() - start
        report_formulas("least-squares Z-3 model fit", params, z, bead, seconds)
    if "model-fit-fixed-astigmatism" in methods:
        astigmatism = (0.05, 0.075, 0.1, 0.15, 0.2, 0.25)
        candidates = []
        start = time.perf_counter()
        for value in astigmatism:
            family = psfmap.psf.model(
                "zernike3", size=33, low=(0.0, value, 0.0), high=(0.8, value, math.pi),
                na=1.4, wavelength=0.6, pixel_size=PIXEL, immersion_index=1.518,
            )
            patches, z, bead = patches_at(stack, slices, rows, cols, family.size)
            candidates.append(fit_psf_params(patches, family, steps=(33, 1, 12), refine=1))
        seconds = time.perf_counter() - start
        errors, chosen = leave_one_bead_out_choosing(candidates, z, bead)
        report("least-squares Z-3 fit, cylinder fixed (A from calibration)", errors, z, seconds)
        print(f"  A chosen per fold: {sorted({astigmatism[c] for c in chosen})} RMS waves")


if __name__ == "__main__":
    main()
