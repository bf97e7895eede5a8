"""Write the model cards of the shipped CNNs from their checkpoints and a held-out evaluation.

A card (``src/psfmap/pretrained/<name>.md``) is built from two measured sources only: the
checkpoint's ``.json`` (training config, steps, wall time, validation history) and the JSON
written by ``eval_regression.py --json`` (Table III analogue, empty patches, speed). Writing
them by program keeps the four cards consistent with each other and with the files they
describe.

Usage::

    python benchmarks/eval_regression.py --samples 3000 --threads 2 --json eval.json
    python benchmarks/model_cards.py eval.json [--command "the eval command as run"]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from psfmap.blind.estimator import PRETRAINED
from psfmap.training import (
    MICR_BINNING,
    PACKAGE_DATA,
    UNCERTAINTY_HELD_OUT,
    DataConfig,
    microscopy_paths,
)
from psfmap.training.sources import PROC_SEEDS

FAMILY_TEXT = {
    "gaussian1": "isotropic Gaussian PSF (G-1): `width` = σ in px",
    "gaussian2": "axis-aligned anisotropic Gaussian PSF (G-2): `width_x`, `width_y` = σ along "
                 "columns / rows, px",
    "zernike1": "defocused pupil (Z-1): `focus` = Noll a4 in RMS waves",
    "zernike3": "defocus + astigmatism (Z-3): `focus` (a4, RMS waves), `cylinder` "
                "(astigmatism power, RMS waves), `axis` (rad, period π)",
}
# the Table III targets: (data type the target is judged on, lowest R²)
TARGETS = {"gaussian1": ("all", 0.99), "gaussian2": ("all", 0.99), "zernike1": ("all", 0.99),
           "zernike3": ("micr", 0.95)}
MODEL_NOTES = {
    "zernike3": "The astigmatism power (`cylinder`) is the weakest parameter: at NA 0.8 and "
                "0.2 µm pixels the PSF is about 2 px wide and 0–0.3 waves of astigmatism change "
                "it little, and it trades off against defocus. The axis is scored with the "
                "wrapped residual (0 ≡ π); it is undefined when the cylinder vanishes.",
    "zernike1": "Defocus has a sign the PSF intensity cannot show (±a4 give the same image), "
                "which is why the family spans a4 ≥ 0 only.",
}
DATA_TYPES = ("syn", "poi", "nat", "micr", "micr_bundled", "proc")
# issue 23: R² on held-out sharp scenes ([proc], procedural scenes never used in training)
PROC_TARGETS = {"gaussian1": 0.97, "gaussian2": 0.97, "zernike1": 0.97, "zernike3": 0.85}


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def micr_sources(data: dict) -> str:
    """The [micr] files of a training config, as :func:`microscopy_paths` selects them."""
    excluded = tuple(data.get("micr_exclude", ()))
    paths = microscopy_paths(bool(data.get("shared_data")), excluded)
    bundled = ", ".join(f"`{p.name}`" for p in paths if p.parent == PACKAGE_DATA)
    shared = [p.name for p in paths if p.parent != PACKAGE_DATA]
    text = f"the bundled {bundled}"
    if data.get("shared_data"):
        described = [f"`{n}` binned {MICR_BINNING[n]}×{MICR_BINNING[n]}" if n in MICR_BINNING
                     else f"`{n}`" for n in shared]
        text += f" and `../shared/data/sharp` ({', '.join(described)})"
        if excluded:
            text += (f"; not used: {', '.join(f'`{n}`' for n in excluded)} (see "
                     "`DataConfig.micr_exclude`)")
    return f"{text}; top part of every plane (the bottom ≥ 96 rows are held out)"


def card(name: str, checkpoint: dict, evaluation: dict, eval_command: str,
         previous: dict | None = None) -> str:
    config, metrics = checkpoint["config"], checkpoint["metrics"]
    family, data, network = config["family"], config["data"], config["network"]
    data_config = DataConfig.from_dict(data)
    kinds = "/".join(data_config.invalid_kinds)
    table = evaluation["table_iii"]
    speed = evaluation["speed"]
    optics = f"; optics {family['optics']}" if family.get("optics") else ""
    history = metrics["history"]
    best = metrics["validation"]
    last = ", ".join(f"{h['r2_mean']:.3f}" for h in history[-4:])
    minutes = metrics["wall_seconds"] / 60
    schedule = config.get("schedule") or []
    lines = [
        f"# Model card: `{name}`",
        "",
        f"PSF family: {FAMILY_TEXT[name]}; ranges "
        + ", ".join(_fmt([lo, hi]) for lo, hi in zip(family["low"], family["high"]))
        + f"; PSF window {family['size']}² px{optics}.",
        "",
        f"Network: `psfmap.blind.network.PSFRegressor` (spectrum-aware ResNet, width "
        f"{network['width']}, blocks {network['blocks']}, {speed['parameters']:,} parameters), "
        f"input patches {data['patch_size']}² px, outputs {network['n_params']} parameters + "
        "validity.",
        "",
        "## Training",
        "",
        f"- data mix (sampling weights): {data['mix']}; explicit invalid ({kinds}) "
        f"fraction {data['invalid_fraction']}",
        f"- training parameters: {_drawn_over(data_config)}",
        f"- [micr] sources: {micr_sources(data)}",
        *([f"- [proc] sources: {data_config.proc_images} procedural fluorescence-like scenes "
           "(`psfmap.simulate.scenes`: nuclei with textured interiors, membranes, filaments, "
           "puncta; rendered 4× finer and binned, so sharp by construction), seeds "
           f"{PROC_SEEDS['train']} + i; the [proc] test scenes come from seeds "
           f"{PROC_SEEDS['test']} + i and are never used in training"]
          if data["mix"].get("proc") else []),
        f"- noise: peak photons {_fmt(data['photons'])} (log-uniform), QE {_fmt(data['qe'])}, "
        f"read noise {_fmt(data['read_noise'])} e⁻, background {_fmt(data['background'])} of "
        f"the peak, offset {_fmt(data['offset'])}",
        f"- validity a0 = 1 when the object's Laplacian energy ≥ {data['detail_snr']:g} "
        f"σ_noise and the blurred signal energy ≥ {data['signal_snr']:g} σ_noise",
        f"- {config['steps']} Adam steps of {config['batch_size']} "
        f"(lr {config['learning_rate']:g}, warm-up + cosine), sample pool "
        f"{config['pool_size']} refreshed by {config['refresh']} "
        f"per step, 8-fold flip/rotation augmentation, seed {config['seed']}",
        f"- wall time {minutes:.1f} min on {metrics['machine']}, torch {metrics['torch']}"
        + (f" (a `--minutes` run: schedule {schedule})" if schedule else ""),
        "- best validation R² (held-out seed, training material"
        + (", widened parameter range: not comparable with the test R²"
           if data_config.param_margin else "")
        + f") {best['r2_mean']:.3f} at "
        f"step {best['step']}, validity accuracy {best['validity_accuracy']:.3f}; last "
        f"validations {last}",
        "",
        "Reproduce (needs `../shared/data`; the shipped config, steps, schedule and seed are "
        "the defaults):",
        "",
        "```",
        f"psfmap train --model {name} -o {name}.pt",
        "```",
        "",
        f"which replays the config stored in `{name}.json`. Runs on another machine or thread "
        "count may differ in the last bits.",
        "",
        "## Held-out test (Table III analogue)",
        "",
        "R² (eq. 15, mean over parameters; wrapped residual for `axis`) on the truly valid "
        "patches of the test split (other scikit-image pictures, held-out image regions, other "
        "synthetic seeds, procedural scenes from a seed range disjoint from the training one): "
        f"every figure is out of sample. `{eval_command}`.",
        "",
        "| data | valid patches | R² (valid) | R² per parameter | R² (valid and judged valid) "
        "| validity accuracy |",
        "|---|---|---|---|---|---|",
    ]
    shown = [t for t in DATA_TYPES if t in table]
    for source in shown:
        row = table[source]
        per = ", ".join(f"{v:.3f}" for v in row["r2_per_param"])
        lines.append(f"| [{source}] | {row['n_valid']}/{row['n']} | {row['r2_valid']:.3f} | "
                     f"{per} | {row['r2_valid_and_judged_valid']:.3f} | "
                     f"{row['validity_accuracy']:.3f} |")
    if previous is not None:
        before = previous["table_iii"]
        values = " / ".join(f"{before[t]['r2_valid']:.3f}" if t in before else "not measured"
                            for t in shown)
        lines += ["", f"The previously shipped model, on the same test: {values} "
                  f"({', '.join(f'[{t}]' for t in shown)}); {previous['note']}."]
    brightness = _brightness(evaluation, previous)
    if brightness:
        lines += ["", brightness]
    lines += [
        "",
        f"Explicit {kinds} patches judged valid: "
        f"{table['empty']['judged_valid_fraction']:.3f}.",
        f"Inference: 169 patches in {speed['seconds_169'] * 1000:.0f} ms "
        f"({speed['ratio_to_reference']:.3f}× the plain 0.7 M-parameter ResNet of issue 5 §0, "
        f"same process; {evaluation.get('machine', 'machine not recorded')}).",
    ]
    lines += uncertainty_section(checkpoint)
    lines += [
        "",
        "## Limitations",
        "",
    ]
    scope, target = TARGETS[name]
    scored = [table[s]["r2_valid"] for s in (("micr",) if scope == "micr" else DATA_TYPES[:4])]
    verdict = "met" if min(scored) >= target else "**not met**"
    where = "on [micr]" if scope == "micr" else "on every data type"
    lines.append(f"- Issue target R² ≥ {target} ({where}): {verdict} (lowest "
                 f"{min(scored):.3f}). " + _trend(history))
    if "proc" in table:
        proc, goal = table["proc"]["r2_valid"], PROC_TARGETS[name]
        lines.append(f"- Issue 23 target on held-out sharp scenes, R² ≥ {goal} on [proc]: "
                     + ("met" if proc >= goal else "**not met**") + f" ({proc:.3f}).")
    lines.append("- One 64² patch cannot always separate a smooth object from a blurred one; "
                 "the validity output flags missing texture and too little signal, not that "
                 "ambiguity. [nat] pictures (smooth regions, photographic blur, JPEG) are the "
                 "hardest material and the least like fluorescence.")
    lines.append("- [micr] material is 7 real planes (the bundled projection and 6 Airyscan "
                 "planes); test regions are other rows of the same planes, so [micr] measures "
                 "generalisation to new regions and blurs, less to new specimens.")
    if name in MODEL_NOTES:
        lines.append(f"- {MODEL_NOTES[name]}")
    return "\n".join(lines) + "\n"


def uncertainty_section(checkpoint: dict) -> list[str]:
    """Lines on the uncertainty head, from the checkpoint's ``metrics["uncertainty"]``."""
    fit = checkpoint.get("metrics", {}).get("uncertainty")
    if not fit:
        return []
    rows = " / ".join(f"{q['rms_error']:.3f} vs {q['rms_sigma']:.3f}"
                      for q in fit["calibration"])
    return [
        "",
        "## Uncertainty head",
        "",
        f"`predict(..., return_std=True)` gives the predicted standard deviation of each "
        f"parameter's error. The head was fitted on the frozen network "
        f"(`psfmap.training.loop.fit_uncertainty`, {fit['steps']} steps of "
        f"{fit['batch_size']}, Gaussian negative log-likelihood {fit['nll_first']:.2f} → "
        f"{fit['nll_last']:.2f}; `uncertainty_steps` in the config, so `psfmap train` "
        f"replays it). On {UNCERTAINTY_HELD_OUT:,} held-out training-split samples, RMS error "
        f"vs RMS predicted σ "
        f"(normalised units) in the four quartiles of the predicted σ: {rows}.",
    ]


