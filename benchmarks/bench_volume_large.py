"""Large volumes: invariant 3D RL of 1024 x 1024 x 35 (time) and depth-variant 3D RL of
1024 x 1024 x 64 with 4 kernels (peak memory).

    .venv/bin/python benchmarks/bench_volume_large.py invariant   # 35 x 1024 x 1024, 50 it.
    .venv/bin/python benchmarks/bench_volume_large.py memory      # 64 x 1024 x 1024, 4 kernels
    .venv/bin/python benchmarks/bench_volume_large.py memory --compressed  # 8 PSFs -> rank 4

Each case runs in its own process (run one per command) so that the peak resident set size
(``resource.getrusage``, ``ru_maxrss``) is that case's alone; it includes the interpreter and
torch (the ``baseline_rss_gb`` printed is the peak before the volume is made). The timing of
the invariant case is compared with one forward + inverse real 3D FFT of the padded volume
measured in the same process (``fft_pair_s``): RL needs two such pairs per iteration.
Results print as JSON lines. Large volumes reuse freed FFT buffers while RL runs when the memory
allows (``psfmap._memory.worth_reusing``); ``PSFMAP_REUSE_MEMORY=0`` before the command keeps
the lower peak instead (``reuse_memory`` in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import numpy as np
import torch

from psfmap._memory import reuse_freed_memory
from psfmap.operators import Convolution, from_psf_grid
from psfmap.operators.fft3d import irfft3, rfft3, same_fft_shape_3d
from psfmap.psf.through_focus import depth_series, through_focus
from psfmap.restore import richardson_lucy

REUSE = os.environ.get("PSFMAP_REUSE_MEMORY", "auto")


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def report(**values) -> None:
    values["machine"] = (f"{platform.processor() or platform.machine()}, "
                         f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(json.dumps(values), flush=True)


def _object(shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """Sparse bright beads on a dim background, float32 (content does not change the cost)."""
    rng = np.random.default_rng(seed)
    volume = torch.full(shape, 2.0)
    index = tuple(torch.from_numpy(rng.integers(0, n, 4000)) for n in shape)
    volume[index] = torch.from_numpy(rng.uniform(50, 500, 4000).astype(np.float32))
    return volume


def invariant(iterations: int = 50) -> None:
    """Invariant 3D RL (non-circulant) of a 35 x 1024 x 1024 stack, widefield PSF 9 x 21 x 21."""
    shape = (35, 1024, 1024)
    psf = through_focus(21, 9, na=1.2, wavelength=0.52, pixel_size=0.1, z_step=0.4,
                        immersion_index=1.33)
    baseline = _peak_rss_gb()
    blurred = Convolution(psf).forward(_object(shape)).clamp(min=0)
    op = Convolution(psf)  # a fresh operator: the simulation's cached spectrum is dropped
    extended = tuple(n + 2 * (k // 2) for n, k in zip(shape, psf.shape))
    fft_shape = same_fft_shape_3d(extended, tuple(psf.shape))
    probe = torch.rand(extended)
    pairs = []
    with reuse_freed_memory():  # steady state, as inside the solver: the best of three
        for _ in range(3):
            start = time.perf_counter()
            irfft3(rfft3(probe, fft_shape), fft_shape)
            pairs.append(time.perf_counter() - start)
    fft_pair = min(pairs)
    del probe
    load = os.getloadavg()[0]
    start = time.perf_counter()
    restored = richardson_lucy(blurred, op, iterations=iterations)
    seconds = time.perf_counter() - start
    assert bool(torch.isfinite(restored).all())
    report(test="invariant_1024x1024x35", shape=list(shape), psf=list(psf.shape),
           iterations=iterations, fft_shape=list(fft_shape), seconds=round(seconds, 1),
           seconds_per_iteration=round(seconds / iterations, 3), fft_pair_s=round(fft_pair, 3),
           ratio_to_4_fft_pairs=round(seconds / iterations / (2 * fft_pair), 2),
           target_s=60, reuse_memory=REUSE, baseline_rss_gb=round(baseline, 2),
           peak_rss_gb=round(_peak_rss_gb(), 2),
           load_1min=[round(load, 2), round(os.getloadavg()[0], 2)])


def memory(iterations: int = 5, compressed: bool = False) -> None:
    """Depth-variant 3D RL of 64 x 1024 x 1024 with 4 kernels: a depth grid of 4 PSFs
    (21 x 17 x 17, oil into water, 0-20 µm), or 8 PSFs compressed to rank 4."""
    shape = (64, 1024, 1024)
    depths = np.linspace(0, 20, 8 if compressed else 4)
    grid = depth_series(17, 21, depths, na=1.2, wavelength=0.52, pixel_size=0.1, z_step=0.25,
                        immersion_index=1.515, sample_index=1.33)
    baseline = _peak_rss_gb()
    # the data are simulated with an operator of their own, dropped before the restoration
    # (its cached kernel spectra are not the solver's memory)
    simulator = from_psf_grid(torch.as_tensor(grid, dtype=torch.float32), shape)
    blurred = simulator.forward(_object(shape)).clamp(min=0)
    del simulator
    op = from_psf_grid(torch.as_tensor(grid, dtype=torch.float32), shape)
    if compressed:
        op = op.compress(rank=4)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    restored = richardson_lucy(blurred, op, iterations=iterations)
    seconds = time.perf_counter() - start
    assert bool(torch.isfinite(restored).all())
    report(test="depth_variant_1024x1024x64_memory", shape=list(shape),
           kernels=op.n_kernels, compressed_from=8 if compressed else None,
           engine=op.engine, iterations=iterations, seconds=round(seconds, 1),
           baseline_rss_gb=round(baseline, 2), peak_rss_gb=round(_peak_rss_gb(), 2),
           target_gb=4, reuse_memory=REUSE,
           load_1min=[round(load, 2), round(os.getloadavg()[0], 2)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("invariant", "memory"))
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--compressed", action="store_true",
                        help="memory: 8 depth PSFs compressed to 4 kernels")
    parser.add_argument("--threads", type=int, default=None)
    arguments = parser.parse_args()
    if arguments.threads is not None:
        torch.set_num_threads(arguments.threads)
    with torch.no_grad():
        if arguments.which == "invariant":
            invariant(arguments.iterations or 50)
        else:
            memory(arguments.iterations or 5, compressed=arguments.compressed)
