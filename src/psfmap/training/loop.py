"""Training of the PSF-regression CNN: loss (eq. 11), Adam, schedule, R² model selection.

Reference: Shajkofci & Liebling, "Spatially-variant CNN-based point spread function
estimation for blind deconvolution and depth estimation in optical microscopy",
IEEE TIP 2020 — eq. 11 (loss) and eq. 15 (coefficient of determination).

A run is fully described by a :class:`TrainConfig` (PSF family with its ranges, data mix and
noise, network, optimiser, seed, steps); the checkpoint stores it beside the weights, so
``psfmap train --model NAME --steps N --seed S`` reproduces a shipped model bit for bit on the
same software stack.
"""

from __future__ import annotations

import copy
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psfmap.blind.checkpoint import checkpoint_card_path, save_checkpoint
from psfmap.blind.network import DEFAULT_NETWORK, PSFRegressor
from psfmap.psf import PSFFamily, model, model_from_config
from psfmap.training.data import DataConfig, PatchGenerator

TIMING_STEPS = 25  # a minutes-limited run fixes its step count after this many steps
UNCERTAINTY_BATCH = 128
UNCERTAINTY_HELD_OUT = 1024  # samples of the calibration check that fit_uncertainty reports
UNCERTAINTY_SEED = 15485863