def _brightness(evaluation: dict, previous: dict | None) -> str:
    """R² on the same patches rendered ever brighter (``eval_regression.poisson_sweep``)."""
    def same_patches(entry: dict) -> dict:
        rows = entry.get("robustness", {}).get("poisson", [])
        return {row["value"]: row["r2_same_patches"] for row in rows
                if "r2_same_patches" in row}

    now = same_patches(evaluation)
    if not now:
        return ""
    levels = sorted(now)
    text = ("Brightness (Poisson noise only, the same patches rendered at "
            + " / ".join(f"{v:g}" for v in levels) + " peak photons, all data types): R² "
            + " / ".join(f"{now[v]:.3f}" for v in levels))
    before = same_patches(previous) if previous else {}
    if all(v in before for v in levels):
        text += "; previously shipped model " + " / ".join(f"{before[v]:.3f}" for v in levels)
    return text + "."


def _drawn_over(data: DataConfig, why: bool = True) -> str:
    """How the training parameters were drawn (``why``: with the reason for a margin)."""
    margin = data.param_margin
    text = "uniform over the family range"
    if margin:
        text += f" widened by {margin:.0%} of its span at each end"
        if why:
            text += (" (so that estimates near the ends are not pulled towards the middle; the "
                     "test split samples the family range)")
    if data.blend_fraction:
        text += (f"; in {data.blend_fraction:.0%} of the samples two PSFs blended along a linear "
                 "ramp across the patch, labelled with the parameters mixed by the mean weight")
        if why:
            text += (" (a window of a space-variant image sees a changing blur; the test split "
                     "does not blend)")
    return text


