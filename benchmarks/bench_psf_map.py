"""Speed of the blind PSF map against fixed references in the same process.

A 1024 × 1024 image (bundled neuron sample tiled, blurred by a 2 × 2 Z-3 PSF grid, Poisson
noise). Two measurements, each a ratio of times taken in this process, one after the other:

1. **issue 23 target** — the PSF map with ``psfmap.estimate``'s defaults (windows of the
   patch size every half patch: 31 × 31 windows on 1024², median 3) against scikit-image's
   space-invariant ``richardson_lucy`` (20 iterations, ``clip=False``, float32 like the image)
   with the map's median PSF on the same image: a fixed reference, so that a faster
   restoration does not make the map look slower. Target: ≤ 0.2.
2. **issue 5 §6** — the map on a 13 × 13 grid against RL-TV (20 iterations, λ = 0.1) with the
   resulting overlap-add operator. Target: ≤ 10 %.

Times are the best of ``--repeats`` runs (the least disturbed by other load); the load
average is printed with them. Uses the shipped zernike3 CNN (the default model); when it is
absent, an untrained network of the same default architecture (identical cost, meaningless
parameters) stands in and the output says so.
Run: .venv/bin/python benchmarks/bench_psf_map.py [--threads 2] [--repeats 5] [--skip-rltv]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from _timing import best_time  # noqa: E402 - benchmarks/ is on sys.path when run

import psfmap
from psfmap.blind.estimator import PSFEstimator, pretrained_names
from psfmap.blind.psf_maps import estimate_psf_map
from psfmap.restore import richardson_lucy

SIZE = 1024
GRID = (13, 13)
TARGET_SKIMAGE = 0.2


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


def test_image(estimator: PSFEstimator) -> torch.Tensor:
    """The bundled neuron tiled to 1024², blurred by a 2 × 2 grid of the family's PSFs,
    Poisson noise at 1000 photons at the peak (seeded)."""
    sample = psfmap.simulate.samples.bundled_sample("neuron")
    sharp = np.tile(sample, (SIZE // sample.shape[0] + 1,) * 2)[:SIZE, :SIZE]
    family = estimator.family
    params = torch.tensor([[0.1, 0.05, 0.3], [0.2, 0.1, 1.0], [0.3, 0.05, 2.0],
                           [0.15, 0.15, 2.8]], dtype=torch.float64)
    truth = psfmap.operators.from_psf_grid(
        family(params).reshape(2, 2, family.size, family.size), (SIZE, SIZE)
    )
    blurred = truth(torch.from_numpy(sharp / sharp.max())).clamp_min(0)
    generator = torch.Generator().manual_seed(0)
    return (torch.poisson(1000 * blurred, generator=generator) / 1000).float()


def load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description="PSF map time vs fixed references")
    parser.add_argument("--weights", default=None, help="zernike3 weights file")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (best kept)")
    parser.add_argument("--skip-rltv", action="store_true",
                        help="only the scikit-image comparison (RL-TV takes minutes under load)")
    args = parser.parse_args()
    from skimage.restoration import richardson_lucy as skimage_richardson_lucy

    torch.set_num_threads(args.threads)
    estimator, label = estimator_for_timing(args.weights)
    image = test_image(estimator)
    print(f"estimator: {label}, patch {estimator.patch_size} px, {torch.get_num_threads()} "
          f"torch threads; {load()}")

    # 1. issue 23: default map vs scikit-image's space-invariant Richardson-Lucy
    psf_map = estimate_psf_map(image, estimator, median=3)  # warm-up (and the median PSF)
    median_params = np.median(psf_map.params.reshape(-1, psf_map.params.shape[-1]), axis=0)
    # float32 like the image: scikit-image then works in float32 (its fastest)
    psf = estimator.family(torch.as_tensor(median_params)[None])[0].float().numpy()
    work = image.numpy()
    skimage_richardson_lucy(work[:128, :128], psf, num_iter=2, clip=False)  # warm-up
    default_time = best_time(lambda: estimate_psf_map(image, estimator, median=3), args.repeats)
    skimage_time = best_time(
        lambda: skimage_richardson_lucy(work, psf, num_iter=20, clip=False),
        max(1, args.repeats // 2))
    # the same in float64 (scikit-image's type for float64 data), for comparison
    work64, psf64 = work.astype(np.float64), psf.astype(np.float64)
    skimage64_time = best_time(
        lambda: skimage_richardson_lucy(work64, psf64, num_iter=20, clip=False),
        max(1, args.repeats // 2))
    ratio = default_time / skimage_time
    print(f"PSF map, psfmap.estimate defaults ({psf_map.grid[0]}x{psf_map.grid[1]} windows of "
          f"{estimator.patch_size}² on {SIZE}², median 3): {default_time:.3f} s")
    print(f"scikit-image richardson_lucy, space-invariant, 20 iterations, same image: "
          f"{skimage_time:.3f} s in float32, {skimage64_time:.3f} s in float64")
    print(f"ratio map / scikit-image RL = {ratio:.3f} (float32 reference; target <= "
          f"{TARGET_SKIMAGE}), {default_time / skimage64_time:.3f} against float64; {load()}")

    if args.skip_rltv:
        return
    # 2. issue 5 §6: 13 x 13 map vs RL-TV with the resulting operator
    psf_map = estimate_psf_map(image, estimator, grid=GRID, median=3)
    map_time = best_time(lambda: estimate_psf_map(image, estimator, grid=GRID, median=3),
                         args.repeats)
    operator = psf_map.operator()
    operator_time = best_time(lambda: psf_map.operator(), 1)
    scaled = image / image.max()
    richardson_lucy(scaled, operator, iterations=1, tv=0.1)  # warm-up
    rl_time = best_time(lambda: richardson_lucy(scaled, operator, iterations=20, tv=0.1), 1)
    print(f"PSF map {GRID[0]}x{GRID[1]} windows on {SIZE}x{SIZE}: {map_time:.3f} s "
          f"(+ building the {psf_map.grid[0] * psf_map.grid[1]}-kernel operator "
          f"{operator_time:.3f} s)")
    print(f"RL-TV 20 iterations with that operator: {rl_time:.3f} s")
    print(f"ratio map / RL-TV = {100 * map_time / rl_time:.1f} % (target <= 10 %); "
          f"with the operator build {100 * (map_time + operator_time) / rl_time:.1f} %; "
          f"{load()}")


if __name__ == "__main__":
    main()