# ---------------------------------------------------------------- metrics and loss
def r2_score(
    true: torch.Tensor | np.ndarray,
    predicted: torch.Tensor | np.ndarray,
    periodic: Sequence[int] = (),
) -> np.ndarray:
    """Coefficient of determination per column (eq. 15 of Shajkofci & Liebling, TIP 2020).

        R² = 1 − Σ (y − ŷ)² / Σ (y − ȳ)²

    For the ``periodic`` columns (normalised to ``[0, 1)``) the residual is wrapped to
    ``[−½, ½)`` by :func:`wrapped_error` (an axis of 0 and of π describe the same
    astigmatism). Returns an array of length N; a column without variance gives NaN.
    """
    true = np.asarray(true, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if true.shape != predicted.shape or true.ndim != 2:
        raise ValueError(
            f"true and predicted must both have shape (B, N), got {true.shape} and "
            f"{predicted.shape}"
        )
    residual = wrapped_error(torch.from_numpy(predicted), torch.from_numpy(true),
                             periodic).numpy()
    total = ((true - true.mean(0)) ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 1 - (residual**2).sum(0) / total, np.nan)


def regression_loss(
    network: PSFRegressor,
    embedding: torch.Tensor,
    unit_params: torch.Tensor,
    valid: torch.Tensor,
    param_weight: float = 10.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of eq. 11: validity cross-entropy plus the parameter error on valid samples.

        L = BCE(σ(â₀), a₀) + λ · Σ_b a₀,b ‖e(â)_b − e(a)_b‖² / max(1, Σ_b a₀,b)

    ``e`` is the network's parameter embedding (normalised parameters; periodic pairs as
    Cartesian points), ``λ = param_weight``.
    """
    logit = embedding[:, -1]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, valid)
    target = network.encode(unit_params)
    squared = (embedding[:, :-1] - target).pow(2).sum(1)
    param = (squared * valid).sum() / valid.sum().clamp_min(1.0)
    total = bce + param_weight * param
    return total, {"loss": total.item(), "bce": bce.item(), "param": param.item()}


# ---------------------------------------------------------------- configuration
@dataclass
class TrainConfig:
    """Everything a training run depends on (stored in the checkpoint).

    Attributes
    ----------
    model : str
        PSF family name (``gaussian1``, ``gaussian2``, ``zernike1``, ``zernike2``, ``zernike3``).
    family : dict
        ``PSFFamily.config()`` (size, ranges, optics); defaults to ``model(name).config()``.
    data : dict
        :class:`~psfmap.training.data.DataConfig` fields.
    network : dict
        :class:`~psfmap.blind.network.PSFRegressor` keywords (width, blocks, hidden, ...).
    steps, batch_size, learning_rate, weight_decay, warmup : optimisation (Adam, linear warm-up
        over ``warmup`` × steps then cosine decay to 1 % of the rate).
    param_weight : float
        λ of eq. 11.
    pool_size, refresh : int
        Samples are drawn from a pool of ``pool_size`` generated samples, ``refresh`` of which
        are replaced by fresh ones at every step (generating a sample costs about twice a
        training step on it); every draw also applies one of the 8 flips/rotations of the
        square, with the matching change of the labels (:func:`dihedral_augment`).
    seed : int
        Seeds the network initialisation and the data generator.
    validation_every, validation_size : model selection on validation R² (held-out seed).
    threads : int
        ``torch.set_num_threads`` during training.
    uncertainty_steps : int
        Steps of :func:`fit_uncertainty` after the main training (batches of
        ``UNCERTAINTY_BATCH``); 0: no uncertainty head.
    schedule : list of [int, int]
        Learning-rate schedule history of a run whose step count changed while it ran:
        ``[start_step, schedule_steps]`` pairs, the schedule length followed from
        ``start_step`` on (a ``minutes``-limited run records ``[[0, steps asked],
        [TIMING_STEPS, steps that fit]]``). Empty: the schedule follows ``steps``. A replay of
        the config follows the same schedule, so it reproduces the run exactly.
    """

    model: str = "gaussian1"
    family: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    network: dict[str, Any] = field(default_factory=dict)
    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    warmup: float = 0.03
    param_weight: float = 10.0
    pool_size: int = 4096
    refresh: int = 16
    seed: int = 0
    validation_every: int = 250
    validation_size: int = 768
    threads: int = 1
    schedule: list = field(default_factory=list)
    uncertainty_steps: int = 0

    def resolved(self) -> TrainConfig:
        """Fill defaults (family from the model name, data and network defaults)."""
        out = copy.deepcopy(self)
        family = model_from_config(out.family) if out.family else model(out.model)
        if family.name != out.model:
            raise ValueError(
                f"family config is for {family.name!r} but model is {out.model!r}"
            )
        out.family = family.config()
        out.data = DataConfig.from_dict(out.data).to_dict()
        network = {**DEFAULT_NETWORK, **out.network}
        network["patch_size"] = out.data["patch_size"]
        network["n_params"] = family.n_params
        network["periodic"] = family.periodic
        network["uncertainty"] = out.uncertainty_steps > 0
        out.network = network
        if out.uncertainty_steps < 0:
            raise ValueError(f"uncertainty_steps must be >= 0, got {out.uncertainty_steps}")
        if out.steps < 1 or out.batch_size < 2:
            raise ValueError(f"steps must be >= 1 and batch_size >= 2, got {out.steps}, "
                             f"{out.batch_size}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown training config fields {sorted(unknown)}")
        return cls(**dict(values))


# ---------------------------------------------------------------- training
def learning_rate_factor(step: int, steps: int, warmup: float) -> float:
    """Linear warm-up over ``warmup × steps``, then cosine decay to 1 %."""
    warm = max(1, int(warmup * steps))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def evaluate(
    network: PSFRegressor,
    family: PSFFamily,
    patches: torch.Tensor,
    params: torch.Tensor,
    valid: torch.Tensor,
    batch_size: int = 256,
) -> dict[str, Any]:
    """R² (eq. 15) on the truly valid samples and validity accuracy of a network."""
    network.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, patches.shape[0], batch_size):
            outputs.append(network(patches[start:start + batch_size]))
    out = torch.cat(outputs)
    unit_true = family.normalize(params.double())
    unit_pred = out[:, :-1].double().clamp(0, 1)
    periodic = [angle for _, angle in network.periodic]
    mask = valid > 0.5
    r2 = r2_score(unit_true[mask], unit_pred[mask], periodic) if mask.sum() > 1 else \
        np.full(family.n_params, np.nan)
    accuracy = float(((out[:, -1] > 0) == mask).float().mean())
    mean = float(np.nanmean(r2)) if np.isfinite(r2).any() else float("nan")
    return {"r2": [float(v) for v in r2], "r2_mean": mean,
            "validity_accuracy": accuracy, "n_valid": int(mask.sum())}


def dihedral_augment(
    patches: torch.Tensor, params: torch.Tensor, names: Sequence[str], code: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one of the 8 symmetries of the square per sample and transform the labels.

    ``code`` bits: 1 = transpose, 2 = flip rows, 4 = flip columns (applied in that order).
    Gaussian widths along x and y swap under a transpose; an astigmatism axis φ becomes
    ``π/2 − φ`` under a transpose and ``−φ`` under a flip (mod π); isotropic parameters
    (width, focus, cylinder) are unchanged. The noise is i.i.d., so the augmented sample is
    a sample of the same distribution.
    """
    patches = patches.clone()
    params = params.clone()
    names = list(names)
    axis = names.index("axis") if "axis" in names else None
    swap = (names.index("width_x"), names.index("width_y")) if "width_x" in names else None
    transpose = (code & 1).bool()
    flip_rows = (code & 2).bool()
    flip_cols = (code & 4).bool()
    patches[transpose] = patches[transpose].transpose(-2, -1)
    patches[flip_rows] = patches[flip_rows].flip(-2)
    patches[flip_cols] = patches[flip_cols].flip(-1)
    if swap is not None:
        a, b = swap
        params[transpose, a], params[transpose, b] = params[transpose, b], params[transpose, a]
    if axis is not None:
        phi = params[:, axis]
        phi = torch.where(transpose, math.pi / 2 - phi, phi)
        phi = torch.where(flip_rows ^ flip_cols, -phi, phi)
        params[:, axis] = torch.remainder(phi, math.pi)
    return patches, params


class SamplePool:
    """A pool of generated samples, partly refreshed at every draw (seeded)."""

    def __init__(self, data: PatchGenerator, size: int, refresh: int, seed: int):
        self.data = data
        self.generator = torch.Generator().manual_seed(seed + 104729)
        first = [data.batch(min(512, size - start)) for start in range(0, size, 512)]
        self.patches = torch.cat([b.patches for b in first])
        self.params = torch.cat([b.params for b in first])
        self.valid = torch.cat([b.valid for b in first])
        self.refresh = refresh
        self.names = data.family.names

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = self.patches.shape[0]
        if self.refresh > 0:
            fresh = self.data.batch(self.refresh)
            slots = torch.randint(size, (self.refresh,), generator=self.generator)
            self.patches[slots] = fresh.patches
            self.params[slots] = fresh.params
            self.valid[slots] = fresh.valid
        index = torch.randint(size, (n,), generator=self.generator)
        code = torch.randint(8, (n,), generator=self.generator)
        patches, params = dihedral_augment(self.patches[index], self.params[index], self.names,
                                           code)
        return patches, params, self.valid[index]


def train(
    config: TrainConfig | Mapping[str, Any],
    output: str | Path,
    *,
    minutes: float | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> Path:
    """Train a PSF-regression network and write its checkpoint; return the path.

    Parameters
    ----------
    config : TrainConfig or dict
        The run (see :class:`TrainConfig`); missing fields take their defaults.
    output : path
        Weights file to write (``.pt``); its config and metrics also go to ``.json`` beside.
    minutes : float, optional
        Wall-time budget: after ``TIMING_STEPS`` steps ``config.steps`` is lowered to what
        fits. The checkpoint records the final ``steps`` and the ``schedule`` it followed;
        training again from the checkpoint's config (without ``minutes``)
        reproduces the weights.
    progress : callable, optional
        ``progress(step, steps, stats)`` after each step.

    The best network by validation R² (mean over parameters, on valid samples of a held-out
    seed) is kept. Deterministic for a given config on a given software stack.
    """
    if isinstance(config, Mapping):
        config = TrainConfig.from_dict(config)
    config = config.resolved()
    output = Path(output)
    checkpoint_card_path(output)
    if not output.parent.is_dir():
        raise ValueError(f"output folder {str(output.parent)!r} does not exist")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(config.threads)))
    try:
        return _train(config, output, minutes, progress)
    finally:
        torch.set_num_threads(threads)


