"""Benchmark: calibration of K bead images into an operator family (issue 4 §6).

Target: K = 20 images of 2048² with ~150 beads each in ≤ 30 s on 2 cores. Also reports how the
time grows with K and with the image size, and the ratio against a reference run in the same
process: the Laplacian-of-Gaussian filtering of the same images alone (scipy.ndimage), the
unavoidable first step of any bead detection.

Run:  .venv/bin/python benchmarks/bench_calibrate.py [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from scipy import ndimage as ndi

from psfmap.calibrate import calibrate
from psfmap.calibrate.synthetic import ZernikeFieldFamily, conditions_grid, field_error


def bead_images(n_images: int, size: int, n_beads: int, seed: int = 0):
    model = ZernikeFieldFamily(image_shape=(size, size), psf_size=17)
    rng = np.random.default_rng(seed)
    conditions = conditions_grid(n_images)
    spacing = 0.8 * np.sqrt(size * size / n_beads)
    images = [
        model.bead_image(c, n_beads, min_distance=spacing, seed=rng)[0].astype(np.float32)
        for c in conditions
    ]
    return model, conditions, images


def timed(function, repeats: int = 1) -> float:
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} torch threads")

    size, n_images, n_beads = (1024, 8, 40) if args.quick else (2048, 20, 150)
    print(f"generating {n_images} images of {size}² with ~{n_beads} beads ...", flush=True)
    model, conditions, images = bead_images(n_images, size, n_beads)

    reference = timed(lambda: [ndi.gaussian_laplace(im, 1.35) for im in images])
    family = None

    def run():
        nonlocal family
        family = calibrate(images, psf_size=21, psf_sigma=1.35)

    elapsed = timed(run)
    beads = family.metadata["calibration"]["beads_per_image"]
    errors = [field_error(op, *model.field_psfs(c, grid=8, size=21))
              for c, op in zip(conditions, family.operators(), strict=True)]
    print(f"calibrate K={n_images} {size}²: {elapsed:.2f} s "
          f"({np.mean(beads):.0f} clean beads/image, I={family.n_eigen_psfs}, "
          f"J={family.n_spatial}); target 30 s for K=20 2048²")
    print(f"reference (LoG filter of the same images, scipy): {reference:.2f} s; "
          f"ratio calibrate / reference = {elapsed / reference:.2f}")
    print(f"relative operator error: max {max(errors):.4f}, mean {np.mean(errors):.4f}")

    print("growth with K (same image size):")
    for k in sorted({max(2, n_images // 4), n_images // 2, n_images}):
        t = timed(lambda k=k: calibrate(images[:k], psf_size=21, psf_sigma=1.35))
        print(f"  K={k:3d}: {t:6.2f} s  ({t / k:.3f} s per image)")

    print("growth with image size (K = 4, same bead density):")
    for side in ([256, 512, 1024] if args.quick else [512, 1024, 2048]):
        beads_here = max(30, int(n_beads * (side / size) ** 2))
        _, _, small = bead_images(4, side, beads_here, seed=1)
        t = timed(lambda small=small: calibrate(small, psf_size=21, psf_sigma=1.35,
                                                min_beads=6))
        print(f"  {side:5d}²: {t:6.2f} s  ({t / side**2 * 1e6:.3f} µs per pixel per 4 images)")


if __name__ == "__main__":
    main()
