"""Write the model card ``src/psfmap/pretrained/deepblur-NAME.md`` from the model's JSON and the
held-out evaluation of ``benchmarks/eval_deepblur.py --out results.json``.

Run: ``python benchmarks/deepblur_model_cards.py --model zernike7 --results zernike7.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PRETRAINED = Path(__file__).resolve().parents[1] / "src" / "psfmap" / "pretrained"

FAMILY_TEXT = {
    "zernike7": "`psfmap.psf.model(\"zernike7\")`: Noll 4–10 (defocus, astigmatisms, comas, "
                "trefoils), each in [−0.15, 0.15] RMS waves, NA 0.8, λ 0.55 µm, pixel 0.2 µm, "
                "33 × 33 PSF; `A(γ)` the space-invariant `Convolution`; admissible set: the box.",
    "beads12": "the calibrated `OperatorFamily` `deepblur-beads12.family.psfmap` (I = 4 "
               "eigen-PSFs × J = 3 spatial maps, P = 12), calibrated by `psfmap.calibrate` from "
               "9 synthetic bead images of a Zernike microscope whose focus tilts and "
               "astigmatism varies across the field (`psfmap.training.deepblur "
               "--part family`); `A(γ)` the space-variant `ProductConvolution`, the field of "
               "view mapped onto the image; admissible set: the hull of the 9 calibrated Γ_k.",
}


def _row(label: str, block: dict) -> str:
    ssim = block["ssim"]
    ident = block["identification_snr_db"]
    blind = ssim.get("blind_pipeline", float("nan"))
    return (f"| {label} | {block['n']} | {ident['mean']:.1f} / {ident['median']:.1f} "
            f"({100 * ident['fraction_ge_20db']:.0f} %) | {ssim['blurred']:.3f} | "
            f"{ssim['rl_tv_true']:.3f} ({block['rl_tv_best_iterations']} it.) | "
            f"{ssim['net_true']:.3f} | {ssim['net_estimated']:.3f} | {blind:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--command", default="python benchmarks/eval_deepblur.py --threads 1")
    args = parser.parse_args()
    meta = json.loads((PRETRAINED / f"deepblur-{args.model}.json").read_text())
    results = json.loads(args.results.read_text())
    training = meta["training"]
    log = meta["training_log"]
    speed = results.get("speed_512", {})
    lines = [
        f"# Deep-Blur model card: `{args.model}`",
        "",
        f"**Family.** {FAMILY_TEXT.get(args.model, meta['family'])}",
        "",
        "**Networks.** Identification: ResNet, widths "
        f"{meta['identifier']['widths']}, {meta['identifier']['blocks']} block(s) per stage, "
        f"adaptive average pooling to {meta['identifier']['pool']}², linear head to "
        f"P = {meta['identifier']['n_params']} (~0.3 M parameters; Deep-Blur uses ResNet-18). "
        f"Deblurring: FISTA unrolled for {meta['deblurrer']['iterations']} iterations, data "
        "term with the family operator's `forward`/`adjoint` on the domain extended by the PSF "
        f"half-width, proximal step a shared 4-layer residual CNN of "
        f"{meta['deblurrer']['channels']} channels (~5 k parameters), learned step sizes.",
        "",
        "**Training material.** Procedural scenes (`psfmap.simulate.scenes`, rendered 4× "
        f"finer and binned: sharp by construction), a pool of {training['pool_scenes']} scenes "
        f"of {training['size'] + 2 * training['pad']}² px (generator seed "
        f"{training['scene_seed']}), random flips/rotations; operators from a pool of "
        f"{training['pool_operators']} γ spread over the admissible set by MaxiSumMin (seed "
        f"{training['operator_seed']}); scenes blurred by `A(γ)` extended by "
        f"{training['pad']} px and cropped to {training['size']}² px, Poisson noise at "
        f"{training['photons']:g} photons per unit. No natural or real images.",
        "",
        f"**Training.** Identification: {log['identify']['steps_done']} steps of "
        f"{training['identify']['batch']} images, Adam, lr {training['identify']['lr']} with "
        "cosine decay, MSE on normalised γ (for twins, the smaller of the two errors), "
        f"{log['identify']['seconds'] / 60:.0f} min. Deblurring: "
        f"{log['deblur']['steps_done']} steps of {training['deblur']['batch']} images, MSE to "
        f"the sharp scene with the true operator, {log['deblur']['seconds'] / 60:.0f} min. "
        "Both on a shared 2-core CPU, 1 torch thread per process, the two trainings and two "
        "of the other model running at once beside other jobs (load 6–14): the times are "
        "wall times under that contention. Reproduce: `python -m psfmap.training.deepblur "
        f"--name {args.model} --part identify|deblur|assemble` (the config is in "
        f"`deepblur-{args.model}.json`).",
        "",
        "**Held-out evaluation** (`benchmarks/eval_deepblur.py`; scenes of generator seed "
        "2000 and crops of the bundled confocal neuron image, none used in training; γ drawn "
        f"uniformly / with Dirichlet weights, seed 999; {training['size']}² px, Poisson "
        "1000 photons per unit; machine: "
        f"{results['machine']}).",
        "",
        "| set | n | PSF-field SNR dB mean / median (≥ 20 dB) | SSIM blurred | RL-TV true "
        "operator (best it.) | net, true γ | net, γ̂ | blind `psfmap.deblur` |",
        "|---|---|---|---|---|---|---|---|",
        _row("procedural scenes", results["held_out_scenes"]),
        _row("neuron crops", results["held_out_neuron_crops"]),
        "",
    ]
    if speed:
        lines += [f"**Speed** (512², one process): identify + deblur {speed['deepblur']:.2f} s "
                  f"(identify {speed['identify']:.2f} s) against RL-TV 20 iterations with the "
                  f"same operator {speed['rl_tv_20']:.2f} s.", ""]
    lines += ["**Limits.** Trained at 64² px for the CPU: images must be ≥ 64 px on a side. "
              "The family is fixed (its optics, its PSF window); another microscope needs "
              "its own family and training.", ""]
    (PRETRAINED / f"deepblur-{args.model}.md").write_text("\n".join(lines))
    print(f"wrote deepblur-{args.model}.md")


if __name__ == "__main__":
    main()