def _train(config, output, minutes, progress) -> Path:
    started = time.perf_counter()
    family = model_from_config(config.family)
    torch.manual_seed(config.seed)
    network = PSFRegressor.from_config(config.network)
    data = PatchGenerator(family, config.data, seed=config.seed, split="train")
    validation_data = PatchGenerator(family, config.data, seed=config.seed + 7919, split="train")
    validation = validation_data.batch(config.validation_size)
    pool = SamplePool(data, config.pool_size, config.refresh, config.seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate,
                                 weight_decay=config.weight_decay)
    steps = config.steps
    schedule = [] if minutes is not None else [list(map(int, e)) for e in config.schedule]
    best = {"r2_mean": -math.inf}
    best_state = None
    history = []
    step = 0
    timing_start = None
    while step < steps:
        schedule_steps = steps
        for start, length in schedule:
            if step >= start:
                schedule_steps = length
        factor = learning_rate_factor(step, schedule_steps, config.warmup)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * factor
        patches, params, valid = pool.draw(config.batch_size)
        network.train()
        embedding = network.embedding(patches)
        loss, stats = regression_loss(network, embedding, family.normalize(params), valid,
                                      config.param_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if progress is not None:
            progress(step, steps, stats)
        if minutes is not None and step == 5:
            timing_start = time.perf_counter()
        if minutes is not None and step == TIMING_STEPS and timing_start is not None:
            per_step = (time.perf_counter() - timing_start) / (TIMING_STEPS - 5)
            overhead = 1 + config.validation_size / (config.batch_size * config.validation_every)
            remaining = minutes * 60 - (time.perf_counter() - started)
            fit = step + int(remaining / (per_step * overhead))
            schedule = [[0, steps]]
            steps = max(step + 1, min(steps, fit))
            schedule.append([TIMING_STEPS, steps])
        if step % config.validation_every == 0 or step == steps:
            metrics = evaluate(network, family, validation.patches, validation.params,
                               validation.valid)
            metrics.update(step=step, loss=stats["loss"],
                           seconds=round(time.perf_counter() - started, 1))
            history.append(metrics)
            if best_state is None or metrics["r2_mean"] > best["r2_mean"]:
                best = metrics
                best_state = copy.deepcopy(network.state_dict())
    if best_state is not None:
        network.load_state_dict(best_state)
    uncertainty = None
    if config.uncertainty_steps > 0:
        uncertainty = fit_uncertainty(network, family, config.data, config.uncertainty_steps,
                                      config.seed)
    final = copy.deepcopy(config)
    final.schedule = schedule
    final.steps = steps
    metrics = {
        "validation": best,
        "history": history,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}, "
                   f"{config.threads} torch thread(s)",
        "torch": torch.__version__,
    }
    if uncertainty is not None:
        metrics["uncertainty"] = uncertainty
    return save_checkpoint(output, network.eval(), final.to_dict(), metrics)


