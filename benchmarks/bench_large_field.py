"""Blind deblurring of large fields: time and peak memory against the field size and tiling.

For each side N (default 1024, 2048, 4096) a child process deblurs an N × N image — the
bundled neuron sample tiled, blurred by a 2 × 2 grid of Gaussians (σ 1–2.5 px) with Poisson
noise — with ``psfmap.deblur(image, model, tile=None)``, i.e. in one piece (default windows
every 32 px: 31², 63², 127² cells; RL-TV, 20 iterations), and reports:

* the time of the PSF map and of the restoration;
* the child's peak resident memory while it estimates the map and deblurs (everything
  resident then: Python, torch, the image, the map, the solver; the peak of making the test
  image is reset first, through ``/proc/self/clear_refs``, where Linux allows it);
* the reference in the same process: scikit-image's space-invariant ``richardson_lucy``
  (20 iterations, the map's median PSF everywhere) on the same image, and the ratio.

Then, at one size (``--tile-size``, default 2048), the same call restored tile by tile
(``deblur(..., tile=T, overlap=O)``) for a few tile sizes and overlaps: time, peak memory and
the difference from the one-piece result (relative L2 over the image, and the largest
absolute difference in units of the image maximum).

Run: .venv/bin/python benchmarks/bench_large_field.py [--sizes 1024,2048] [--model gaussian1]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import psfmap
from psfmap.blind.verbs import DEFAULT_MODEL, DEFAULT_OVERLAP
from psfmap.operators import from_psf_grid
from psfmap.psf import gaussian
from psfmap.simulate import samples

ITERATIONS = 20
TILINGS = f"1024:{DEFAULT_OVERLAP},512:32,512:{DEFAULT_OVERLAP},512:128"


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


def _reset_peak_memory() -> None:
    """Reset the kernel's resident-memory high-water mark (Linux ≥ 4.0), if allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_memory() -> int:
    """Peak resident bytes of this process (since the last reset, where there was one)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def measure(side: int, model: str, tile: int | None, overlap: int, save: str | None) -> dict:
    """One run, in this process (a child, so that the peak memory is this run's)."""
    from skimage.restoration import richardson_lucy as skimage_rl

    image = test_image(side)
    gc.collect()
    _reset_peak_memory()
    start = time.perf_counter()
    psf_map = psfmap.estimate(image, model)
    map_seconds = time.perf_counter() - start
    start = time.perf_counter()
    restored = psfmap.deblur(image, model, psf_map=psf_map, iterations=ITERATIONS, tile=tile,
                             overlap=overlap)
    deblur_seconds = time.perf_counter() - start
    peak = _peak_memory()
    assert np.isfinite(restored).all()
    if save:
        np.save(save, restored)
    row = {"side": side, "cells": list(psf_map.grid), "map_s": map_seconds,
           "deblur_s": deblur_seconds, "peak_gb": peak / 2**30}
    if tile is None:
        median_psf = psf_map.family(torch.as_tensor(np.median(
            psf_map.params.reshape(-1, psf_map.family.n_params), axis=0))).numpy()
        start = time.perf_counter()
        skimage_rl(image / image.max(), median_psf, num_iter=ITERATIONS, clip=False)
        row["skimage_s"] = time.perf_counter() - start
        row["ratio"] = deblur_seconds / row["skimage_s"]
    return row


def run_child(args, side: int, tile: int | None = None, overlap: int = 0,
              save: str | None = None) -> dict | None:
    command = [sys.executable, __file__, "--child", str(side), "--model", args.model,
               "--threads", str(args.threads), "--overlap", str(overlap)]
    if tile is not None:
        command += ["--tile", str(tile)]
    if save is not None:
        command += ["--save", save]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode != 0:  # e.g. out of memory: say so and go on
        reason = (child.stderr.strip().splitlines() or [f"exit {child.returncode}"])[-1]
        print(f"{side:>6} tile {tile} failed: {reason[:160]}", flush=True)
        return None
    return json.loads(child.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,2048,4096")
    parser.add_argument("--tile-size", type=int, default=2048,
                        help="image side of the tiling comparison (0: skip it)")
    parser.add_argument("--tilings", default=TILINGS,
                        help=f"TILE:OVERLAP pairs of the comparison (default {TILINGS})")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--overlap", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args.child, args.model, args.tile, args.overlap, args.save)))
        return 0
    print(f"{platform.machine()} {platform.system()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), model {args.model}, RL-TV {ITERATIONS} iterations")
    print(f"{'side':>6} {'cells':>9} {'map s':>7} {'deblur s':>9} {'peak GB':>8} "
          f"{'skimage s':>10} {'ratio':>6}")
    for side in (int(s) for s in args.sizes.split(",") if s):
        row = run_child(args, side)
        if row:
            print(f"{row['side']:>6} {'x'.join(map(str, row['cells'])):>9} {row['map_s']:>7.2f} "
                  f"{row['deblur_s']:>9.1f} {row['peak_gb']:>8.2f} {row['skimage_s']:>10.1f} "
                  f"{row['ratio']:>6.2f}", flush=True)
    if not args.tile_size:
        return 0
    side = args.tile_size
    print(f"\ntiles on {side}²: difference from the one-piece restoration")
    print(f"{'tile':>6} {'overlap':>8} {'deblur s':>9} {'peak GB':>8} {'rel. L2':>9} "
          f"{'max |diff|':>11}")
    with tempfile.TemporaryDirectory() as folder:
        whole_path = str(Path(folder) / "whole.npy")
        whole_row = run_child(args, side, save=whole_path)
        if whole_row is None:
            return 1
        whole = np.load(whole_path).astype(np.float64)
        print(f"{'none':>6} {'':>8} {whole_row['deblur_s']:>9.1f} {whole_row['peak_gb']:>8.2f}")
        for tile, overlap in (map(int, pair.split(":")) for pair in args.tilings.split(",")):
            path = str(Path(folder) / f"tile{tile}_{overlap}.npy")
            row = run_child(args, side, tile, overlap, save=path)
            if row is None:
                continue
            tiled = np.load(path).astype(np.float64)
            relative = np.linalg.norm(tiled - whole) / np.linalg.norm(whole)
            largest = np.abs(tiled - whole).max() / whole.max()
            print(f"{tile:>6} {overlap:>8} {row['deblur_s']:>9.1f} {row['peak_gb']:>8.2f} "
                  f"{relative:>9.2e} {largest:>11.2e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
