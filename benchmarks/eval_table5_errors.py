"""Per-cell error of the blind PSF map on the Table V images (``eval_table5.py``'s protocol).

For each test image (the images of ``eval_table5.py`` run with the same test-image options,
``add_test_image_arguments``: crops, quadrant parameters and noise), the blind map's parameter
in every cell is compared with the true parameter there: on the ``bilinear`` layout the true
parameters interpolated at the cell centre (``resample_params``), on the ``quadrants`` layout
the parameter of the quadrant holding the cell, counting only the cells whose window lies
inside one quadrant (a pure PSF of the family). Bias and RMS error of the median-filtered map
(what ``psfmap.deblur`` uses) and of the raw per-window estimates on
windows judged valid, per fifth of the parameter range.

Run: .venv/bin/python benchmarks/eval_table5_errors.py [--n 100] [--blur quadrants]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from eval_table5 import (
    SIZE,
    add_test_image_arguments,
    blurred_test_image,
    quadrant_params,
    source_pool,
)

import psfmap
from psfmap.blind.estimator import PSFEstimator
from psfmap.blind.psf_maps import resample_params


def inside_one_quadrant(psf_map) -> np.ndarray:
    """``(gy, gx)`` mask of the cells whose window does not cross the image's midlines."""
    window = psf_map.metadata["window"]
    rows = np.asarray(psf_map.metadata["window_rows"])
    cols = np.asarray(psf_map.metadata["window_cols"])
    half = SIZE // 2
    rows_ok = (rows + window <= half) | (rows >= half)
    cols_ok = (cols + window <= half) | (cols >= half)
    return rows_ok[:, None] & cols_ok[None, :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_test_image_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    pool = source_pool(args)
    for family_name in args.families.split(","):  # eval_table5.main's draws, in its order
        estimator = PSFEstimator.pretrained(family_name)
        family = estimator.family
        truth_cells, map_cells, raw_cells, valid_cells = [], [], [], []
        for index in range(args.n):
            _, _, true_map, _, blurred = blurred_test_image(
                pool, rng, family, args.blur, args.photons, args.seed, index
            )
            filtered = psfmap.estimate(blurred, estimator, median=3)
            raw = psfmap.estimate(blurred, estimator, median=0)
            if args.blur == "quadrants":
                true_cells = quadrant_params(true_map.params, filtered.grid)[..., 0]
                keep = inside_one_quadrant(filtered)
            else:
                true_cells = resample_params(true_map, filtered.grid)[..., 0]
                keep = np.ones(filtered.grid, dtype=bool)
            truth_cells.append(true_cells[keep])
            map_cells.append(filtered.params[..., 0][keep])
            raw_cells.append(raw.params[..., 0][keep])
            valid_cells.append(raw.validity[keep] > 0.5)
        report(family_name, family, args, *(np.concatenate(v) for v in
                                            (truth_cells, map_cells, raw_cells, valid_cells)))


def report(family_name, family, args, truth, estimate, raw, valid) -> None:
    """Bias and RMS error per fifth of the range, as a markdown table."""
    name = family.names[0]
    print(f"{family_name} ({name}), {args.blur} layout, {args.n} images, {truth.size} cells, "
          f"{100 * valid.mean():.1f} % of windows judged valid")
    print(f"| true {name} | cells | map bias | map RMS | raw valid bias | raw valid RMS |")
    print("|---|---|---|---|---|---|")
    edges = np.linspace(family.low[0], family.high[0], 6)
    for low, high in zip(edges[:-1], edges[1:]):
        chosen = (truth >= low) & (truth <= high)
        raw_chosen = chosen & valid
        map_error = estimate[chosen] - truth[chosen]
        raw_error = raw[raw_chosen] - truth[raw_chosen]
        print(f"| {low:.2f}–{high:.2f} | {chosen.sum()} | {map_error.mean():+.3f} | "
              f"{np.sqrt(np.mean(map_error ** 2)):.3f} | {raw_error.mean():+.3f} | "
              f"{np.sqrt(np.mean(raw_error ** 2)):.3f} |")

if __name__ == "__main__":
    main()