def fit_uncertainty(
    network: PSFRegressor,
    family: PSFFamily,
    data: Mapping[str, Any],
    steps: int,
    seed: int,
    *,
    batch_size: int = UNCERTAINTY_BATCH,
    learning_rate: float = 1e-3,
) -> dict[str, Any]:
    r"""Fit the uncertainty head of a trained network; the rest of the network is frozen.

    Minimises the Gaussian negative log-likelihood of the normalised estimate's error
    ``e = θ̂ − θ`` (wrapped for the astigmatism axis) over the valid training samples,

        L = ½ mean( e² exp(−s) + s ),    s = log σ² = log_variance(features, θ̂),

    whose minimum over ``s`` is ``σ² = E[e² | patch]`` (Kendall & Gal, "What uncertainties do
    we need in Bayesian deep learning for computer vision?", NeurIPS 2017). Fresh samples
    from the training split (seed ``seed + UNCERTAINTY_SEED``); deterministic.

    Returns ``{"steps", "batch_size", "nll_first", "nll_last", "calibration"}``: the mean
    loss of the first and last quarter of the steps (at most 50 each), and, on held-out
    samples of another seed, the RMS error against the RMS predicted σ in each quartile of
    the predicted σ.
    """
    if network.uncertainty_head is None:
        raise ValueError("the network was built without an uncertainty head (uncertainty=True)")
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    generator_seed = int(seed) + UNCERTAINTY_SEED
    samples = PatchGenerator(family, data, seed=generator_seed, split="train")
    periodic = [angle for _, angle in network.periodic]
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    head = network.uncertainty_head
    for parameter in head.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate)
    losses = []
    network.eval()
    try:
        for _ in range(steps):
            batch = samples.batch(batch_size)
            pooled, unit, error = _frozen_estimates(network, family, batch, periodic)
            valid = batch.valid > 0.5
            if not bool(valid.any()):
                continue
            log_variance = network.log_variance(pooled[valid], unit[valid])
            loss = 0.5 * (error[valid].pow(2) * torch.exp(-log_variance) + log_variance).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        for parameter in network.parameters():
            parameter.requires_grad_(True)
    held_out = PatchGenerator(family, data, seed=generator_seed + 1,
                              split="train").batch(UNCERTAINTY_HELD_OUT)
    with torch.inference_mode():
        pooled, unit, error = _frozen_estimates(network, family, held_out, periodic)
        sigma = torch.exp(0.5 * network.log_variance(pooled, unit))
    valid = held_out.valid > 0.5
    calibration = calibration_by_quartile(error[valid], sigma[valid])
    span = max(1, min(50, len(losses) // 4))
    return {"steps": steps, "batch_size": batch_size,
            "nll_first": float(np.mean(losses[:span])),
            "nll_last": float(np.mean(losses[-span:])),
            "calibration": calibration}


def wrapped_error(unit_predicted: torch.Tensor, unit_true: torch.Tensor,
                  periodic: Sequence[int] = ()) -> torch.Tensor:
    """Error of normalised estimates ``(B, N)``, wrapped to ``[−½, ½)`` in the ``periodic``
    columns (an astigmatism axis: 0 and the top of its range are the same PSF)."""
    error = unit_predicted - unit_true.to(unit_predicted.dtype)
    for column in periodic:
        error[:, column] = torch.remainder(error[:, column] + 0.5, 1.0) - 0.5
    return error


def calibration_by_quartile(error: torch.Tensor, sigma: torch.Tensor) -> list[dict[str, float]]:
    """RMS error against RMS predicted σ in each quartile of the predicted σ (all entries of
    ``error`` and ``sigma``, same shape, pooled): how well an uncertainty head is calibrated."""
    error, sigma = error.flatten(), sigma.flatten().to(error.dtype)
    edges = torch.quantile(sigma, torch.tensor([0.25, 0.5, 0.75], dtype=sigma.dtype))
    quartile = torch.bucketize(sigma, edges)
    return [{"rms_error": float(error[quartile == q].pow(2).mean().sqrt()),
             "rms_sigma": float(sigma[quartile == q].pow(2).mean().sqrt())} for q in range(4)]


def _frozen_estimates(network, family, batch, periodic):
    """Pooled features, decoded normalised estimate and its (wrapped) error of a batch."""
    with torch.no_grad():
        pooled = network.pooled_features(batch.patches)
        unit = network.outputs(pooled)[:, :-1].clamp(0, 1)
        error = wrapped_error(unit, family.normalize(batch.params.double()), periodic)
    return pooled, unit, error
