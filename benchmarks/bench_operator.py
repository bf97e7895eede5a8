"""Benchmark: forward + adjoint of ProductConvolution against its FFT floor and a plain loop.

For I = 4, 8, 16 kernels of 65 × 65 on a 2048 × 2048 image (float32, batch 1):

* **operator** — ``op.forward(x)`` then ``op.adjoint(y)`` (kernel spectra cached by a warm-up
  call), for two kinds of weights: ``grid`` (``from_psf_grid`` on a 2×2 / 2×4 / 4×4 grid:
  compactly supported bilinear weights) and ``dense`` (globally supported smooth random
  weights, as from a calibrated family);
* **floor** — the FFTs that the Fourier-sum evaluation cannot avoid: I + 1 ``rfft2`` and
  I + 1 ``irfft2`` of the padded size ``op.fft_shape`` (forward: I forward + 1 inverse;
  adjoint: 1 forward + I inverse), timed in the same process;
* **loop** — a plain reference: ``Σ_i scipy.signal.fftconvolve(w_i x, k_i, "same")`` and
  ``Σ_i w_i fftconvolve(y, flip(k_i), "same")``.

Every case (weights, I) runs in its own process; times are the best of ``--repeats`` runs.
Peak memory is the peak resident set of a fresh subprocess during one forward + adjoint
(spectra cache included) minus its resident set before the call, i.e. over the inputs it
already holds (Linux: ``VmHWM`` after resetting it through ``/proc/self/clear_refs``;
elsewhere the growth of ``ru_maxrss``, a lower bound).

    python benchmarks/bench_operator.py                 # 2048², I = 4, 8, 16
    python benchmarks/bench_operator.py --size 512      # quick run
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys

import numpy as np
import torch
from _timing import best_time  # noqa: E402 - benchmarks/ is on sys.path when run
from scipy.signal import fftconvolve

from psfmap.operators import ProductConvolution, from_psf_grid
from psfmap.psf import gaussian

GRIDS = {4: (2, 2), 8: (2, 4), 16: (4, 4), 2: (1, 2), 32: (4, 8)}


def make_kernels(n_kernels: int, kernel_size: int) -> torch.Tensor:
    widths = np.linspace(1.5, 6.0, n_kernels)
    return torch.stack([gaussian(kernel_size, (w, 0.7 * w), angle=0.3 * k)
                        for k, w in enumerate(widths)])


def make_operator(kind: str, n_kernels: int, size: int, kernel_size: int) -> ProductConvolution:
    kernels = make_kernels(n_kernels, kernel_size)
    if kind == "grid":
        gy, gx = GRIDS[n_kernels]
        return from_psf_grid(kernels.reshape(gy, gx, kernel_size, kernel_size), (size, size))
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(n_kernels, 1, 6, 6, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic",
                                             align_corners=True)[:, 0]
    weights = torch.softmax(4 * smooth, dim=0)  # positive, global support, sum to 1
    return ProductConvolution(kernels, weights)


def operator_run(operator: ProductConvolution, x: torch.Tensor):
    def run():
        with torch.no_grad():
            operator.adjoint(operator.forward(x))
    return run


def floor_run(operator: ProductConvolution, x: torch.Tensor):
    shape = operator.fft_shape
    n = operator.n_kernels
    padded = torch.zeros(shape, dtype=x.dtype)
    padded[: x.shape[-2], : x.shape[-1]] = x
    spectrum = torch.fft.rfft2(padded)

    def run():
        for _ in range(n + 1):
            torch.fft.rfft2(padded)
        for _ in range(n + 1):
            torch.fft.irfft2(spectrum, s=shape)
    return run


def loop_run(operator: ProductConvolution, x: torch.Tensor):
    kernels = operator.kernels.numpy()
    weights = operator.weights.numpy()
    image = x.numpy()

    def run():
        forward = sum(fftconvolve(w * image, k, mode="same") for k, w in zip(kernels, weights))
        sum(w * fftconvolve(forward, k[::-1, ::-1], mode="same")
            for k, w in zip(kernels, weights))
    return run


def peak_memory_mb(method: str, kind: str, n_kernels: int, size: int, kernel_size: int) -> float:
    """Resident-set growth (MB) of one forward + adjoint, measured in a fresh subprocess."""
    command = [sys.executable, __file__, "--measure-memory",
               json.dumps([method, kind, n_kernels, size, kernel_size])]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def measure_memory(spec: str) -> None:
    method, kind, n_kernels, size, kernel_size = json.loads(spec)
    operator = make_operator(kind, n_kernels, size, kernel_size)
    x = torch.rand(size, size, generator=torch.Generator().manual_seed(1))
    run = {"operator": operator_run, "floor": floor_run, "loop": loop_run}[method](operator, x)
    if method == "loop":
        operator.weights  # noqa: B018 - materialise the dense weights before the baseline
    before = _resident_kib()
    peak_reset = _reset_peak()
    start_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()
    if peak_reset:
        after = _status_kib("VmHWM")
    else:  # ru_maxrss cannot be reset: growth of the lifetime peak (a lower bound)
        before = start_peak
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(max(after - before, 0) / 1024.0)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _resident_kib() -> int:
    try:
        return _status_kib("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return _status_kib("VmHWM") <= _status_kib("VmRSS") + 1024
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="image side (default 2048)")
    parser.add_argument("--kernel-size", type=int, default=65)
    parser.add_argument("--kernels", default="4,8,16", help="numbers of kernels I")
    parser.add_argument("--kinds", default="grid,dense", help="weights: grid, dense")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-loop", action="store_true", help="skip the scipy loop reference")
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory subprocesses")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice)")
    parser.add_argument("--measure-memory", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.measure_memory:
        measure_memory(args.measure_memory)
        return
    if args.case:
        run_case(args)
        return

    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"image {args.size}x{args.size}, kernels {args.kernel_size}x{args.kernel_size}, "
          f"float32, forward + adjoint, best of {args.repeats}")
    header = (f"{'weights':>7} {'I':>3} {'engine':>11} {'op s':>7} {'floor s':>8} "
              f"{'loop s':>7} {'op/floor':>8} {'loop/op':>7} {'op MB':>7} {'floor MB':>8} "
              f"{'loop MB':>7}")
    print(header, flush=True)
    for kind in args.kinds.split(","):
        for n_kernels in (int(v) for v in args.kernels.split(",")):
            # every case in a fresh process: the allocator state left by one case (the scipy
            # loop's large temporaries) otherwise changes the next case's timings
            command = [sys.executable, __file__, "--case", f"{kind},{n_kernels}",
                       "--size", str(args.size), "--kernel-size", str(args.kernel_size),
                       "--repeats", str(args.repeats)]
            command += ["--threads", str(args.threads)] if args.threads is not None else []
            command += ["--no-loop"] * args.no_loop + ["--no-memory"] * args.no_memory
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(result.stderr)
            print(result.stdout.rstrip().splitlines()[-1], flush=True)


def run_case(args) -> None:
    kind, n_kernels = args.case.split(",")
    n_kernels = int(n_kernels)
    x = torch.rand(args.size, args.size, generator=torch.Generator().manual_seed(1))
    operator = make_operator(kind, n_kernels, args.size, args.kernel_size)
    run = operator_run(operator, x)
    run()  # warm-up: builds and caches the kernel spectra
    op_time = best_time(run, args.repeats)
    floor_time = best_time(floor_run(operator, x), args.repeats)
    loop_time = (float("nan") if args.no_loop
                 else best_time(loop_run(operator, x), max(1, args.repeats - 1)))
    memory = ["-", "-", "-"]
    if not args.no_memory:
        methods = ("operator", "floor") + (() if args.no_loop else ("loop",))
        for k, method in enumerate(methods):
            megabytes = peak_memory_mb(method, kind, n_kernels, args.size, args.kernel_size)
            memory[k] = f"{megabytes:.0f}"
    print(f"{kind:>7} {n_kernels:>3} {operator.engine:>11} {op_time:7.3f} "
          f"{floor_time:8.3f} {loop_time:7.3f} {op_time / floor_time:8.2f} "
          f"{loop_time / op_time:7.2f} {memory[0]:>7} {memory[1]:>8} {memory[2]:>7}")

if __name__ == "__main__":
    main()
