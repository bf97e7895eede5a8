"""Blind deblurring of a real z-stack, frame by frame: focus finding and speed.

Data: ../shared/data/blurred/widefield_dapi_zstack.tif (40 planes of 201 × 101 px, 0.3 µm
apart; widefield DAPI nucleus, NA 1.45; elgw/deconwolf, GPL-3.0: read from the shared folder,
never bundled). The script exits cleanly when the file is absent.

1. Focus: ``psfmap.estimate(stack, "gaussian1")`` gives one map per plane; the plane with the
   smallest median width (over the valid cells) should be the focal plane. Reference: the
   plane with the largest mean absolute horizontal gradient (a classic sharpness measure).
2. Speed, in the same process: ``psfmap.deblur(stack, "gaussian1")`` (40 maps + 40 RL-TV
   runs with their space-variant operators, 20 iterations) against scikit-image's
   space-invariant ``richardson_lucy`` (20 iterations, one Gaussian PSF) on every plane;
   and ``compress=0.9999`` (each operator compressed to 99.99 % of its energy): time, kernels
   kept, change of the result.

Run: .venv/bin/python benchmarks/bench_stack.py [--figure zstack.png]
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import torch
from _timing import best_time  # noqa: E402 - benchmarks/ is on sys.path when run

import psfmap
from psfmap.blind.estimator import pretrained_names
from psfmap.training import SHARED_DATA

STACK = SHARED_DATA / "blurred" / "widefield_dapi_zstack.tif"
MODEL = "gaussian1"
ITERATIONS = 20
ENERGY = 0.9999  # compress=: energy fraction of the operator kept


def sharpness(plane: np.ndarray) -> float:
    """Mean absolute horizontal gradient: larger for a plane in focus."""
    return float(np.abs(np.diff(plane.astype(np.float64), axis=1)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", default=None, help="plot of the widths plane by plane")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not STACK.is_file():
        print(f"skipped: {STACK.name} not found")
        return
    if MODEL not in pretrained_names():
        print(f"skipped: shipped {MODEL} weights not found")
        return
    from skimage.restoration import richardson_lucy as skimage_rl

    torch.set_num_threads(2)
    stack, _ = psfmap.io.read_image(STACK)
    stack = np.asarray(stack, dtype=np.float32)
    maps = psfmap.estimate(stack, MODEL)
    widths = np.array([[np.percentile(m.params[..., 0][m.validity >= 0.5], q)
                        for q in (10, 50, 90)] for m in maps])
    focus = int(np.argmin(widths[:, 1]))
    sharpest = int(np.argmax([sharpness(plane) for plane in stack]))
    print(f"{STACK.name}: {stack.shape[0]} planes of {stack.shape[1]}x{stack.shape[2]}, "
          f"{MODEL} maps of {maps[0].grid[0]}x{maps[0].grid[1]} cells")
    print("plane  width px (10 % / median / 90 % of the valid cells)")
    for plane in range(0, len(maps), 3):
        low, median, high = widths[plane]
        print(f"{plane:5d}  {low:.2f} / {median:.2f} / {high:.2f}")
    print(f"focal plane by blind width: {focus} (median {widths[focus, 1]:.2f} px); "
          f"by gradient sharpness: {sharpest}")

    map_time = best_time(lambda: psfmap.estimate(stack, MODEL), args.repeats)
    restored = {}  # the last timed result of each variant, compared below

    def deblur(compress: float | None) -> None:
        restored[compress] = psfmap.deblur(stack, MODEL, iterations=ITERATIONS,
                                           compress=compress)

    ours = best_time(lambda: deblur(None), args.repeats)
    psf = psfmap.psf.gaussian(25, float(widths[focus, 1]), dtype=torch.float64).numpy()
    scale = float(stack.max())

    def reference() -> None:
        for plane in stack:
            skimage_rl(plane / scale, psf, num_iter=ITERATIONS, clip=False)

    theirs = best_time(reference, args.repeats)
    compressed = best_time(lambda: deblur(ENERGY), args.repeats)
    change = [np.linalg.norm(a - b) / np.linalg.norm(a)
              for a, b in zip(restored[None], restored[ENERGY])]
    ranks = [psfmap.operators.compress(m.operator(), energy=ENERGY).n_kernels for m in maps]
    print(f"maps of {len(stack)} planes: {map_time:.2f} s")
    print(f"psfmap.deblur, {len(stack)} planes (maps + space-variant RL-TV): {ours:.2f} s")
    print(f"psfmap.deblur with compress={ENERGY}: {compressed:.2f} s "
          f"({ours / compressed:.1f}x faster; {min(ranks)}-{max(ranks)} of "
          f"{maps[0].grid[0] * maps[0].grid[1]} kernels; result changed by "
          f"{100 * np.median(change):.2f} % median, {100 * max(change):.2f} % max, relative L2)")
    print(f"scikit-image richardson_lucy, one PSF, {len(stack)} planes: {theirs:.2f} s")
    print(f"ratio psfmap / scikit-image: {ours / theirs:.2f} (compressed: "
          f"{compressed / theirs:.2f})  "
          f"({platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads)")
    if args.figure:
        from psfmap.figures import plot_psf_map_stack

        plot_psf_map_stack(maps, args.figure, xlabel="plane (0.3 µm apart)")
        print(f"figure -> {args.figure}")


if __name__ == "__main__":
    main()
