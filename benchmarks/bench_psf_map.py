"""Speed of the blind PSF map vs the deblurring it feeds (issue 5, section 6).

A 1024 × 1024 image (bundled neuron sample tiled, blurred by a 2 × 2 Z-3 PSF grid), a
13 × 13 grid of windows: time of ``estimate_psf_map`` (CNN inference on the 169 windows,
filling, median) against RL-TV (20 iterations, λ = 0.1) with the resulting operator on the
same image, in the same process. Target: map ≤ 10 % of the RL-TV time.

Uses the shipped zernike3 CNN; when it is absent, an untrained network of the same default
architecture (identical cost, meaningless parameters) stands in and the output says so.
Run: .venv/bin/python benchmarks/bench_psf_map.py
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _timing import best_time  # noqa: E402 - benchmarks/ is on sys.path when run

import psfmap
from psfmap.blind.estimator import PSFEstimator, pretrained_names
from psfmap.blind.psf_maps import estimate_psf_map
from psfmap.restore import richardson_lucy

SIZE = 1024
GRID = (13, 13)


def estimator_for_timing(weights: str | None = None) -> tuple[PSFEstimator, str]:
    if weights is not None:
        return PSFEstimator.load(weights, "zernike3"), f"zernike3 weights {weights}"
    if "zernike3" in pretrained_names():
        return PSFEstimator.pretrained("zernike3"), "shipped zernike3"
    from psfmap.blind.network import PSFRegressor
    from psfmap.training import TrainConfig

    config = TrainConfig(model="zernike3").resolved()
    network = PSFRegressor.from_config(config.network)
    return PSFEstimator(network, config.to_dict()), "UNTRAINED zernike3 stand-in"


def main() -> None:
    parser = argparse.ArgumentParser(description="PSF map time vs RL-TV time")
    parser.add_argument("--weights", default=None, help="zernike3 weights file")
    args = parser.parse_args()
    torch.set_num_threads(2)
    estimator, label = estimator_for_timing(args.weights)
    sample = psfmap.simulate.samples.bundled_sample("neuron")
    sharp = np.tile(sample, (SIZE // sample.shape[0] + 1,) * 2)[:SIZE, :SIZE]
    family = estimator.family
    params = torch.tensor([[0.1, 0.05, 0.3], [0.2, 0.1, 1.0], [0.3, 0.05, 2.0],
                           [0.15, 0.15, 2.8]], dtype=torch.float64)
    truth = psfmap.operators.from_psf_grid(
        family(params).reshape(2, 2, family.size, family.size), (SIZE, SIZE)
    )
    image = truth(torch.from_numpy(sharp)).float().clamp_min(0)

    psf_map = estimate_psf_map(image, estimator, grid=GRID, median=3)  # warm-up
    map_time = best_time(lambda: estimate_psf_map(image, estimator, grid=GRID, median=3), 3)
    operator = psf_map.operator()
    operator_time = best_time(lambda: psf_map.operator(), 1)
    work = image / image.max()
    richardson_lucy(work, operator, iterations=1, tv=0.1)  # warm-up
    rl_time = best_time(lambda: richardson_lucy(work, operator, iterations=20, tv=0.1), 1)
    print(f"estimator: {label}, patch {estimator.patch_size} px, "
          f"{torch.get_num_threads()} threads")
    print(f"PSF map {GRID[0]}x{GRID[1]} windows on {SIZE}x{SIZE}: {map_time:.3f} s "
          f"(+ building the {psf_map.grid[0] * psf_map.grid[1]}-kernel operator "
          f"{operator_time:.3f} s)")
    print(f"RL-TV 20 iterations with that operator: {rl_time:.3f} s")
    print(f"ratio map / RL-TV = {100 * map_time / rl_time:.1f} % (target <= 10 %); "
          f"with the operator build {100 * (map_time + operator_time) / rl_time:.1f} %")


if __name__ == "__main__":
    main()
