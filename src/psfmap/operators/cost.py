"""Which engine evaluates a product convolution fastest: a cost model measured on a 2-core CPU.

Both engines compute the same ``H`` (to rounding); they differ in work:

* Fourier sum: ``2 (I + 1)`` real FFTs of the padded field ``N = N₁ N₂`` per forward + adjoint,
  plus ``I`` weight products and spectrum accumulations over the field:

      t_fourier = α · 2 (I + 1) · N log₂ N  +  β · I · N

* tiled: two FFTs per term of its tile ``n_i`` (the weight's support grown by the kernel) per
  call, plus the gathering/scattering of each tile (Python-level work per tile and per batch):

      t_tiled = α · Σ_i 2 · 2 n_i log₂ n_i  +  β · Σ_i n_i  +  γ · (number of tiles)

``α`` (seconds per FFT "flop"), ``β`` (per sample touched) and ``γ`` (per tile) were fitted
(relative least squares) on ``benchmarks/bench_engine_choice.py --fit``: image sizes 256² to
4096², PSF grids 2×2 to 64×64, 33² kernels, float32, single-thread CPU time on the 2-core
machine, torch 2.13 (table in ``docs/_incoming/operators-engine.md``). The fit gave a slightly
negative ``β``: the memory traffic is absorbed in the FFT term, so ``β = 0``. Only the ratio
``γ / α`` matters for the choice; the two costs differ by large factors except near the
crossover, where the engines are within a few percent of each other (worst measured
auto/best 1.04).
"""

from __future__ import annotations

import math
from typing import Any

from psfmap.operators.tiled import tile_fft_shape

ENGINES = ("tiled", "fourier")

# fitted constants (see the module docstring); seconds
ALPHA = 2.4e-10
BETA = 0.0
GAMMA = 3.0e-5
# seconds per term to compress a grid operator, measured (bench_engine_choice "build s"):
# 0.01-0.02 s for 16 x 16 cells, 0.4 s for 31 x 31, 0.5-0.9 s for 64 x 64
_COMPRESSION_SECONDS_PER_TERM = 2.5e-4


def _fft_work(n: int) -> float:
    return n * math.log2(max(n, 2))


def predicted_seconds(operator: Any) -> dict[str, float]:
    """Predicted seconds of one forward + adjoint of ``operator`` with each engine.

    Parameters
    ----------
    operator : ProductConvolution
        Uses its ``image_shape``, ``kernel_shape``, ``n_kernels`` and weight ``supports``.
    """
    n1, n2 = operator.fft_shape
    field = n1 * n2
    n_terms = operator.n_kernels
    fourier = ALPHA * 2 * (n_terms + 1) * _fft_work(field) + BETA * n_terms * field
    tiles = 0.0
    samples = 0
    count = 0
    for box in operator.supports:
        if box[1] <= box[0]:
            continue  # a weight that is zero everywhere costs nothing
        t1, t2 = tile_fft_shape(box, operator.kernel_shape)
        tiles += 4 * _fft_work(t1 * t2)
        samples += t1 * t2
        count += 1
    tiled = ALPHA * tiles + BETA * samples + GAMMA * count
    return {"fourier": fourier, "tiled": tiled}


def choose_engine(operator: Any) -> str:
    """The engine (``"tiled"`` or ``"fourier"``) with the smaller :func:`predicted_seconds`."""
    cost = predicted_seconds(operator)
    return "tiled" if cost["tiled"] < cost["fourier"] else "fourier"


def fourier_seconds(fft_shape: tuple[int, int], n_terms: int) -> float:
    """Predicted seconds of one forward + adjoint by the Fourier sum with ``n_terms`` kernels."""
    field = fft_shape[0] * fft_shape[1]
    return ALPHA * 2 * (n_terms + 1) * _fft_work(field) + BETA * n_terms * field


def cheapest(operator: Any, energy: float = 0.999, calls: int = 1) -> Any:
    """``operator`` or its compression to ``energy``, whichever is predicted to be faster.

    The compression (:func:`psfmap.operators.compress`) approximates the operator: its PSF
    field has a relative error ``compression_error ≤ √(1 − energy)`` (0.0316 at 0.999). Use
    this only where that accuracy is acceptable (iterative restoration of a field whose PSFs
    vary smoothly, e.g. ``deblur``), never where exactness is expected; the operator's own
    engine choice never approximates.

    Parameters
    ----------
    operator : ProductConvolution
        The exact operator (any engine).
    energy : float
        Fraction of the PSF field's energy the compression keeps, in (0, 1].
    calls : int
        Forward + adjoint pairs that will be applied (e.g. the iterations of a solver): the
        compression is computed only when a rank-1 Fourier sum would save at least its
        typical cost (measured per term) over these calls.

    Returns
    -------
    ProductConvolution
        The compressed operator (with ``compression_error`` set) when its predicted cost per
        call is lower than the exact operator's with its own engine; else ``operator``.
    """
    if not 0 < float(energy) <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    if int(calls) < 1:
        raise ValueError(f"calls must be a positive number of operator applications, "
                         f"got {calls!r}")
    exact = predicted_seconds(operator)[operator.engine]
    floor = fourier_seconds(operator.fft_shape, 1)
    build = _COMPRESSION_SECONDS_PER_TERM * operator.n_kernels
    if operator.n_kernels <= 2 or int(calls) * (exact - floor) <= build:
        return operator
    compressed = operator.compress(energy=energy)
    if fourier_seconds(compressed.fft_shape, compressed.n_kernels) < exact:
        return compressed.with_engine("fourier")
    return operator
