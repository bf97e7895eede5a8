"""Table III / Fig. 7 analogue: R² of the shipped PSF-regression CNNs.

Shajkofci & Liebling, IEEE TIP 2020: R² (eq. 15) of the regressed PSF parameters per model
and per test data type ([syn] synthetic cells, [poi] points, [nat] natural images, [micr] real
microscopy, [proc] procedural scenes sharp by construction), on held-out material (the
``test`` split: other scikit-image pictures, the bottom quarter of every microscopy image,
other synthetic seeds, procedural scenes from a seed range disjoint from the training one,
``PROC_SEEDS``, so never used in training). R² is computed on the patches whose
ground-truth validity a0 is 1 and, separately, on those the network also judges valid
(validity > 0.5). Periodic parameters (astigmatism axis) use the wrapped residual. The
squared Pearson correlation of the non-periodic parameters on [micr] is printed beside it.

Also: robustness (R² versus Gaussian, Poisson and mixed noise strength and illumination) and
inference speed on 169 patches of 64² against a reference in the same process: the plain
0.7 M-parameter ResNet of issue 5 §0 on the same batch.

Usage::

    python benchmarks/eval_regression.py [--samples 10000] [--models gaussian1,...] [--window 128]
        [--sources proc,micr] [--robust-samples 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from psfmap.blind.estimator import PSFEstimator
from psfmap.training import (
    SOURCES,
    PatchGenerator,
    calibration_by_quartile,
    r2_score,
    wrapped_error,
)
from psfmap.training.sources import PROC_SEEDS

MODELS = ("gaussian1", "gaussian2", "zernike1", "zernike3")


def _predict_all(estimator, patches, chunk=1024):
    """``(params, validity, std or None)`` of all patches, in chunks."""
    with_std = getattr(estimator, "has_uncertainty", False)
    outputs = [estimator.predict(patches[start:start + chunk], return_std=with_std)
               for start in range(0, patches.shape[0], chunk)]
    params, validity = torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])
    return params, validity, (torch.cat([o[2] for o in outputs]) if with_std else None)


def _calibration(estimator, true, predicted, std, mask) -> list[dict] | None:
    """RMS error vs RMS predicted σ (normalised units, all parameters pooled) in each
    quartile of the predicted σ, over the ``mask`` patches."""
    if std is None or mask.sum() < 20:
        return None
    family = estimator.family
    span = torch.as_tensor(family.high - family.low, dtype=torch.float64)
    span = torch.where(span > 0, span, torch.ones_like(span))
    error = wrapped_error(family.normalize(predicted.double()), family.normalize(true.double()),
                          [angle for _, angle in estimator.network.periodic])
    return calibration_by_quartile(error[mask], (std.double() / span)[mask])


def _r2(estimator, true, predicted, mask):
    if mask.sum() < 10:
        return float("nan"), [float("nan")] * estimator.family.n_params
    family = estimator.family
    periodic = [angle for _, angle in estimator.network.periodic]
    values = r2_score(family.normalize(true[mask].double()).numpy(),
                      family.normalize(predicted[mask].double()).numpy(), periodic)
    return float(np.mean(values)), [float(v) for v in values]


def _pearson_squared(estimator, true, predicted, mask) -> float:
    """Mean squared Pearson correlation over the non-periodic parameters (the wording of the
    papers' abstract for their R²). Unlike eq. 15 as coded in ``_r2`` it forgives an affine
    bias; it has no meaning for a periodic axis, which is left out."""
    if mask.sum() < 10:
        return float("nan")
    periodic = {angle for _, angle in estimator.network.periodic}
    columns = [c for c in range(estimator.family.n_params) if c not in periodic]
    true, predicted = true[mask].double().numpy(), predicted[mask].double().numpy()
    return float(np.mean([np.corrcoef(true[:, c], predicted[:, c])[0, 1] ** 2
                          for c in columns]))


# the [proc] test set is the same for every model, whatever its training config's proc_images
PROC_TEST_SCENES = 64
HELD_OUT = {
    "syn": "synthetic cells from test-only seeds",
    "poi": "synthetic points from test-only seeds",
    "nat": "scikit-image pictures not in the training list",
    "micr": "bottom rows of every microscopy plane (training uses the rest)",
    "micr_bundled": "bottom rows of the bundled neuron sample",
    "proc": f"{PROC_TEST_SCENES} procedural scenes from seeds {PROC_SEEDS['test']}+i "
            f"(training draws {PROC_SEEDS['train']}+i): never used in training",
}


def held_out_generator(estimator, source: str, seed: int, config: dict | None = None
                   ) -> PatchGenerator:
    """The held-out patches of one Table III data type (``source``), all of it valid
    material; ``config`` replaces the model's data config (e.g. another photon range).
    ``micr_bundled``: only the package's own sample (no ../shared/data), held-out rows."""
    config = dict(estimator.config["data"] if config is None else config)
    return PatchGenerator(estimator.family, {
        **config, "mix": {source.split("_")[0]: 1.0}, "invalid_fraction": 0.0,
        "shared_data": source != "micr_bundled" and config.get("shared_data", False),
        "proc_images": PROC_TEST_SCENES}, seed=seed, split="test")


def table_iii(estimator, samples: int, seed: int = 2020, photons: tuple | None = None,
              window: int | None = None, sources: tuple | None = None) -> dict:
    """R² per data type on ``samples`` held-out patches per type (truly valid ones).

    The noise is drawn as in the model's training data; ``photons`` replaces its peak photon
    range (to compare models trained on different ranges on one test set). ``window`` draws
    larger test patches (their validity a0 judged on the whole window), which
    ``PSFEstimator.predict`` cuts into patches of the network's size and pools, as the
    windows of a PSF map are (e.g. 128², the papers' patch size). ``sources`` restricts the
    data types (default: all, ``SOURCES`` and ``micr_bundled``).
    """
    rows = {}
    config = dict(estimator.config["data"])
    if photons is not None:
        config["photons"] = list(photons)
    if window is not None:
        config["patch_size"] = int(window)
    for source in sources or SOURCES + ("micr_bundled",):
        data = held_out_generator(estimator, source, seed, config)
        patches, params, valid = [], [], []
        for start in range(0, samples, 1000):
            batch = data.batch(min(1000, samples - start))
            patches.append(batch.patches)
            params.append(batch.params)
            valid.append(batch.valid)
        patches, params, valid = torch.cat(patches), torch.cat(params), torch.cat(valid)
        predicted, validity, std = _predict_all(estimator, patches)
        truly = valid.numpy() > 0.5
        judged = validity.numpy() > 0.5
        r2_valid, per_param = _r2(estimator, params, predicted, truly)
        r2_both, _ = _r2(estimator, params, predicted, truly & judged)
        rows[source] = {
            "held_out": HELD_OUT[source],
            "n": int(len(truly)), "n_valid": int(truly.sum()),
            "r2_valid": r2_valid, "r2_per_param": per_param,
            "pearson_squared_valid": _pearson_squared(estimator, params, predicted,
                                                      torch.from_numpy(truly)),
            "r2_valid_and_judged_valid": r2_both,
            "validity_accuracy": float((truly == judged).mean()),
            "std_calibration": _calibration(estimator, params, predicted, std,
                                            torch.from_numpy(truly)),
        }
    # explicit black / flat / ramp patches: how many are (wrongly) judged valid
    data = PatchGenerator(estimator.family, {**config, "invalid_fraction": 0.999},
                          seed=seed, split="test")
    batch = data.batch(1000)
    _, validity = estimator.predict(batch.patches)
    rows["empty"] = {"n": 1000, "judged_valid_fraction": float((validity > 0.5).float().mean())}
    return rows


POISSON_PHOTONS = (10.0, 30.0, 100.0, 300.0, 1000.0, 10000.0, 100000.0)
# The "same patches" R² of the Poisson sweep counts the patches valid at this level, hence at
# every brighter one (validity grows with the photon count): noise alone, no selection.
SAME_PATCHES_FROM = 300.0
ROBUSTNESS_CASES = {
    # at 10⁴ peak photons the Poisson noise is ~100 e⁻ at the peak: read noise must be large
    "gaussian": [("read_noise", (v, v)) for v in (0.0, 30.0, 100.0, 300.0, 1000.0)],
    "background": [("background", (v, v)) for v in (0.0, 0.1, 0.3, 1.0, 3.0)],
}


def poisson_sweep(estimator, config: dict, samples: int, seed: int) -> list[dict]:
    """R² against the peak photon count, the same crops and PSFs rendered at every level.

    ``r2``: on each level's truly valid patches (more patches count as valid when brighter);
    ``r2_same_patches`` (levels ≥ ``SAME_PATCHES_FROM``): on the patches valid at
    ``SAME_PATCHES_FROM`` photons, so only the noise changes along the row.
    """
    data = PatchGenerator(estimator.family, config, seed=seed, split="test")
    sharp, names, explicit = data.sharp_crops(samples)
    params = data.sample_params(samples)
    psfs = estimator.family(params.float()).float()
    rendered = {}
    for photons in POISSON_PHOTONS:
        batch = data.render(sharp, params, psfs, names, explicit, photons=(photons, photons),
                            read_noise=(0.0, 0.0))
        predicted = _predict_all(estimator, batch.patches)[0]
        rendered[photons] = (predicted, batch.valid.numpy() > 0.5)
    common = rendered[SAME_PATCHES_FROM][1]
    rows = []
    for photons, (predicted, truly) in rendered.items():
        row = {"value": photons, "r2": _r2(estimator, params, predicted, truly)[0],
               "valid_fraction": float(truly.mean())}
        if photons >= SAME_PATCHES_FROM:
            row["r2_same_patches"] = _r2(estimator, params, predicted, common)[0]
        rows.append(row)
    return rows


def robustness(estimator, samples: int, seed: int = 7, only: tuple | None = None) -> dict:
    """R² (truly valid, all sources mixed as in training) against noise and illumination.

    ``only`` restricts the study to some of ``poisson``, ``gaussian``, ``background``,
    ``mixed``, ``illumination``.
    """
    config = {**estimator.config["data"], "invalid_fraction": 0.0}
    out: dict = {}
    if only is None or "poisson" in only:
        out["poisson"] = poisson_sweep(estimator, config, samples, seed)
    for name, settings in ROBUSTNESS_CASES.items():
        if only is not None and name not in only:
            continue
        out[name] = []
        for key, value in settings:
            data = PatchGenerator(estimator.family, config, seed=seed, split="test")
            overrides = {key: value}
            if name == "gaussian":  # Gaussian noise alone: many photons, so Poisson is small
                overrides["photons"] = (10000.0, 10000.0)
            batch = data.batch(samples, **overrides)
            predicted = _predict_all(estimator, batch.patches)[0]
            truly = batch.valid.numpy() > 0.5
            r2, _ = _r2(estimator, batch.params, predicted, truly)
            out[name].append({"value": value[0], "r2": r2, "valid_fraction": float(truly.mean())})
    if only is not None and "mixed" not in only:
        return out
    # mixed: Poisson at 100 photons plus read noise of growing strength
    out["mixed"] = []
    for read in (0.0, 3.0, 10.0):
        data = PatchGenerator(estimator.family, config, seed=seed, split="test")
        batch = data.batch(samples, photons=(100.0, 100.0), read_noise=(read, read))
        predicted = _predict_all(estimator, batch.patches)[0]
        truly = batch.valid.numpy() > 0.5
        out["mixed"].append({"value": read, "r2": _r2(estimator, batch.params, predicted,
                                                      truly)[0],
                             "valid_fraction": float(truly.mean())})
    # illumination: the same patches under a multiplicative gain and a linear ramp
    data = PatchGenerator(estimator.family, config, seed=seed, split="test")
    batch = data.batch(samples)
    truly = batch.valid.numpy() > 0.5
    p = batch.patches.shape[-1]
    ramp = torch.linspace(0.5, 1.5, p)[None, None, :]
    out["illumination"] = []
    for label, transform in (("none", lambda x: x), ("gain x100", lambda x: 100 * x + 5),
                             ("ramp 0.5-1.5", lambda x: (x - x.amin((-2, -1), keepdim=True))
                              * ramp)):
        predicted = _predict_all(estimator, transform(batch.patches))[0]
        out["illumination"].append({"value": label, "r2": _r2(estimator, batch.params,
                                                              predicted, truly)[0]})
    return out


def plain_resnet() -> torch.nn.Module:
    """The issue's reference: a plain 0.7 M-parameter ResNet on raw 64² pixels.

    Stem at full resolution, four stages of one basic block (24, 48, 96, 192 channels, the
    last three at stride 2), global pooling, linear head.
    """
    from psfmap.blind.network import BasicBlock

    layers = [torch.nn.Conv2d(1, 24, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(24),
              torch.nn.ReLU()]
    channels = 24
    for stage, width in enumerate((24, 48, 96, 192)):
        layers.append(BasicBlock(channels, width, 1 if stage == 0 else 2))
        channels = width
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(channels, 2)]
    return torch.nn.Sequential(*layers).eval()


def speed(estimator, repeats: int = 10) -> dict:
    """Seconds to predict 169 patches, and the same for the plain-ResNet reference."""
    torch.manual_seed(0)
    p = estimator.patch_size
    patches = torch.randn(169, p, p)
    reference_network = plain_resnet()

    def timed(fn):
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats

    with torch.inference_mode():
        reference = timed(lambda: reference_network(patches[:, None]))
    seconds = timed(lambda: estimator.predict(patches))
    return {"seconds_169": seconds, "reference_seconds": reference,
            "ratio_to_reference": seconds / reference,
            "parameters": sum(t.numel() for t in estimator.network.parameters()),
            "reference_parameters": sum(t.numel() for t in reference_network.parameters())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10000,
                        help="held-out patches per data type (Table III)")
    parser.add_argument("--robust-samples", type=int, default=1000)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sources", default=None,
                        help="comma-separated data types of Table III (default: all of "
                             f"{', '.join(SOURCES)}, micr_bundled)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--weights", default=None,
                        help="folder of <model>.pt files to evaluate instead of the shipped ones")
    parser.add_argument("--test-photons", default=None, metavar="LOW,HIGH",
                        help="peak photon range of the Table III test (default: each model's "
                             "training range)")
    parser.add_argument("--window", type=int, default=None,
                        help="side of the Table III test patches (default: the model's patch "
                             "size; larger ones are pooled from patches of that size)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    photons = None if args.test_photons is None else tuple(
        float(v) for v in args.test_photons.split(","))
    sources = None if args.sources is None else tuple(args.sources.split(","))
    unknown = set(sources or ()) - set(HELD_OUT)
    if unknown:
        parser.error(f"--sources: unknown data types {sorted(unknown)}")
    shown = sources or (*SOURCES, "micr_bundled")
    print("All R² on held-out material, never used in training:")
    for source in shown:
        print(f"  [{source}] {HELD_OUT[source]}")
    results = {"machine": f"{platform.machine()}, {args.threads} torch thread(s), "
                          f"torch {torch.__version__}"}
    for name in args.models.split(","):
        estimator = (PSFEstimator.pretrained(name) if args.weights is None
                     else PSFEstimator.load(f"{args.weights}/{name}.pt", model=name))
        started = time.perf_counter()
        entry = {"table_iii": table_iii(estimator, args.samples, photons=photons,
                                        window=args.window, sources=sources),
                 "robustness": (robustness(estimator, args.robust_samples)
                                if args.robust_samples > 0 else {}),
                 "speed": speed(estimator)}
        entry["eval_seconds"] = round(time.perf_counter() - started, 1)
        results[name] = entry
        rows = entry["table_iii"]
        pearson = (f"  [micr] squared Pearson r² {rows['micr']['pearson_squared_valid']:.3f}"
                   if "micr" in rows else "")
        print(f"{name} (held-out): " + "  ".join(
            f"[{s}] R²={rows[s]['r2_valid']:.3f} (valid {rows[s]['n_valid']}/{rows[s]['n']}, "
            f"acc {rows[s]['validity_accuracy']:.3f})" for s in shown)
            + pearson
            + f"  empty judged valid {rows['empty']['judged_valid_fraction']:.3f}"
            + f"  169 patches {entry['speed']['seconds_169'] * 1000:.1f} ms "
              f"(x{entry['speed']['ratio_to_reference']:.3f} reference)", flush=True)
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(results, stream, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
