"""``psfmap estimate``: blind PSF map of an image, or one per frame of a stack (CNN on sliding
windows)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from psfmap.blind.verbs import DEFAULT_MEDIAN
from psfmap.cli import UsageError, command_parser
from psfmap.cli._common import (
    check_outputs,
    parse_pair,
    progress_bar,
    read_plane,
    summary,
)

EXAMPLE = "psfmap estimate cells.tif --model zernike3 -o map.psfmap --figure map.png"


def add_window_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by estimate, deblur and depth: model, plane, sliding window."""
    parser.add_argument(
        "--model", default=None,
        help="shipped PSF model: gaussian1, gaussian2, zernike1, zernike3 (default zernike3); "
        "with --weights, the model the file must hold",
    )
    parser.add_argument(
        "--weights", default=None, help="weights file from 'psfmap train' instead of --model"
    )
    parser.add_argument(
        "--plane", type=int, default=None,
        help="frame of a stack to use, its leading axes (Z, T, C...) counted in file order "
             "(estimate and deblur: default every frame)",
    )
    parser.add_argument(
        "--window", type=int, default=None,
        help="window side in px (default: the patch size, 64); a larger window averages its "
             "patches: more accurate, coarser map",
    )
    window = parser.add_mutually_exclusive_group()
    window.add_argument(
        "--stride", type=int, default=None, help="step between windows in px (default: window/2)"
    )
    window.add_argument("--grid", default=None, help="number of windows, e.g. 13x13")
    parser.add_argument(
        "--median", type=int, default=DEFAULT_MEDIAN,
        help=f"median filter side on the parameter grid (0: off; default {DEFAULT_MEDIAN})"
    )


def load_estimator(args):
    """The estimator named by --model, or loaded from --weights."""
    from psfmap.blind.estimator import PSFEstimator
    from psfmap.blind.verbs import DEFAULT_MODEL, get_estimator

    if args.weights is not None:
        return PSFEstimator.load(args.weights, model=args.model)
    return get_estimator(args.model or DEFAULT_MODEL)


def window_options(args) -> dict[str, Any]:
    """``window``, ``stride``, ``grid``, ``median`` of the sliding window, checked."""
    if args.median < 0:
        raise UsageError(f"--median must be >= 0, got {args.median}")
    for flag, value in (("--window", args.window), ("--stride", args.stride)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be a positive number of pixels, got {value}")
    grid = parse_pair(args.grid, "--grid") if args.grid else None
    if grid is not None and min(grid) < 1:
        raise UsageError(f"--grid must be at least 1x1, got {args.grid!r}")
    return {"window": args.window, "stride": args.stride, "grid": grid, "median": args.median}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers,
        "estimate",
        "Estimate the spatially-variant PSF map of an image blindly: a CNN regresses the PSF "
        "parameters on overlapping windows (Shajkofci & Liebling, IEEE TIP 2020).",
        EXAMPLE,
    )
    parser.add_argument(
        "image", metavar="IMAGE",
        help="blurred image (TIFF/PNG); a stack (..., H, W) gets one map per frame",
    )
    add_window_arguments(parser)
    add_map_output_arguments(parser, main_output=True)
    return parser


def add_map_output_arguments(parser: argparse.ArgumentParser, *, main_output: bool = False
                             ) -> None:
    """--save-map and --figure (estimate and deblur), written by :func:`write_outputs`; where
    the map is the command's output (estimate), ``-o/--output`` names it too, as the
    other commands' outputs."""
    flags = ("-o", "--output", "--save-map") if main_output else ("--save-map",)
    parser.add_argument(
        *flags, dest="save_map", default=None, metavar="MAP",
        help="PSF map file to write (.psfmap; a stack: the maps of all frames)",
    )
    parser.add_argument(
        "--figure", default=None,
        help="figure of the PSF map to write (.png: local PSFs over the image and each "
             "parameter's map; a stack: parameters frame by frame)",
    )


