"""Engine choice by cost: each engine against the automatic choice, per image size and grid.

For PSF grids of g × g cells (33² Gaussian PSFs whose width and angle vary over the field) on
N × N images, times one forward + adjoint (float32, best CPU time of ``--repeats`` calls
after a warm-up) with the tiled engine, the Fourier-sum engine, and the engine the operator
picks itself
(``engine=None``, :func:`psfmap.operators.cost.choose_engine`); prints ``auto / best``
(target ≤ 1.2 on every case). An engine predicted to be more than ``--skip`` times slower than
the other is not run (its predicted time is shown in brackets); the automatic choice is then
the other one, whose ratio is 1 by construction of the measurement. The last columns show the
operator compressed to 99.9 % energy (rank, relative error of the PSF field, time of one
forward + adjoint, and of the compression itself) for the caller who accepts that accuracy.

Run (same process, same machine for every number):

    .venv/bin/python benchmarks/bench_engine_choice.py [--sizes 256 512 1024 2048 4096]
        [--grids 2 4 8 16 32 64] [--repeats 3] [--fit]

``--fit`` prints least-squares constants α, β, γ of the cost model from the measured times.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from psfmap.operators import cost, from_psf_grid  # noqa: E402
from psfmap.psf import gaussian  # noqa: E402

KERNEL = 33


def grid_psfs(cells: int) -> torch.Tensor:
    """``(g, g, 33, 33)`` Gaussians, width 0.8..2.5 px down the rows, angle across columns."""
    widths = np.linspace(0.8, 2.5, cells)
    angles = np.linspace(0.0, 1.5, cells)
    return torch.stack([
        torch.stack([gaussian(KERNEL, (float(w), float(1.3 * w)), angle=float(a))
                     for a in angles])
        for w in widths
    ])


def time_engine(operator, x, repeats: int) -> float:
    """Best CPU time of one forward + adjoint, over at least ``repeats`` calls and 1 s: on a
    machine shared with other work, the CPU time a call consumes is far steadier than its wall
    time."""
    def run():
        operator.adjoint(operator.forward(x))

    run()  # warm-up: spectra, plans, FFT plans
    times, spent = [], 0.0
    while len(times) < repeats or (spent < 1.0 and len(times) < 15):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
        spent += times[-1]
    return min(times)


def features(operator) -> tuple[float, float, float]:
    """The terms of the cost model, (FFT work, samples, tiles), of each engine divided out."""
    saved = cost.ALPHA, cost.BETA, cost.GAMMA
    rows = []
    for alpha, beta, gamma in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
        cost.ALPHA, cost.BETA, cost.GAMMA = alpha, beta, gamma
        rows.append(cost.predicted_seconds(operator))
    cost.ALPHA, cost.BETA, cost.GAMMA = saved
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--grids", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", type=float, default=8.0)
    parser.add_argument("--no-compress", action="store_true")
    parser.add_argument("--fit", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine, two "
                             "threads' CPU time includes spin-waits at every parallel region)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# {platform.processor() or platform.machine()}, nproc {os.cpu_count()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
          f"kernels {KERNEL}², forward + adjoint")
    print(f"{'size':>5} {'grid':>5} {'tiled s':>9} {'fourier s':>10} {'auto':>8} {'auto/best':>9}"
          f" | {'rank':>4} {'error':>7} {'compr. s':>8} {'build s':>7}")
    samples, worst = [], 1.0
    for size in args.sizes:
        x = torch.rand(size, size)
        for cells in args.grids:
            if cells > size // 4:
                continue
            operator = from_psf_grid(grid_psfs(cells), (size, size))
            auto = operator.engine
            predicted = cost.predicted_seconds(operator)
            times = {}
            for name in cost.ENGINES:
                other = predicted["fourier" if name == "tiled" else "tiled"]
                if predicted[name] > args.skip * other:
                    times[name] = None
                    continue
                times[name] = time_engine(operator.with_engine(name), x, args.repeats)
            measured = {k: v for k, v in times.items() if v is not None}
            best = min(measured.values())
            ratio = measured[auto] / best if auto in measured else float("nan")
            worst = max(worst, ratio) if ratio == ratio else worst
            if args.fit:
                terms = features(operator)
                for name, value in measured.items():
                    samples.append(([t[name] for t in terms], value))
            cells_text = []
            for name in ("tiled", "fourier"):
                value = times[name]
                cells_text.append(f"{value:.3f}" if value is not None
                                  else f"[{predicted[name]:.1f}]")
            line = (f"{size:>5} {cells:>2}x{cells:<2} {cells_text[0]:>9} {cells_text[1]:>10} "
                    f"{auto:>8} {ratio:9.2f}")
            if not args.no_compress:
                start = time.perf_counter()
                compressed = operator.compress(energy=0.999)
                build = time.perf_counter() - start
                fast = time_engine(compressed, x, args.repeats)
                line += (f" | {compressed.n_kernels:>4} {compressed.compression_error:7.4f} "
                         f"{fast:8.3f} {build:7.3f}")
            print(line, flush=True)
    print(f"# worst auto/best: {worst:.2f} (target <= 1.2)")
    if args.fit and samples:
        design = np.array([s[0] for s in samples])
        measured = np.array([s[1] for s in samples])
        # relative least squares: every case weighs the same, small or large
        solution, *_ = np.linalg.lstsq(design / measured[:, None], np.ones(len(measured)),
                                       rcond=None)
        print(f"# fit: ALPHA = {solution[0]:.3e}, BETA = {solution[1]:.3e}, "
              f"GAMMA = {solution[2]:.3e}")


if __name__ == "__main__":
    main()
