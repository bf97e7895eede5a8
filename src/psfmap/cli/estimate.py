"""``psfmap estimate``: blind PSF map of one image (CNN on sliding windows)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from psfmap.cli import UsageError, command_parser
from psfmap.cli._common import check_outputs, parse_pair, summary

EXAMPLE = "psfmap estimate cells.tif --model zernike3 --save-map map.psfmap --figure map.png"


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
    parser.add_argument("--plane", type=int, default=None, help="plane of a 3-D stack to use")
    parser.add_argument(
        "--window", type=int, default=None, help="window side in px (default: the patch size)"
    )
    window = parser.add_mutually_exclusive_group()
    window.add_argument(
        "--stride", type=int, default=None, help="step between windows in px (default: window/2)"
    )
    window.add_argument("--grid", default=None, help="number of windows, e.g. 13x13")
    parser.add_argument(
        "--median", type=int, default=3, help="median filter side on the parameter grid (0: off)"
    )


def load_estimator(args):
    """The estimator named by --model, or loaded from --weights."""
    from psfmap.identify.blind import DEFAULT_MODEL, get_estimator
    from psfmap.identify.cnn import PSFEstimator

    if args.weights is not None:
        return PSFEstimator.load(args.weights, model=args.model)
    return get_estimator(args.model or DEFAULT_MODEL)


def window_options(args) -> dict[str, Any]:
    if args.median < 0:
        raise UsageError(f"--median must be >= 0, got {args.median}")
    return {
        "window": args.window,
        "stride": args.stride,
        "grid": parse_pair(args.grid, "--grid") if args.grid else None,
        "median": args.median,
    }


def read_plane(path: str, plane: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a 2-D image (or one plane of a stack) as float32/float64."""
    from psfmap.io import read_image

    image, metadata = read_image(path)
    image = np.asarray(image)
    if image.ndim == 3 and plane is None and image.shape[0] == 1:
        image = image[0]
    elif image.ndim == 3:
        if plane is None:
            raise UsageError(
                f"{path!r} is a stack of {image.shape[0]} planes; choose one with --plane"
            )
        if not 0 <= plane < image.shape[0]:
            raise UsageError(f"--plane must be in [0, {image.shape[0] - 1}], got {plane}")
        image = image[plane]
    elif plane is not None:
        raise UsageError(f"--plane applies to a 3-D stack; {path!r} has shape {image.shape}")
    if image.ndim != 2:
        raise ValueError(f"{path!r} must be a 2-D image, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    return image, metadata


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers,
        "estimate",
        "Estimate the spatially-variant PSF map of an image blindly: a CNN regresses the PSF "
        "parameters on overlapping windows (Shajkofci & Liebling, IEEE TIP 2020).",
        EXAMPLE,
    )
    parser.add_argument("image", metavar="IMAGE", help="blurred image (TIFF/PNG, 2-D)")
    add_window_arguments(parser)
    parser.add_argument("--save-map", default=None, help="PSF map file to write (.psfmap)")
    parser.add_argument("--figure", default=None, help="figure of the PSF map to write (.png)")
    return parser


def write_outputs(args, image: np.ndarray, psf_map) -> list[str]:
    """Write --save-map and --figure; return the written paths."""
    written = []
    if args.save_map is not None:
        psf_map.save(args.save_map)
        written.append(args.save_map)
    if args.figure is not None:
        from psfmap.figures import plot_psf_map

        title = f"{psf_map.family.name} PSF map ({psf_map.grid[0]}x{psf_map.grid[1]})"
        figure = plot_psf_map(image, psf_map, args.figure, title=title)
        import matplotlib.pyplot as plt

        plt.close(figure)
        written.append(args.figure)
    return written


def describe_map(psf_map) -> str:
    gy, gx = psf_map.grid
    ranges = ", ".join(
        f"{name} {psf_map.params[..., k].min():.3g}..{psf_map.params[..., k].max():.3g}"
        for k, name in enumerate(psf_map.names)
    )
    valid = int((psf_map.validity >= 0.5).sum())
    return f"{gy}x{gx} {psf_map.family.name} map ({ranges}; {valid}/{gy * gx} cells valid)"


def run(args) -> int:
    from psfmap.identify.psf_map_estimation import estimate_psf_map

    outputs = [args.save_map, args.figure]
    if all(o is None for o in outputs):
        raise UsageError("nothing to write: give --save-map and/or --figure")
    check_outputs([args.image, args.weights], outputs)
    options = window_options(args)
    image, _ = read_plane(args.image, args.plane)
    estimator = load_estimator(args)
    start = time.perf_counter()
    psf_map = estimate_psf_map(estimator, image, **options)
    psf_map.metadata["source"] = Path(args.image).name
    elapsed = time.perf_counter() - start
    written = write_outputs(args, image, psf_map)
    summary(args, f"estimated a {describe_map(psf_map)} in {elapsed:.1f} s -> "
                  f"{', '.join(written)}")
    return 0
