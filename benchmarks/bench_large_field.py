"""Blind deblurring of large fields: time and peak memory against the field size.

For each side N (default 1024, 2048, 4096) a child process deblurs an N × N image — the
bundled neuron sample tiled, blurred by a 2 × 2 grid of Gaussians (σ 1–2.5 px) with Poisson
noise — with the plain call ``psfmap.deblur(image, model)`` (default windows every 32 px:
31², 63², 127² cells; RL-TV, 20 iterations), and reports:

* the time of the PSF map and of the restoration;
* the child's peak resident memory (everything: Python, torch, the image, the map, RL);
* the reference in the same process: scikit-image's space-invariant ``richardson_lucy``
  (20 iterations, the map's median PSF everywhere) on the same image, and the ratio.

Run: .venv/bin/python benchmarks/bench_large_field.py [--sizes 1024,2048] [--model gaussian1]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch

import psfmap
from psfmap.identify.blind import DEFAULT_MODEL
from psfmap.operators import from_psf_grid
from psfmap.psf import gaussian
from psfmap.simulate import samples

ITERATIONS = 20


def test_image(side: int, seed: int = 0) -> np.ndarray:
    """The bundled neuron tiled to ``side``², blurred by a 2 × 2 Gaussian grid, 1000 photons."""
    sharp, _ = samples.bundled_image()
    sharp = np.asarray(sharp, dtype=np.float32)
    repeats = -(-side // min(sharp.shape))
    sharp = np.tile(sharp, (repeats, repeats))[:side, :side]
    psfs = torch.stack([torch.stack([gaussian(33, w) for w in row])
                        for row in ((1.0, 1.5), (2.0, 2.5))])
    blurred = from_psf_grid(psfs, (side, side)).forward(torch.from_numpy(sharp / sharp.max()))
    rng = np.random.default_rng(seed)
    return rng.poisson(1000 * blurred.clamp_min(0).numpy() + 10).astype(np.float32)


def measure(side: int, model: str) -> dict:
    """One size, in this process (run in a child so that the peak memory is this size's)."""
    from skimage.restoration import richardson_lucy as skimage_rl

    image = test_image(side)
    start = time.perf_counter()
    psf_map = psfmap.estimate(image, model)
    map_seconds = time.perf_counter() - start
    start = time.perf_counter()
    restored = psfmap.deblur(image, model, psf_map=psf_map, iterations=ITERATIONS)
    deblur_seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    assert np.isfinite(restored).all()
    median_psf = psf_map.family(torch.as_tensor(np.median(
        psf_map.params.reshape(-1, psf_map.family.n_params), axis=0))).numpy()
    start = time.perf_counter()
    skimage_rl(image / image.max(), median_psf, num_iter=ITERATIONS, clip=False)
    reference_seconds = time.perf_counter() - start
    return {"side": side, "cells": list(psf_map.grid), "map_s": map_seconds,
            "deblur_s": deblur_seconds, "peak_gb": peak / 2**30,
            "skimage_s": reference_seconds, "ratio": deblur_seconds / reference_seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,2048,4096")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args.child, args.model)))
        return 0
    print(f"{platform.machine()} {platform.system()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), model {args.model}, RL-TV {ITERATIONS} iterations")
    print(f"{'side':>6} {'cells':>9} {'map s':>7} {'deblur s':>9} {'peak GB':>8} "
          f"{'skimage s':>10} {'ratio':>6}")
    for side in (int(s) for s in args.sizes.split(",")):
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(side), "--model", args.model,
             "--threads", str(args.threads)], capture_output=True, text=True)
        if child.returncode != 0:  # e.g. out of memory: say so and go on with the next size
            reason = (child.stderr.strip().splitlines() or [f"exit {child.returncode}"])[-1]
            print(f"{side:>6} failed: {reason[:160]}", flush=True)
            continue
        row = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{row['side']:>6} {'x'.join(map(str, row['cells'])):>9} {row['map_s']:>7.2f} "
              f"{row['deblur_s']:>9.1f} {row['peak_gb']:>8.2f} {row['skimage_s']:>10.1f} "
              f"{row['ratio']:>6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
