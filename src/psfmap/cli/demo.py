"""``psfmap demo``: blind deblurring on material no network was trained on.

Two parts, each of small functions:

1. **scored**: a procedural fluorescence-like scene, sharp by construction (rendered 4× finer
   and binned, :func:`psfmap.simulate.scene`, with a seed that no training run draws), under
   a simulated space-variant blur with camera noise; the blind pipeline (the shipped zernike3
   CNN's PSF map, then RL-TV) is scored against the truth (SNR, SSIM, map errors);
2. **real**: the bundled real blurred fluorescence measurement (``bundled_sample
   ("measurement")``, apsk14/rdmpy, MIT) — no sharp version exists, and no network was trained
   on it — deblurred blindly; the estimated PSF map is drawn over it.

Every image, map and figure is written to the output folder; a summary is printed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from psfmap.cli import UsageError, command_parser
from psfmap.cli._common import check_number, check_writable, summary
from psfmap.cli.estimate import parameter_ranges

EXAMPLE = "psfmap demo -o demo-output"
# the procedural scene's seed: no training run draws it (training seeds are small integers)
DEMO_SCENE_SEED = 20261207
DEMO_SETTINGS = {"model": "zernike3", "field": "tilt", "grid": (4, 4), "photons": 1000.0,
                 "read_noise": 2.0, "seed": 0}


@dataclass
class DemoState:
    """What the demo has produced so far (later stages add to it)."""

    output: Path
    sharp: np.ndarray | None = None
    simulation: Any = None
    files: dict[str, Path] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    blind: Any = None


def add_parser(subparsers):
    parser = command_parser(
        subparsers,
        "demo",
        "Run psfmap's blind deblurring on material no network was trained on: a procedural "
        "scene under a simulated space-variant blur (scored against the truth) and the bundled "
        "real blurred measurement; PSF maps, restored images, figures.",
        EXAMPLE,
    )
    parser.add_argument("-o", "--output", default="demo-output",
                        help="folder for the results (created; default demo-output)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def prepare_output(path: str | Path) -> Path:
    """Create the output folder (its parent must exist)."""
    output = Path(path)
    if output.exists() and not output.is_dir():
        raise UsageError(f"output {str(output)!r} exists and is not a folder")
    if not output.parent.is_dir():
        raise UsageError(f"folder {str(output.parent)!r} does not exist")
    try:
        output.mkdir(exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the output folder {str(output)!r} "
                         f"({error.strerror or error})") from None
    check_writable(output / "demo.tif")  # a read-only folder: refused before any work
    return output


def load_sample(state: DemoState) -> DemoState:
    """A 256 × 256 procedural scene, sharp by construction, never used in training."""
    import torch

    from psfmap.simulate import scene

    generator = torch.Generator().manual_seed(DEMO_SCENE_SEED)
    state.sharp = scene((256, 256), generator=generator).numpy().astype(np.float32)
    height, width = state.sharp.shape
    state.lines.append(f"scored sample: procedural scene (seed {DEMO_SCENE_SEED}, sharp by "
                       f"construction, never used in training), {height}x{width} px")
    return state


def simulate_blur(state: DemoState, seed: int = 0) -> DemoState:
    """Space-variant blur (tilted slide: defocus and astigmatism grow across x) and noise."""
    from psfmap.simulate import simulate

    settings = {**DEMO_SETTINGS, "seed": seed}
    state.simulation = simulate(state.sharp, **settings)
    blurred = state.simulation.blurred
    psf_map = state.simulation.psf_map
    ranges = parameter_ranges(psf_map.params, psf_map.family, ".2f")
    state.lines.append(
        f"blur: {settings['model']} on a {settings['grid'][0]}x{settings['grid'][1]} "
        f"{settings['field']} field ({ranges}), {settings['photons']:g} photons, read noise "
        f"{settings['read_noise']:g} e-"
    )
    state.lines.append(_quality("blurred", state.sharp, blurred))
    return state


def _quality(label: str, sharp: np.ndarray, image: np.ndarray) -> str:
    """One summary line: SNR and SSIM of ``image`` against the sharp sample."""
    from psfmap.metrics import snr, ssim

    return (f"{label} vs sharp: SNR {snr(sharp, image):.2f} dB, "
            f"SSIM {ssim(sharp, image, data_range=1.0):.3f}")


def write_results(state: DemoState) -> DemoState:
    """Sharp and blurred TIFFs, the true PSF map file, the PSF-map figure."""
    from psfmap.figures import plot_psf_map
    from psfmap.io import write_image

    output = state.output
    simulation = state.simulation
    state.files["sharp"] = write_image(output / "sharp.tif", state.sharp,
                                       metadata={"psfmap": "demo sharp sample"})
    state.files["blurred"] = write_image(output / "blurred.tif", simulation.blurred,
                                         metadata={"psfmap": "demo", **simulation.settings})
    state.files["truth"] = simulation.psf_map.save(output / "truth.psfmap")
    figure = plot_psf_map(simulation.blurred, simulation.psf_map, output / "psf_map.png",
                          title="true local PSFs over the blurred image")
    import matplotlib.pyplot as plt

    plt.close(figure)
    state.files["figure"] = output / "psf_map.png"
    return state


def blind_deblur(state: DemoState, model: str = "zernike3") -> DemoState:
    """Blind pipeline (issue 5): CNN PSF map of the blurred image, then RL-TV with it."""
    import time

    from psfmap.blind.estimator import pretrained_names
    from psfmap.blind.psf_maps import resample_params
    from psfmap.blind.verbs import DEFAULT_ITERATIONS, DEFAULT_TV, deblur

    if model not in pretrained_names():
        state.lines.append(f"blind step skipped: no shipped {model} weights in this install")
        return state
    blurred = np.asarray(state.simulation.blurred, dtype=np.float32).clip(0, None)
    start = time.perf_counter()
    result = deblur(blurred, model, return_map=True)
    elapsed = time.perf_counter() - start
    estimated = result.psf_map
    truth = state.simulation.psf_map
    reference = resample_params(truth, estimated.grid)
    difference = np.abs(estimated.params - reference)
    for k, name in enumerate(estimated.names):
        if name == "axis":  # astigmatism axis: period π
            difference[..., k] = np.minimum(difference[..., k], np.pi - difference[..., k])
    errors = ", ".join(
        f"{name} {np.mean(difference[..., k]):.3f}" for k, name in enumerate(estimated.names)
    )
    state.blind = result
    state.lines.append(
        f"blind: {model} CNN map {estimated.grid[0]}x{estimated.grid[1]} "
        f"({int((estimated.validity >= 0.5).sum())} valid cells), mean |error| vs truth: "
        f"{errors}; RL-TV {DEFAULT_ITERATIONS} iterations λ={DEFAULT_TV:g}, {elapsed:.1f} s"
    )
    if estimated.std is not None:  # the network's own error estimate, next to the real one
        state.lines.append("CNN's predicted vs actual RMS error per cell: " + ", ".join(
            f"{name} {np.sqrt(np.mean(estimated.std[..., k] ** 2)):.3f} vs "
            f"{np.sqrt(np.mean(difference[..., k] ** 2)):.3f}"
            for k, name in enumerate(estimated.names)))
    state.lines.append(_quality("restored", state.sharp, result.restored))
    return state


def write_blind_results(state: DemoState) -> DemoState:
    """Restored TIFF, the estimated PSF map file, a figure of true vs estimated maps."""
    from psfmap.blind.psf_maps import resample_params
    from psfmap.figures import save_figure
    from psfmap.io import write_image

    output = state.output
    result = state.blind
    if result is None:
        return state
    state.files["restored"] = write_image(
        output / "restored.tif", result.restored,
        metadata={"psfmap": "demo blind deblur", "model": result.psf_map.family.name},
    )
    state.files["estimated"] = result.psf_map.save(output / "estimated.psfmap")
    figure = plot_map_comparison(state.simulation.psf_map, result.psf_map, resample_params)
    state.files["comparison"] = save_figure(figure, output / "psf_map_comparison.png")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return state


def plot_map_comparison(truth, estimated, resample_params):
    """Per parameter: true map (at the estimated cells) | estimated map | validity."""
    from psfmap.figures import pyplot

    plt = pyplot()
    reference = resample_params(truth, estimated.grid)
    names = estimated.names
    figure, axes = plt.subplots(2, len(names) + 1, figsize=(3.2 * (len(names) + 1), 6.0),
                                squeeze=False)
    for k, name in enumerate(names):
        low, high = estimated.family.low[k], estimated.family.high[k]
        for row, (values, label) in enumerate(((reference, "true"),
                                               (estimated.params, "estimated"))):
            cmap = "twilight" if name == "axis" else "viridis"  # axis: 0 ≡ π
            image = axes[row, k].imshow(values[..., k], vmin=low, vmax=high, cmap=cmap)
            axes[row, k].set_title(f"{label} {name}")
            axes[row, k].set_xticks([])
            axes[row, k].set_yticks([])
            figure.colorbar(image, ax=axes[row, k], fraction=0.046,
                            label=estimated.family.units[k])
    image = axes[1, -1].imshow(estimated.validity, vmin=0, vmax=1, cmap="gray")
    axes[1, -1].set_title("CNN validity")
    figure.colorbar(image, ax=axes[1, -1], fraction=0.046)
    for ax in axes[:, -1]:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, -1].axis("off")
    figure.suptitle(f"{estimated.family.name} PSF map: truth vs blind CNN estimate")
    figure.tight_layout()
    return figure


def real_sample(state: DemoState, model: str = "zernike3") -> DemoState:
    """The bundled real blurred measurement, deblurred blindly: restored image, estimated map,
    and the map's local PSFs drawn over the measurement."""
    import warnings

    import matplotlib.pyplot as plt

    from psfmap.blind.estimator import pretrained_names
    from psfmap.blind.verbs import deblur
    from psfmap.figures import plot_psf_map
    from psfmap.io import write_image
    from psfmap.simulate import bundled_sample

    if model not in pretrained_names():
        state.lines.append(f"real step skipped: no shipped {model} weights in this install")
        return state
    measured = bundled_sample("measurement").astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = deblur(measured, model, return_map=True)
    for warning in caught:  # the map's own doubts belong in the summary
        state.lines.append(f"real sample warning: {warning.message}")
    estimated = result.psf_map
    output = state.output
    state.files["measurement"] = write_image(output / "real_measurement.tif", measured,
                                             metadata={"psfmap": "demo real measurement"})
    state.files["real_restored"] = write_image(
        output / "real_restored.tif", result.restored,
        metadata={"psfmap": "demo blind deblur of the real measurement", "model": model})
    state.files["real_map"] = estimated.save(output / "real_estimated.psfmap")
    figure = plot_psf_map(measured, estimated, output / "real_psf_map.png",
                          title="blind CNN PSF map over the real measurement", parameters=True)
    plt.close(figure)
    state.files["real_figure"] = output / "real_psf_map.png"
    ranges = parameter_ranges(estimated.params, estimated.family, ".2f")
    state.lines.append(
        f"real sample: bundled blurred fluorescence measurement (apsk14/rdmpy, never used in "
        f"training), 512x512 px; {model} map {estimated.grid[0]}x{estimated.grid[1]} "
        f"({ranges}); no sharp truth exists, see real_psf_map.png and real_restored.tif")
    return state


def run(args) -> int:
    check_number(args.seed, "--seed", minimum=0)
    state = DemoState(output=prepare_output(args.output))
    load_sample(state)
    simulate_blur(state, seed=args.seed)
    write_results(state)
    blind_deblur(state)
    write_blind_results(state)
    real_sample(state)
    state.lines.append("wrote " + ", ".join(str(p) for p in state.files.values()))
    for line in state.lines:
        summary(args, line)
    return 0
