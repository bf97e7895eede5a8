"""MaxiSumMin sampling of admissible sets (issue 22, item 2): spread and cost.

* P = 3 and 7, L = 200 points: sum of nearest-neighbour distances of
  ``psfmap.deepblur.sample_convex`` against the same number of points with uniform Dirichlet
  weights on the vertices (mean over 5 seeds of each), for the simplex (P + 1 vertices) and for
  2P random Gaussian vertices; the largest distance to the hull of 50 returned points.
* P = 100, L = 10,000 (the simplex, 101 vertices): wall time, spread ratio, hull distance.

Run: ``python benchmarks/eval_deepblur_sampling.py --threads 1``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from psfmap.deepblur import dirichlet_points, hull_distance, nearest_neighbour_sum, sample_convex


def vertices(kind: str, p: int) -> np.ndarray:
    if kind == "simplex":
        return np.vstack([np.zeros(p), np.eye(p)])
    return np.random.default_rng(p).normal(size=(2 * p, p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-large", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"machine": f"{platform.machine()}, {args.threads} torch thread(s)", "small": []}
    for p in (3, 7):
        for kind in ("simplex", "random"):
            corners = vertices(kind, p)
            ratios, distances, seconds = [], [], []
            for seed in range(5):
                start = time.perf_counter()
                points = sample_convex(corners, 200, seed=seed)
                seconds.append(time.perf_counter() - start)
                baseline = nearest_neighbour_sum(dirichlet_points(corners, 200, seed=100 + seed))
                ratios.append(nearest_neighbour_sum(points) / baseline)
                distances.append(float(hull_distance(points[:50], corners).max()))
            result["small"].append({"P": p, "vertices": kind, "L": 200,
                                    "ratio_mean": float(np.mean(ratios)),
                                    "ratio_min": float(np.min(ratios)),
                                    "max_hull_distance": max(distances),
                                    "seconds": float(np.mean(seconds))})
    if not args.skip_large:
        corners = vertices("simplex", 100)
        start = time.perf_counter()
        points = sample_convex(corners, 10_000, seed=0)
        elapsed = time.perf_counter() - start
        baseline = nearest_neighbour_sum(dirichlet_points(corners, 10_000, seed=1))
        result["large"] = {"P": 100, "L": 10_000, "seconds": elapsed,
                           "ratio": nearest_neighbour_sum(points) / baseline,
                           "max_hull_distance": float(hull_distance(points[:50], corners).max())}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
