"""Space-variant Richardson–Lucy against scikit-image's space-invariant one (issue 3 §5).

1024² image, 20 iterations, a 4×4 grid of 65² PSFs (``from_psf_grid``):

* ours, compressed to >= 99.9 % energy (target <= 1.0× scikit-image's time),
* ours, uncompressed (16 kernels; target <= 3×),

against ``skimage.restoration.richardson_lucy`` with the centre PSF and the same iteration count,
in the same process, float32 throughout. Then 2048² and 4096² (rank 8): time and peak memory,
each case in its own subprocess so that its peak RSS is its own (target: 4096², rank 8, < 2 GB).

Run: ``.venv/bin/python benchmarks/bench_deconvolve.py [--sizes 1024 2048 4096] [--threads 1]``
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

ITERATIONS = 20
GRID = 4
KERNEL = 65


def test_image(size: int) -> np.ndarray:
    """A real photograph (scikit-image's camera), tiled/cropped to size², float32 in [0, 1]."""
    from skimage import data

    camera = data.camera().astype(np.float32) / 255.0
    reps = -(-size // camera.shape[0])
    return np.ascontiguousarray(np.tile(camera, (reps, reps))[:size, :size])


def psf_grid() -> torch.Tensor:
    """4×4 Gaussian PSFs, 65² px, width growing across the field (σ 1.5 → 6 px)."""
    from psfmap.psf import gaussian

    widths = np.linspace(1.5, 6.0, GRID * GRID)
    psfs = torch.stack([gaussian(KERNEL, float(w)) for w in widths])
    return psfs.reshape(GRID, GRID, KERNEL, KERNEL)


def operator_for(size: int, rank: int | None = None, energy: float | None = None):
    from psfmap.operators import from_psf_grid

    operator = from_psf_grid(psf_grid(), (size, size))
    if rank is not None or energy is not None:
        operator = operator.compress(rank=rank, energy=energy)
    return operator


def time_ours(image: np.ndarray, operator) -> float:
    from psfmap.restore import richardson_lucy

    start = time.perf_counter()
    richardson_lucy(image, operator, iterations=ITERATIONS)
    return time.perf_counter() - start


def time_skimage(image: np.ndarray, psf: np.ndarray) -> float:
    from skimage.restoration import richardson_lucy as skimage_rl

    start = time.perf_counter()
    skimage_rl(image, psf, num_iter=ITERATIONS, clip=False)
    return time.perf_counter() - start


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def run_case(size: int, which: str, rank: int | None, threads: int) -> dict:
    """One measurement in this (fresh) process: time and peak RSS."""
    torch.set_num_threads(threads)
    image = test_image(size)
    baseline_mb = peak_rss_mb()
    if which == "skimage":
        psf = psf_grid()[GRID // 2, GRID // 2].numpy()
        seconds = time_skimage(image, psf)
        terms = 1
    else:
        operator = operator_for(size, rank=rank)
        terms = operator.n_kernels
        seconds = time_ours(image, operator)
    return {
        "size": size,
        "which": which,
        "terms": terms,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": baseline_mb,
    }


def in_subprocess(size: int, which: str, rank: int | None, threads: int) -> dict:
    command = [sys.executable, __file__, "--case", str(size), which, str(rank or 0)]
    command += ["--threads", str(threads)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[2048, 4096])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (scipy: 1)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--case", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:
        size, which, rank = int(args.case[0]), args.case[1], int(args.case[2]) or None
        print(json.dumps(run_case(size, which, rank, args.threads)))
        return

    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"torch threads, torch {torch.__version__}, python {platform.python_version()}"
    )
    size = 1024
    image = test_image(size)
    full = operator_for(size)
    compressed = full.compress(energy=0.999)
    centre_psf = psf_grid()[GRID // 2, GRID // 2].numpy()
    # warm-up (FFT plans, spectra caches are per operator and rebuilt inside each call)
    time_ours(image[:256, :256], operator_for(256).compress(rank=2))
    time_skimage(image[:256, :256], centre_psf)

    def best(fn, *fn_args):
        return min(fn(*fn_args) for _ in range(args.repeats))

    t_skimage = best(time_skimage, image, centre_psf)
    t_compressed = best(time_ours, image, compressed)
    t_full = best(time_ours, image, full)
    print(f"{size}², {ITERATIONS} iterations, {GRID}x{GRID} grid of {KERNEL}² PSFs")
    print(f"  scikit-image richardson_lucy (space-invariant): {t_skimage:7.2f} s")
    print(
        f"  psfmap compressed, rank {compressed.n_kernels} "
        f"(error {compressed.compression_error:.2e}): {t_compressed:7.2f} s  "
        f"ratio {t_compressed / t_skimage:5.2f}x  (target <= 1.0x)"
    )
    print(
        f"  psfmap uncompressed, {full.n_kernels} kernels ({full.strategy}): "
        f"{t_full:7.2f} s  ratio {t_full / t_skimage:5.2f}x  (target <= 3x)"
    )

    for size in args.sizes:
        reference = in_subprocess(size, "skimage", None, args.threads)
        ours = in_subprocess(size, "ours", 8, args.threads)
        print(
            f"{size}²: psfmap rank 8 {ours['seconds']:7.2f} s, peak RSS "
            f"{ours['peak_rss_mb']:7.0f} MB (image loaded: {ours['baseline_rss_mb']:.0f} MB) | "
            f"scikit-image {reference['seconds']:7.2f} s, peak RSS "
            f"{reference['peak_rss_mb']:7.0f} MB | "
            f"ratio {ours['seconds'] / reference['seconds']:5.2f}x"
        )


if __name__ == "__main__":
    main()
