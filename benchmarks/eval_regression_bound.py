"""How far could any estimator go on the Table III test? R² of a fit that *knows the sharp
patch and the noise model* (issue 23).

For each held-out test patch (the ``test`` split of ``eval_regression.table_iii``: same
generator, seed and noise ranges), the PSF parameters are fitted by maximum likelihood
(Gaussian approximation of Poisson + read noise, ``½ Σ (r² / v + log v)`` with the model's
own variance ``v``), knowing the sharp crop, the photon count, QE, background, offset and read
noise of that patch. The fit is a search over a grid of the family's range (every grid PSF is
tried on every patch) refined by a parabola through the best point's neighbours along each
axis. Its R² (eq. 15, wrapped residual for a periodic axis) on the truly valid patches
bounds what a blind network could reach on the same patches; the shipped network's R² on
those very patches is printed beside it.

Usage::

    python benchmarks/eval_regression_bound.py [--models gaussian1,zernike3] [--sources proc]
        [--samples 500] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_regression import _predict_all, _r2, held_out_generator  # noqa: E402

from psfmap.blind.estimator import PSFEstimator  # noqa: E402
from psfmap.training.data import expected_electrons  # noqa: E402

#: grid points per parameter (a periodic axis is sampled over one period, end excluded)
GRID = {"gaussian1": (351,), "gaussian2": (71, 71), "zernike1": (201,),
        "zernike3": (21, 16, 18)}


def test_patches(estimator, source: str, samples: int, seed: int = 2020):
    """``(sharp crops, params, batch)`` of ``table_iii``'s test set for ``source``."""
    data = held_out_generator(estimator, source, seed)
    sharp, names, explicit = data.sharp_crops(samples)
    params = data.sample_params(samples)
    batch = data.render(sharp, params, estimator.family(params.float()).float(), names,
                        explicit)
    return sharp, params, batch


def parameter_grid(family, periodic: set[int], shape: tuple[int, ...]) -> list[np.ndarray]:
    axes = []
    for index, (low, high, n) in enumerate(zip(family.low, family.high, shape, strict=True)):
        axes.append(np.linspace(low, high, n, endpoint=index not in periodic))
    return axes


def grid_fit(family, periodic: set[int], shape: tuple[int, ...], sharp: torch.Tensor,
             batch, chunk: int = 1024) -> np.ndarray:
    """Maximum-likelihood parameters of every patch (grid search + parabolic refinement)."""
    axes = parameter_grid(family, periodic, shape)
    points = np.array(list(itertools.product(*axes)))  # (G, N), C order = np.reshape order
    psfs = torch.cat([family(torch.from_numpy(points[s : s + chunk]))
                      for s in range(0, len(points), chunk)]).float()
    crop, k = sharp.shape[-1], psfs.shape[-1]
    # valid_convolve's blur of each patch by every grid PSF, the grid's spectra made once
    spectra = torch.fft.rfft2(psfs, s=(crop, crop))  # (G, crop, crop // 2 + 1)
    fitted = np.empty((len(sharp), len(shape)))
    for i in range(len(sharp)):
        blurred = torch.fft.irfft2(torch.fft.rfft2(sharp[i]) * spectra, s=(crop, crop))
        blurred = blurred[:, k - 1 :, k - 1 :]
        noise = {key: value[i] for key, value in batch.noise.items()}
        electrons = expected_electrons(blurred, noise)  # the generator's own noise model
        variance = electrons.clamp_min(0) + noise["read_noise"] ** 2 + 1e-3
        residual = batch.counts[i] - noise["offset"] - electrons
        loss = 0.5 * (residual**2 / variance + variance.log()).sum((-2, -1))
        fitted[i] = _refine(loss.double().numpy().reshape(shape), axes, periodic)
    return fitted


def _refine(loss: np.ndarray, axes: list[np.ndarray], periodic: set[int]) -> np.ndarray:
    """The grid minimum, moved along each axis to the vertex of the parabola through it and
    its two neighbours (kept within half a step)."""
    best = np.unravel_index(int(np.argmin(loss)), loss.shape)
    out = np.empty(len(axes))
    for d, axis in enumerate(axes):
        n, i = len(axis), best[d]
        step = axis[1] - axis[0] if n > 1 else 0.0
        out[d] = axis[i]
        if n < 3:
            continue
        if d in periodic:
            left, right = (i - 1) % n, (i + 1) % n
        elif 0 < i < n - 1:
            left, right = i - 1, i + 1
        else:
            continue  # at the range's edge the minimum is the edge
        here = loss[best]
        lower = loss[best[:d] + (left,) + best[d + 1 :]]
        upper = loss[best[:d] + (right,) + best[d + 1 :]]
        curvature = lower - 2 * here + upper
        if curvature > 0:
            out[d] += step * float(np.clip(0.5 * (lower - upper) / curvature, -0.5, 0.5))
    return out


def evaluate(name: str, source: str, samples: int) -> dict:
    estimator = PSFEstimator.pretrained(name)
    periodic = {angle for _, angle in estimator.network.periodic}
    sharp, params, batch = test_patches(estimator, source, samples)
    truly = batch.valid > 0.5
    started = time.perf_counter()
    fitted = torch.from_numpy(grid_fit(estimator.family, periodic, GRID[name], sharp, batch))
    seconds = time.perf_counter() - started
    predicted, _, _ = _predict_all(estimator, batch.patches)
    bound, bound_per = _r2(estimator, params, fitted, truly)
    network, network_per = _r2(estimator, params, predicted, truly)
    return {"model": name, "source": source, "n": samples, "n_valid": int(truly.sum()),
            "grid": list(GRID[name]), "known_scene_r2": bound,
            "known_scene_r2_per_param": bound_per, "network_r2": network,
            "network_r2_per_param": network_per, "fit_seconds": round(seconds, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="gaussian1,zernike3")
    parser.add_argument("--sources", default="proc")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        for source in args.sources.split(","):
            row = evaluate(name, source, args.samples)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"machine": f"{platform.machine()}, {args.threads} torch thread(s), "
                         f"torch {torch.__version__}", "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
