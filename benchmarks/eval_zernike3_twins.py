"""Why zernike3 stays far below its R² target: focus and astigmatism have near twins.

For a pupil phase ``W = a ρ² + b ρ² cos 2(θ − φ)`` (defocus and astigmatism, up to piston),
``W = (a + b) x'² + (a − b) y'²`` in axes turned by φ. Swapping ``a`` and ``b`` only flips the
sign of the ``y'²`` term: in geometric optics the PSF is the same ellipse (semi-axes
``|a ± b|``), and for a square pupil aligned with those axes the intensity PSF is identical,
since ``|FT[rect(y) e^{iπcy²}]|²`` is the same for ``c`` and ``−c``. With Noll's
normalisation (``Z4 = √3 (2ρ² − 1)``, ``Z6 = √6 ρ² cos 2θ``) the twin of (focus f,
cylinder C, axis φ) is ``(C / √2, √2 f, φ)``. A circular pupil breaks the symmetry only
partly, and a blind estimate sees the blur mostly through the magnitude of its transfer
function (the object's spectrum hides the phase).

This script measures, for the family the shipped zernike3 regresses:

1. how much of the parameter range has its twin inside the range;
2. how far twins are apart as PSFs and as MTFs (relative L2), next to steps of 5 % of the
   range in focus or cylinder and to random pairs;
3. on held-out [micr] patches (as ``eval_regression.py``): how often the shipped network's
   estimate lies nearer the twin than the truth, and the R² it would have if an oracle
   resolved those confusions.

Usage::

    python benchmarks/eval_zernike3_twins.py [--samples 3000] [--threads 2]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from psfmap.blind.estimator import PSFEstimator
from psfmap.training import PatchGenerator, r2_score

SQRT2 = 2**0.5


def twins(params: torch.Tensor) -> torch.Tensor:
    """The twin ``(C / √2, √2 f, φ)`` of each zernike3 parameter vector ``(f, C, φ)``."""
    focus, cylinder, axis = params.unbind(1)
    return torch.stack([cylinder / SQRT2, SQRT2 * focus, axis], 1)


def relative_distance(first: torch.Tensor, second: torch.Tensor) -> np.ndarray:
    return ((first - second).flatten(1).norm(dim=1) / first.flatten(1).norm(dim=1)).numpy()


def percentiles(values: np.ndarray) -> str:
    low, median, high = np.percentile(values, [10, 50, 90])
    return f"{median:.3f} ({low:.3f}-{high:.3f})"


def family_twins(family, n: int, generator: torch.Generator) -> None:
    params = family.sample(n, generator, dtype=torch.float64)
    twin = twins(params)
    inside = torch.from_numpy(np.all(twin.numpy() <= family.high, axis=1))
    print(f"parameters whose twin lies inside the range: {inside.double().mean():.1%}")
    chosen = params[inside][:400]
    psfs, twin_psfs = family(chosen), family(twins(chosen))
    span = torch.as_tensor(family.high - family.low)
    steps = {}
    for column, label in ((0, "focus"), (1, "cylinder")):
        moved = chosen.clone()
        moved[:, column] = torch.minimum(moved[:, column] + 0.05 * span[column], span[column])
        steps[label] = family(moved)
    random_psfs = family(family.sample(len(chosen), generator, dtype=torch.float64))

    def mtf(psf):
        return torch.fft.rfft2(psf).abs()

    gap = (family.normalize(chosen) - family.normalize(twins(chosen)))[:, :2].norm(dim=1)
    apart = (gap > 0.3).numpy()
    print("relative L2 distance, median (10-90 %):   PSF                  MTF")
    for label, first, other in (
        ("twin", psfs, twin_psfs),
        ("twin > 0.3 apart (normalised)", psfs[apart], twin_psfs[apart]),
        ("focus + 5 % of range", psfs, steps["focus"]),
        ("cylinder + 5 % of range", psfs, steps["cylinder"]),
        ("random pair", psfs, random_psfs),
    ):
        print(f"  {label:30s} {percentiles(relative_distance(first, other)):22s}"
              f"{percentiles(relative_distance(mtf(first), mtf(other)))}")


def network_twins(samples: int, seed: int = 2020) -> None:
    estimator = PSFEstimator.pretrained("zernike3")
    family = estimator.family
    config = {**estimator.config["data"], "mix": {"micr": 1.0}, "invalid_fraction": 0.0}
    batch = PatchGenerator(family, config, seed=seed, split="test").batch(samples)
    valid = batch.valid.numpy() > 0.5
    predicted, _ = estimator.predict(batch.patches)
    truth, predicted = batch.params.double()[valid], predicted.double()[valid]
    twin = twins(truth)
    inside = torch.from_numpy(np.all(twin.numpy() <= family.high, axis=1))

    def unit(params):
        return family.normalize(params)[:, :2]

    to_truth = (unit(predicted) - unit(truth)).norm(dim=1)
    to_twin = (unit(predicted) - unit(twin)).norm(dim=1)
    apart = inside & ((unit(truth) - unit(twin)).norm(dim=1) > 0.3)
    nearer_twin = apart & (to_twin < to_truth)
    print(f"held-out [micr] patches (truly valid): {int(valid.sum())}; twin in range: "
          f"{int(inside.sum())}; twin more than 0.3 (normalised) away: {int(apart.sum())}")
    print(f"  of those, estimate nearer the twin than the truth: "
          f"{nearer_twin.sum() / max(int(apart.sum()), 1):.1%} (50 % = cannot tell)")
    resolved = predicted.clone()
    swap = inside & (to_twin < to_truth)
    resolved[swap] = twins(predicted[swap])
    resolved = family.denormalize(family.normalize(resolved).clamp(0, 1))
    periodic = [angle for _, angle in estimator.network.periodic]
    for label, params in (("shipped", predicted), ("twin confusions resolved", resolved)):
        r2 = r2_score(family.normalize(truth).numpy(), family.normalize(params).numpy(),
                      periodic)
        print(f"  R² focus / cylinder / axis, {label}: "
              + " / ".join(f"{v:.3f}" for v in r2))
    # what the twins share: the principal curvatures a + b and |a − b| of the pupil phase
    r2 = r2_score(curvatures(truth), curvatures(predicted))
    print(f"  R² of the twin-invariant a + b / |a − b| (a = 2√3 focus, b = √6 cylinder): "
          f"{r2[0]:.3f} / {r2[1]:.3f}")


def curvatures(params: torch.Tensor) -> np.ndarray:
    """``(a + b, |a − b|)`` with ``a = 2√3 focus`` and ``b = √6 cylinder``: unchanged by twins."""
    a, b = 2 * 3**0.5 * params[:, 0], 6**0.5 * params[:, 1]
    return torch.stack([a + b, (a - b).abs()], 1).numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    family = PSFEstimator.pretrained("zernike3").family
    print(repr(family))
    family_twins(family, 4000, torch.Generator().manual_seed(0))
    network_twins(args.samples)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