def write_outputs(args, image: np.ndarray, psf_map) -> list[str]:
    """Write --save-map and --figure (a list of maps for a stack); return the written paths."""
    written = []
    stack = isinstance(psf_map, list)
    if args.save_map is not None:
        if stack:
            from psfmap.operators.psf_map import save_psf_maps

            save_psf_maps(args.save_map, psf_map)
        else:
            psf_map.save(args.save_map)
        written.append(args.save_map)
    if args.figure is not None:
        from psfmap.figures import plot_psf_map, plot_psf_map_stack

        if stack:
            figure = plot_psf_map_stack(psf_map, args.figure)
        else:
            title = f"{psf_map.family.name} PSF map ({psf_map.grid[0]}x{psf_map.grid[1]})"
            # one map shared by the frames of a stack: drawn over their maximum projection
            background = image.reshape(-1, *image.shape[-2:]).max(axis=0)
            figure = plot_psf_map(background, psf_map, args.figure, title=title,
                                  parameters=True)
        import matplotlib.pyplot as plt

        plt.close(figure)
        written.append(args.figure)
    return written


def parameter_ranges(params: np.ndarray, family, spec: str = ".3g") -> str:
    """``"focus 0.13..0.35 waves RMS, ..."``: each parameter's range over ``params (..., N)``
    with its unit."""
    return ", ".join(
        f"{name} {params[..., k].min():{spec}}..{params[..., k].max():{spec}} {unit}"
        for k, (name, unit) in enumerate(zip(family.names, family.units, strict=True)))


def describe_map(psf_map) -> str:
    """One line on a map, or on the maps of a stack (ranges over all frames)."""
    maps = psf_map if isinstance(psf_map, list) else [psf_map]
    params = np.stack([m.params for m in maps])
    validity = np.stack([m.validity for m in maps])
    gy, gx = maps[0].grid
    units = maps[0].family.units
    ranges = parameter_ranges(params, maps[0].family)
    cells = f"{int((validity >= 0.5).sum())}/{validity.size} cells valid"
    if all(m.std is not None for m in maps) and (validity >= 0.5).any():
        # the network's own error estimate, median over the valid cells
        std = np.stack([m.std for m in maps])[validity >= 0.5]
        cells += ", predicted error " + ", ".join(
            f"{name} ±{np.median(std[:, k]):.2g} {units[k]}"
            for k, name in enumerate(maps[0].names))
    what = f"{gy}x{gx} {maps[0].family.name} map"
    if isinstance(psf_map, list):
        what = f"{len(maps)} {gy}x{gx} {maps[0].family.name} maps (one per frame)"
    return f"{what} ({ranges}; {cells})"


def label_maps(psf_map, source: str, pixel_size: float | None = None) -> None:
    """Record the source file, its pixel size (µm, when known) and the frame, for a stack,
    in each map's metadata."""
    label = {"source": source}
    if pixel_size is not None:
        label["pixel_size"] = float(pixel_size)
    if isinstance(psf_map, list):
        for index, one in enumerate(psf_map):
            one.metadata.update(label, frame=index)
    else:
        psf_map.metadata.update(label)


def run(args) -> int:
    from psfmap.blind.verbs import estimate

    outputs = [args.save_map, args.figure]
    if all(o is None for o in outputs):
        raise UsageError("nothing to write: give -o MAP (the PSF map, .psfmap) and/or --figure")
    check_outputs(args, [args.image, args.weights], files=[args.save_map],
                  figures=[args.figure])
    options = window_options(args)
    image, metadata = read_plane(args.image, args.plane, stack=True, args=args)
    estimator = load_estimator(args)
    start = time.perf_counter()
    frames = int(np.prod(image.shape[:-2]))
    with progress_bar(args, frames, "estimate") as bar:
        psf_map = estimate(image, estimator, **options, callback=lambda _: bar.update(1))
    label_maps(psf_map, Path(args.image).name, metadata.get("pixel_size"))
    elapsed = time.perf_counter() - start
    written = write_outputs(args, image, psf_map)
    summary(args, f"estimated {describe_map(psf_map)} in {elapsed:.1f} s -> "
                  f"{', '.join(written)}")
    return 0
