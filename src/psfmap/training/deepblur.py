"""Training of the Deep-Blur networks (identification ResNet, unrolled FISTA) for one family.

The two networks are trained separately, as in Debarnot & Weiss (Deep-Blur):

* material: procedural scenes sharp by construction (:func:`psfmap.simulate.scenes`, rendered
  4× finer and binned), ``size + 2·pad`` pixels, each flipped/rotated at random;
* operators: a pool of ``γ`` spread over the admissible set by MaxiSumMin
  (:func:`psfmap.deepblur.sample_box` / :func:`~psfmap.deepblur.sample_convex`); the scene is
  blurred by ``A(γ)`` extended by ``pad`` and cropped to ``size`` (so light comes in from
  outside the field, as in a real image), then Poisson noise at ``photons`` per unit;
* identification: MSE on normalised coefficients; for a family with twins (``zernike7``: the
  even Noll terms 4–6 negated give the same PSF) the smaller of the two errors; or
  (``identify.loss = "psf_snr"``) the evaluation's PSF-field SNR itself, negated;
* deblurring: MSE to the sharp scene, the network given the true operator.

Run ``python -m psfmap.training.deepblur --name zernike7 --part identify`` (then ``deblur``,
then ``assemble``) to reproduce the shipped weights; ``--config FILE.json`` overrides any
field of :data:`CONFIGS`. Training writes its full config beside the weights.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psfmap.calibrate import OperatorFamily
from psfmap.deepblur import (
    CalibratedHullFamily,
    DeepBlurModel,
    IdentificationNet,
    UnrolledFISTA,
    ZernikeBoxFamily,
)
from psfmap.metrics import ssim_per_image
from psfmap.operators import Convolution
from psfmap.psf import model as psf_model
from psfmap.simulate.scenes import scenes
from psfmap.training.sources import (
    MICR_EXCLUDE,
    PACKAGE_SHARP,
    microscopy_images,
    natural_images,
)

PRETRAINED = Path(__file__).resolve().parent.parent / "pretrained"
#: the weight of 1 - SSIM in the ``ssim_l1`` deblurring loss (the rest: L1)
SSIM_WEIGHT = 0.84

#: the shipped models' configs (``psfmap train``/``python -m`` reproduce them). The shipped
#: weights came from chains of warm-started runs on a shared CPU (each run's config is in the
#: model's JSON, ``training_parts``); a single run of these configs trains the same networks
CONFIGS: dict[str, dict[str, Any]] = {
    "zernike7": {
        "name": "zernike7", "family": {"kind": "box", "psf_model": "zernike7"},
        "size": 64, "pad": 16, "photons": 1000.0, "pool_scenes": 600, "scene_seed": 1000,
        "pool_operators": 4000, "operator_seed": 7, "seed": 0, "time_limit": 2700,
        "identify": {"steps": 1000, "batch": 32, "lr": 2e-3, "widths": [16, 32, 64, 128],
                     "blocks": 1, "pool": 1, "loss": "psf_snr"},
        "deblur": {"steps": 2000, "batch": 8, "lr": 2e-3, "iterations": 8, "channels": 8},
    },
    "beads12": {
        "name": "beads12",
        "family": {"kind": "calibrated_hull", "name": "beads12",
                   "family_file": "deepblur-beads12.family.psfmap",
                   # 2.5× the calibration's default ranges: members that differ (the hull's
                   # centre predicts them at 17 dB, not 28), so identification means something
                   "variation": {"focus": 0.25, "astigmatism": 0.08, "tilt": 0.12,
                                 "field_astigmatism": 0.06}},
        "size": 64, "pad": 16, "photons": 1000.0, "pool_scenes": 600, "scene_seed": 1000,
        "pool_operators": 4000, "operator_seed": 12, "seed": 0, "time_limit": 2700,
        "identify": {"steps": 6000, "batch": 32, "lr": 1e-3, "widths": [16, 32, 64, 128],
                     "blocks": 1, "pool": 4, "loss": "psf_snr"},
        "deblur": {"steps": 5000, "batch": 8, "lr": 1e-3, "iterations": 4, "channels": 8},
    },
}


def build_family(config: dict[str, Any], directory: Path = PRETRAINED):
    """The family of a training config."""
    spec = config["family"]
    if spec["kind"] == "box":
        return ZernikeBoxFamily(psf_model(spec["psf_model"]))
    path = Path(spec["family_file"])
    path = path if path.is_absolute() else directory / path
    return CalibratedHullFamily(OperatorFamily.load(path), spec.get("name", "calibrated"),
                                source=spec["family_file"])


def calibrated_family(path: Path, variation: dict[str, float] | None = None) -> Path:
    """Calibrate the ``beads12`` family from synthetic bead images and save it to ``path``.

    Nine conditions of :func:`psfmap.calibrate.synthetic.synthetic_calibration_set` (a known
    Zernike microscope whose focus tilts and astigmatism varies across a 256² field), calibrated
    by :func:`psfmap.calibrate` with I = 4 eigen-PSFs and J = 3 spatial maps: P = I·J = 12.
    ``variation`` (the config's ``family.variation``) overrides that function's ranges
    ``focus``, ``astigmatism``, ``tilt``, ``field_astigmatism`` (RMS waves), e.g. for a family
    whose members differ more than the shipped one's.
    """
    from psfmap.calibrate import calibrate
    from psfmap.calibrate.synthetic import synthetic_calibration_set

    variation = dict(variation or {})
    unknown = set(variation) - {"focus", "astigmatism", "tilt", "field_astigmatism"}
    if unknown:
        raise ValueError(f"family.variation takes focus, astigmatism, tilt and "
                         f"field_astigmatism, got {', '.join(sorted(unknown))}")
    microscope, _, images, _ = synthetic_calibration_set(
        n_conditions=9, image_shape=(256, 256), n_beads=60, psf_size=17, seed=0, **variation)
    family = calibrate(images, psf_size=17, n_eigen=4, spatial_rank=3,
                       metadata={**microscope.optics})
    described = "".join(f", {key} {value}" for key, value in sorted(variation.items()))
    return family.save(path, metadata={"source": "psfmap.training.deepblur.calibrated_family: "
                                       f"synthetic_calibration_set(9 conditions, 256², seed 0"
                                       f"{described})"})


def scene_pool(n: int, size: int, seed: int, cache: Path | None = None,
               material: dict[str, float] | None = None) -> torch.Tensor:
    """``n`` sharp training images ``(n, size, size)``, each of maximum 1, from ``seed``
    (cached to ``cache``).

    ``material`` gives the shares of ``"procedural"`` scenes (the default: all of them),
    ``"natural"`` pictures (scikit-image's training list) and real ``"microscopy"``
    (:func:`~psfmap.training.sources.microscopy_images`, training regions, with the shared
    data; the bundled neuron is left out: its crops are the held-out evaluation) — the real
    images as random crops that hold some signal.
    """
    shares = {"procedural": 1.0} if material is None else dict(material)
    unknown = set(shares) - {"procedural", "natural", "microscopy"}
    if unknown or not shares or min(shares.values()) < 0 or sum(shares.values()) <= 0:
        raise ValueError(f"material must give non-negative shares of 'procedural', 'natural' "
                         f"and 'microscopy', got {material!r}")
    counts = {kind: int(round(n * share / sum(shares.values()))) for kind, share in shares.items()}
    counts["procedural"] = n - sum(v for k, v in counts.items() if k != "procedural")
    key = {"n": n, "size": size, "seed": seed, "counts": counts}
    if cache is not None and cache.exists():
        saved = torch.load(cache, weights_only=True)
        if isinstance(saved, dict) and saved.get("key") == key:  # the same pool, not a stale one
            return saved["pool"]
    generator = torch.Generator().manual_seed(seed)
    parts = [scenes(counts["procedural"], size, generator=generator)]
    for kind in ("natural", "microscopy"):
        if counts.get(kind, 0) > 0:
            parts.append(_real_crops(kind, counts[kind], size, seed))
    pool = torch.cat(parts)
    if cache is not None:
        torch.save({"key": key, "pool": pool}, cache)
    return pool


def _real_crops(kind: str, count: int, size: int, seed: int) -> torch.Tensor:
    """``count`` random ``size²`` crops of the training pictures of ``kind``, each scaled to a
    maximum of 1; crops of near-empty background are drawn again."""
    if kind == "natural":
        images = natural_images("train")
    else:
        images = microscopy_images("train", shared_data=True,
                                   exclude=(*MICR_EXCLUDE, *PACKAGE_SHARP))
    images = [image for image in images if min(image.shape) >= size]
    if not images:
        raise ValueError(f"material asks for {kind} images but none of at least {size}² px "
                         "is available (the microscopy needs the shared data folder)")
    rng = np.random.default_rng(seed)
    crops: list[np.ndarray] = []
    while len(crops) < count:
        image = images[int(rng.integers(len(images)))]
        row = int(rng.integers(0, image.shape[0] - size + 1))
        col = int(rng.integers(0, image.shape[1] - size + 1))
        crop = image[row : row + size, col : col + size]
        if crop.max() <= 0 or crop.mean() < 0.02 * image.max():
            continue
        crops.append(crop / crop.max())
    return torch.tensor(np.stack(crops), dtype=torch.float32)


def _dihedral(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    out = images.clone()
    for index in range(len(out)):
        turns = int(torch.randint(0, 4, (1,), generator=generator))
        image = torch.rot90(out[index], turns, (0, 1))
        if bool(torch.rand(1, generator=generator) < 0.5):
            image = image.flip(1)
        out[index] = image
    return out


def make_batch(family, pool: torch.Tensor, gammas: np.ndarray, batch: int, size: int,
               pad: int, photons: float, generator: torch.Generator,
               psfs: torch.Tensor | None = None):
    """One training batch: ``(noisy (B, size, size), sharp, γ (B, P), operators on size²)``."""
    pick = torch.randint(0, len(pool), (batch,), generator=generator)
    sharp_big = _dihedral(pool[pick], generator)
    index = torch.randint(0, len(gammas), (batch,), generator=generator).numpy()
    chosen = gammas[index]
    if psfs is not None:  # a box family's PSFs, evaluated once for the whole pool
        operators = [Convolution(psfs[i]) for i in index]
    else:
        operators = family.operators(chosen, (size, size))
    blurred = torch.stack([op.extended(pad).forward(image)
                           for op, image in zip(operators, sharp_big, strict=True)])
    crop = slice(pad, pad + size)
    blurred = blurred[:, crop, crop].clamp_min(0)
    noisy = torch.poisson(blurred * photons, generator=generator) / photons
    return noisy, sharp_big[:, crop, crop], torch.from_numpy(chosen), operators


def _pool_psfs(family, gammas: np.ndarray) -> torch.Tensor | None:
    """The PSFs of a box family's operator pool (None for other families)."""
    return family.psfs(gammas).float() if isinstance(family, ZernikeBoxFamily) else None


def _cosine(step: int, steps: int, lr: float) -> float:
    return 0.5 * lr * (1 + math.cos(math.pi * step / max(steps, 1)))


def _warm_start(net: torch.nn.Module, spec: dict[str, Any]) -> None:
    """Start from the weights of an earlier run of the same part (``init``: its ``.pt``), e.g.
    to continue a run that a shared machine cut short; the chain is recorded in the config.
    An identifier may be grown: ``init`` may lack its full-resolution ``fine`` blocks."""
    if not spec.get("init"):
        return
    state = torch.load(spec["init"], weights_only=False)["state"]
    if isinstance(net, IdentificationNet):
        grown = net.load_grown(state)
        if grown:
            _log(f"identify: grown from {spec['init']}; new weights: {len(grown)} tensors")
    else:
        net.load_state_dict(state)


def _out_of_time(config: dict[str, Any], started: float) -> bool:
    """A wall-clock cap (``time_limit`` s, optional) for shared machines; the log records the
    steps done, so a capped run is visible (the shipped runs' logs say whether they were)."""
    limit = config.get("time_limit")
    return limit is not None and time.perf_counter() - started > limit


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _fit(net: torch.nn.Module, config: dict[str, Any], spec: dict[str, Any], label: str,
         generator: torch.Generator, loss_of, *, log_every: int, window: int,
         clip: float | None = None) -> dict[str, Any]:
    """Adam with a cosine schedule over ``spec["steps"]`` batches (or until ``time_limit``):
    ``loss_of(generator)`` draws a batch and returns its loss. Returns the training log."""
    _warm_start(net, spec)
    optimizer = torch.optim.Adam(net.parameters(), lr=spec["lr"])
    started, losses = time.perf_counter(), []
    for step in range(spec["steps"]):
        if _out_of_time(config, started):
            break
        for group in optimizer.param_groups:
            group["lr"] = _cosine(step, spec["steps"], spec["lr"])
        loss = loss_of(generator)
        optimizer.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        optimizer.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == spec["steps"] - 1:
            _log(f"{label} {step}/{spec['steps']} loss {np.mean(losses[-window:]):.5g}")
    return {"seconds": time.perf_counter() - started, "steps_done": len(losses),
            "final_loss": float(np.mean(losses[-window:]))}


def train_identifier(config: dict[str, Any], family, pool, gammas) -> tuple[IdentificationNet,
                                                                           dict[str, Any]]:
    """Train the identification network; returns it and a training log."""
    spec = config["identify"]
    psfs = _pool_psfs(family, gammas)
    torch.manual_seed(config["seed"])
    net = IdentificationNet(family.n_params, spec["widths"], spec["blocks"], spec["pool"],
                            spec.get("fine", 0))

    loss_kind = spec.get("loss", "coefficients")
    if loss_kind not in ("coefficients", "psf_snr"):
        raise ValueError(f"identify.loss must be 'coefficients' or 'psf_snr', got {loss_kind!r}")

    def loss_of(generator: torch.Generator) -> torch.Tensor:
        noisy, _, gamma, _ = make_batch(family, pool, gammas, spec["batch"], config["size"],
                                        config["pad"], config["photons"], generator, psfs)
        prediction = net(noisy.float())
        if loss_kind == "psf_snr":
            return -psf_field_snr(family, family.denormalize(prediction), gamma).mean()
        target = family.normalize(gamma).float()
        twin = family.normalize(family.twin(gamma)).float()
        # twins are the same PSF: regress to whichever the network is closer to
        return torch.minimum(((prediction - target) ** 2).mean(1),
                             ((prediction - twin) ** 2).mean(1)).mean()

    generator = torch.Generator().manual_seed(config["seed"] + 1)
    return net, _fit(net, config, spec, "identify", generator, loss_of, log_every=100,
                     window=200)


def psf_field_snr(family, estimate: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """The PSF-field SNR (dB) of each estimate ``(B, P)`` against ``gamma``, differentiable:
    the evaluation's identification figure, used as the ``psf_snr`` training loss (negated).
    Twins and near-twins (coefficients that barely change the PSF) cost nothing here, unlike
    an error on the coefficients."""
    reference = family.psf_fields(gamma.to(estimate.dtype))
    error = (family.psf_fields(estimate) - reference).square().sum((1, 2, 3))
    return 10 * torch.log10(reference.square().sum((1, 2, 3)) / error.clamp_min(1e-12))


def train_deblurrer(config: dict[str, Any], family, pool, gammas,
                    identifier: IdentificationNet | None = None
                    ) -> tuple[UnrolledFISTA, dict[str, Any]]:
    """Train the unrolled network; returns it and a training log.

    The network is given the true operators, except for a share ``deblur.estimated_share`` of
    each batch (default 0) that gets ``A(γ̂)``, with ``γ̂`` from ``identifier`` on the noisy
    image, projected onto the admissible set: what the network meets in blind use.
    """
    spec = config["deblur"]
    psfs = _pool_psfs(family, gammas)
    torch.manual_seed(config["seed"])
    net = UnrolledFISTA(spec["iterations"], spec["channels"], spec.get("unshuffle", 1))

    loss_kind = spec.get("loss", "mse")
    if loss_kind not in ("mse", "ssim_l1"):
        raise ValueError(f"deblur.loss must be 'mse' or 'ssim_l1', got {loss_kind!r}")
    share = float(spec.get("estimated_share", 0.0))
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"deblur.estimated_share must be in [0, 1], got {share!r}")
    if share > 0 and identifier is None:
        raise ValueError("deblur.estimated_share > 0 needs an identification network "
                         "(train the identify part first, or give deblur.identifier)")
    estimator = identifier.eval().fused_for_inference() if share > 0 else None

    def loss_of(generator: torch.Generator) -> torch.Tensor:
        noisy, sharp, _, operators = make_batch(family, pool, gammas, spec["batch"],
                                                config["size"], config["pad"],
                                                config["photons"], generator, psfs)
        if estimator is not None:
            operators = _estimated_operators(family, estimator, noisy, operators, share,
                                             generator)
        restored = net(noisy.float(), operators)
        if loss_kind == "mse":
            return ((restored - sharp) ** 2).mean()
        # Zhao et al. (IEEE TCI 2017, "Loss functions for image restoration with neural
        # networks"): 0.84 (1 - SSIM) + 0.16 L1, the SSIM of each image over its own range
        peak = (sharp.amax((-2, -1)) - sharp.amin((-2, -1))).clamp_min(1e-6)[:, None, None]
        structure = 1 - ssim_per_image(sharp, restored, peak).mean()
        return SSIM_WEIGHT * structure + (1 - SSIM_WEIGHT) * (restored - sharp).abs().mean()

    generator = torch.Generator().manual_seed(config["seed"] + 2)
    return net, _fit(net, config, spec, "deblur", generator, loss_of, log_every=25, window=50,
                     clip=1.0)


def _estimated_operators(family, estimator, noisy: torch.Tensor, operators: list,
                         share: float, generator: torch.Generator) -> list:
    """``operators`` with a random ``share`` of them replaced by ``A(γ̂)`` of their image."""
    chosen = torch.nonzero(torch.rand(len(noisy), generator=generator) < share)[:, 0].tolist()
    if not chosen:
        return operators
    with torch.no_grad():
        estimates = family.denormalize(estimator(noisy[chosen].float()).double()).numpy()
    estimates = np.stack([family.project(row) for row in estimates])
    size = tuple(noisy.shape[-2:])
    out = list(operators)
    for index, operator in zip(chosen, family.operators(estimates, size), strict=True):
        out[index] = operator
    return out


def operator_pool(config: dict[str, Any], family) -> np.ndarray:
    """The training ``γ``: ``pool_operators`` points spread by MaxiSumMin."""
    return family.sample(config["pool_operators"], seed=config["operator_seed"])


def run(config: dict[str, Any], part: str, out: Path, cache: Path | None = None) -> Path:
    """Train one part (``identify``, ``deblur``) into ``out``, ``assemble`` the model, or
    calibrate the ``family`` file of a calibrated-hull config."""
    out.mkdir(parents=True, exist_ok=True)
    name = config["name"]
    if part == "family":
        return calibrated_family(out / config["family"]["family_file"],
                                 config["family"].get("variation"))
    family = build_family(config)
    if part == "assemble":
        identifier, identify_state = _load_identifier(out / f"{name}-identify.pt")
        deblur_state = torch.load(out / f"{name}-deblur.pt", weights_only=False)
        deblurrer = UnrolledFISTA(**deblur_state["config"])
        deblurrer.load_state_dict(deblur_state["state"])
        model = DeepBlurModel(family, identifier, deblurrer, {
            "field": config["size"], "training": config,
            "training_log": {"identify": identify_state["log"], "deblur": deblur_state["log"]},
            # each part's own config (a part may have been run with overrides, e.g. ``init``)
            "training_parts": {"identify": identify_state.get("training"),
                               "deblur": deblur_state.get("training")},
        }, name)
        return model.save(out / f"deepblur-{name}.pt")
    pool = scene_pool(config["pool_scenes"], config["size"] + 2 * config["pad"],
                      config["scene_seed"], cache, config.get("material"))
    gammas = operator_pool(config, family)
    if part == "identify":
        net, log = train_identifier(config, family, pool, gammas)
    elif part == "deblur":
        identifier = None
        if config["deblur"].get("estimated_share", 0) > 0:
            identifier, _ = _load_identifier(Path(config["deblur"].get(
                "identifier", out / f"{name}-identify.pt")))
        net, log = train_deblurrer(config, family, pool, gammas, identifier)
    else:
        raise ValueError(f"part must be 'identify', 'deblur' or 'assemble', got {part!r}")
    path = out / f"{name}-{part}.pt"
    torch.save({"config": net.config, "state": net.state_dict(), "log": log,
                "training": config}, path)
    (out / f"{name}-{part}.config.json").write_text(json.dumps(config, indent=2))
    return path


def _load_identifier(path: Path) -> tuple[IdentificationNet, dict[str, Any]]:
    """The identification network of an ``identify`` part file, and the file's contents."""
    if not path.exists():
        raise FileNotFoundError(f"identification part file {str(path)!r} does not exist; "
                                "train the identify part first or set deblur.identifier")
    saved = torch.load(path, weights_only=False)
    net = IdentificationNet(**saved["config"])
    net.load_state_dict(saved["state"])
    return net, saved


def train_all(name: str, output: str | Path, *, config: str | Path | None = None,
              threads: int = 1, seed: int | None = None) -> Path:
    """Train both networks of the shipped model ``name`` and assemble them into ``output``
    (``psfmap train --model deepblur-NAME -o OUTPUT.pt``); part files go beside it."""
    if name not in CONFIGS:
        raise ValueError(f"name must be one of {', '.join(CONFIGS)}, got {name!r}")
    torch.set_num_threads(threads)
    settings = _configure(name, Path(config) if config is not None else None)
    if seed is not None:
        settings["seed"] = int(seed)
    output = Path(output)
    folder = output.parent
    family_file = settings["family"].get("family_file")
    if family_file and not (folder / family_file).exists():
        calibrated_family(folder / family_file, settings["family"].get("variation"))
    settings["family"] = dict(settings["family"])
    if family_file:  # the family the model will be read with, beside it
        settings["family"]["family_file"] = str((folder / family_file).resolve())
    for part in ("identify", "deblur"):
        run(settings, part, folder)
    path = run(settings, "assemble", folder)
    if path.resolve() != output.with_suffix(".pt").resolve():
        for suffix in (".pt", ".json"):
            path.with_suffix(suffix).replace(output.with_suffix(suffix))
        path = output.with_suffix(".pt")
    return path


def _configure(name: str, override_path: Path | None) -> dict[str, Any]:
    config = json.loads(json.dumps(CONFIGS[name]))
    if override_path is not None:
        override = json.loads(override_path.read_text())
        for key, value in override.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key].update(value)
            else:
                config[key] = value
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m psfmap.training.deepblur",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--name", choices=sorted(CONFIGS), default="zernike7")
    parser.add_argument("--config", type=Path, help="JSON overriding fields of the config")
    parser.add_argument("--part", choices=("family", "identify", "deblur", "assemble"),
                        required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/deepblur"))
    parser.add_argument("--cache", type=Path, help="file caching the scene pool")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = _configure(args.name, args.config)
    path = run(config, args.part, args.out, args.cache)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
