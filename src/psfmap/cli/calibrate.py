"""``psfmap calibrate``: bead images -> operator family file (+ optional figure)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from psfmap.cli import UsageError, command_parser
from psfmap.cli._common import check_number, check_outputs, progress_bar, summary, warn_saturated

EXAMPLE = (
    "psfmap calibrate beads_zstack.tif --slices 26:37 --psf-size 31 -o family.psfmap "
    "--figure calibration.png"
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers,
        "calibrate",
        "Learn a low-dimensional family of blur operators from bead images "
        "(each 2-D image, or each slice of a z-stack, is one condition).",
        EXAMPLE,
    )
    parser.add_argument("beads", nargs="+", metavar="BEADS", help="bead images (TIFF, PNG...)")
    parser.add_argument("-o", "--output", required=True, help="operator family file to write")
    parser.add_argument("--figure", help="calibration figure to write (PNG, PDF, SVG)")
    parser.add_argument(
        "--slices", help="slices a:b (half-open, Python-style) of every z-stack to use"
    )
    parser.add_argument("--psf-size", type=int, help="odd side of the PSF patches in px")
    parser.add_argument("--psf-sigma", type=float, help="PSF scale in px (estimated if omitted)")
    parser.add_argument("--eigen", type=int, help="number I of eigen-PSFs (default: spectrum)")
    parser.add_argument("--spatial", type=int, help="number J of spatial maps (default: spectrum)")
    parser.add_argument("--smoothing", type=float,
                        help="thin-plate-spline λ (default: leave-one-out cross-validation)")
    parser.add_argument(
        "--threshold", type=float, default=6.0, help="detection threshold k in median + k·MAD"
    )
    parser.add_argument("--min-beads", type=int, default=8, help="clean beads needed per image")
    parser.add_argument("--pixel-size", type=float, help="pixel size in µm (default: file)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the randomized SVD")
    return parser


def parse_slices(text: str | None) -> slice | None:
    """'a:b' -> slice(a, b); None -> None."""
    if text is None:
        return None
    parts = text.split(":")
    if len(parts) != 2:
        raise UsageError(f"--slices must look like a:b, got {text!r}")
    try:
        start = int(parts[0]) if parts[0] else None
        stop = int(parts[1]) if parts[1] else None
    except ValueError:
        raise UsageError(f"--slices must look like a:b with integers, got {text!r}") from None
    return slice(start, stop)


def read_image(path: str):
    """Read an image with psfmap.io (falls back to tifffile when psfmap.io is not built)."""
    try:
        from psfmap.io import read_image as io_read
    except ImportError:  # pragma: no cover - psfmap.io is part of the package
        import tifffile

        return tifffile.imread(path), {}
    return io_read(path)


def load_conditions(
    paths, slices: slice | None, args=None
) -> tuple[list[np.ndarray], list[str], dict]:
    """Every 2-D image, or every selected slice of a 3-D stack, becomes one condition (with
    ``args``, a saturated image is warned about)."""
    images: list[np.ndarray] = []
    names: list[str] = []
    metadata: dict = {}
    for path in paths:
        if not Path(path).is_file():
            raise ValueError(f"bead image {path!r} does not exist")
        array, meta = read_image(path)
        array = np.asarray(array)
        if args is not None:
            warn_saturated(args, array, Path(path).name)
        if not metadata and meta:
            metadata = dict(meta)
        if array.ndim == 2:
            images.append(array)
            names.append(Path(path).name)
        elif array.ndim == 3:
            indices = range(array.shape[0])[slices] if slices is not None else range(len(array))
            if len(indices) == 0:
                raise ValueError(
                    f"--slices selects no slice of {path!r}, which has {array.shape[0]} slices"
                )
            for index in indices:
                images.append(array[index])
                names.append(f"{Path(path).name}[{index}]")
        else:
            raise ValueError(
                f"bead image {path!r} has shape {array.shape}; expected a 2-D image or a "
                "3-D z-stack (Z, Y, X)"
            )
    return images, names, metadata


def run(args) -> int:
    from psfmap.calibrate import calibrate
    from psfmap.calibrate.figures import plot_family

    check_outputs(args, args.beads, files=[args.output], figures=[args.figure])
    if args.psf_size is not None and (args.psf_size < 5 or args.psf_size % 2 == 0):
        raise UsageError(f"--psf-size must be an odd integer >= 5, got {args.psf_size}")
    if args.pixel_size is not None and not 0 < args.pixel_size < float("inf"):
        raise UsageError(f"--pixel-size must be a length in µm > 0, got {args.pixel_size}")
    if args.min_beads < 1:
        raise UsageError(f"--min-beads must be >= 1, got {args.min_beads}")
    check_number(args.psf_sigma, "--psf-sigma", minimum=0, strict=True)
    check_number(args.eigen, "--eigen", minimum=1)
    check_number(args.spatial, "--spatial", minimum=1)
    check_number(args.smoothing, "--smoothing", minimum=0)
    check_number(args.threshold, "--threshold", minimum=0, strict=True)
    check_number(args.seed, "--seed", minimum=0)
    images, names, file_meta = load_conditions(args.beads, parse_slices(args.slices), args)
    pixel_size = args.pixel_size if args.pixel_size is not None else file_meta.get("pixel_size")
    metadata = {"conditions": names, "sources": [str(p) for p in args.beads]}
    if pixel_size:
        metadata["pixel_size"] = float(np.atleast_1d(pixel_size)[-1])
    with progress_bar(args, len(images), "calibrating") as bar:
        family = calibrate(
            images,
            psf_size=args.psf_size,
            psf_sigma=args.psf_sigma,
            n_eigen=args.eigen,
            spatial_rank=args.spatial,
            smoothing=args.smoothing,
            k=args.threshold,
            min_beads=args.min_beads,
            metadata=metadata,
            seed=args.seed,
            progress=bar.update,
        )
    family.save(args.output)
    if args.figure:
        plot_family(family, args.figure)
    beads = family.metadata["calibration"]["beads_per_image"]
    summary(
        args,
        f"calibrated {family.n_conditions} condition(s) from {sum(beads)} beads: "
        f"I={family.n_eigen_psfs} eigen-PSFs of {family.kernel_shape[0]} px, "
        f"J={family.n_spatial} spatial maps -> {args.output}",
    )
    return 0