def _trend(history: list[dict]) -> str:
    """How the validation R² moved over the last validations of the run."""
    if len(history) < 5:
        return ""
    change = history[-1]["r2_mean"] - history[-5]["r2_mean"]
    steps = history[-1]["step"] - history[-5]["step"]
    return (f"The validation R² moved by {change:+.3f} over the last {steps} steps, where the "
            "cosine schedule brings the learning rate to 0, so this alone does not say "
            "whether a longer run would help; `benchmarks/RESULTS.md` compares runs of "
            "different lengths.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evaluation", help="JSON written by eval_regression.py --json")
    parser.add_argument("--command", default="python benchmarks/eval_regression.py",
                        help="the evaluation command as it was run (quoted in the cards)")
    parser.add_argument("--previous", default=None,
                        help="eval_regression.py JSON of the previously shipped weights, in the "
                             "folder of their <name>.json checkpoint configs")
    args = parser.parse_args(argv)
    evaluation = json.loads(Path(args.evaluation).read_text())
    previous = json.loads(Path(args.previous).read_text()) if args.previous else {}
    for name in FAMILY_TEXT:
        if name not in evaluation:
            continue
        checkpoint = json.loads((PRETRAINED / f"{name}.json").read_text())
        entry = {**evaluation[name], "machine": evaluation.get("machine")}
        before = None
        if name in previous:
            old = json.loads((Path(args.previous).parent / f"{name}.json").read_text())
            old_data = old["config"]["data"]
            # read from the dict: configs older than micr_exclude used every shared file
            excluded = old_data.get("micr_exclude")
            drawn = _drawn_over(DataConfig.from_dict(old_data), why=False)
            before = {**previous[name], "note": (
                f"{old['config']['steps']} steps, [micr] training material "
                + ("without " + ", ".join(excluded) if excluded else "with every shared file")
                + f", parameters {drawn}, peak photons {_fmt(old_data['photons'])}")}
        (PRETRAINED / f"{name}.md").write_text(card(name, checkpoint, entry, args.command,
                                                    before))
        print(f"wrote {PRETRAINED / f'{name}.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
