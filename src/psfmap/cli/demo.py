"""``psfmap demo``: the bundled real sample under a simulated spatially-variant blur.

Steps (small functions, so later stages can be appended): load the bundled sample, simulate a
space-variant blur with camera noise, write the images, the true PSF map and a figure, print a
summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from psfmap.cli import UsageError, command_parser
from psfmap.cli._common import summary

EXAMPLE = "psfmap demo -o demo-output"
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


def add_parser(subparsers):
    parser = command_parser(
        subparsers,
        "demo",
        "Run psfmap on its bundled real sample: simulated space-variant blur, true PSF map, "
        "figure.",
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
    output.mkdir(exist_ok=True)
    return output


def load_sample(state: DemoState) -> DemoState:
    """The bundled confocal neuron (float32, [0, 1])."""
    from psfmap.simulate import bundled_sample

    state.sharp = bundled_sample("neuron").astype(np.float32)
    height, width = state.sharp.shape
    state.lines.append(f"sample: bundled confocal neuron, {height}x{width} px")
    return state


def simulate_blur(state: DemoState, seed: int = 0) -> DemoState:
    """Space-variant blur (tilted slide: defocus and astigmatism grow across x) and noise."""
    from psfmap.metrics import snr, ssim
    from psfmap.simulate import simulate

    settings = {**DEMO_SETTINGS, "seed": seed}
    state.simulation = simulate(state.sharp, **settings)
    blurred = state.simulation.blurred
    psf_map = state.simulation.psf_map
    ranges = ", ".join(
        f"{name} {psf_map.params[..., k].min():.2f}..{psf_map.params[..., k].max():.2f}"
        for k, name in enumerate(psf_map.names)
    )
    state.lines.append(
        f"blur: {settings['model']} on a {settings['grid'][0]}x{settings['grid'][1]} "
        f"{settings['field']} field ({ranges}), {settings['photons']:g} photons, read noise "
        f"{settings['read_noise']:g} e-"
    )
    state.lines.append(
        f"blurred vs sharp: SNR {snr(state.sharp, blurred):.2f} dB, "
        f"SSIM {ssim(state.sharp, blurred, data_range=1.0):.3f}"
    )
    return state


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


def run(args) -> int:
    state = DemoState(output=prepare_output(args.output))
    load_sample(state)
    simulate_blur(state, seed=args.seed)
    write_results(state)
    state.lines.append("wrote " + ", ".join(str(p) for p in state.files.values()))
    for line in state.lines:
        summary(args, line)
    return 0
