"""``psfmap identify``: image with a few beads + operator family -> operator file."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from psfmap.cli import command_parser
from psfmap.cli._common import check_number, check_outputs, summary

EXAMPLE = "psfmap identify sample.tif --family family.psfmap -o operator.psfmap"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers,
        "identify",
        "Identify the blur operator of an image from the isolated beads in it, within a "
        "calibrated operator family (output feeds 'psfmap deconvolve --operator').",
        EXAMPLE,
    )
    parser.add_argument("image", metavar="IMAGE", help="image with a few isolated beads")
    parser.add_argument("--family", required=True, help="operator family from psfmap calibrate")
    parser.add_argument("-o", "--output", required=True, help="operator file to write")
    parser.add_argument("--plane", "--slice", dest="plane", type=int,
                        help="frame of a stack IMAGE to use, its leading axes counted in file "
                             "order (as in estimate, deblur and depth)")
    parser.add_argument(
        "--positions", help="text/CSV file of bead (row, col) positions (default: detect)"
    )
    parser.add_argument(
        "--cone", action="store_true",
        help="constrain the operator to the cone of the calibrated ones",
    )
    parser.add_argument(
        "--threshold", type=float, default=6.0, help="detection threshold k in median + k·MAD"
    )
    return parser


def read_positions(path: str) -> np.ndarray:
    if not Path(path).is_file():
        raise ValueError(f"positions file {path!r} does not exist")
    text = Path(path).read_text()
    if not text.strip():
        raise ValueError(f"positions file {path!r} is empty; expected rows of 'row, col'")
    delimiter = "," if text.count(",") else None
    try:
        with warnings.catch_warnings():  # NumPy warns of a file with no rows: one error instead
            warnings.simplefilter("error")
            positions = np.loadtxt(path, delimiter=delimiter, ndmin=2)
    except UserWarning:
        raise ValueError(f"positions file {path!r} holds no rows; expected 'row, col' lines")\
            from None
    except ValueError as error:
        raise ValueError(f"positions file {path!r} is not a table of numbers ({error})") from None
    if positions.shape[1] != 2:
        raise ValueError(
            f"positions file {path!r} must have two columns (row, col), got {positions.shape[1]}"
        )
    return positions


def run(args) -> int:
    from psfmap.calibrate import OperatorFamily
    from psfmap.calibrate.spikes import identify_from_spikes
    from psfmap.cli._common import read_plane

    check_number(args.threshold, "--threshold", minimum=0, strict=True)
    check_outputs(args, [args.image, args.family, args.positions], files=[args.output])
    if not Path(args.image).is_file():
        raise ValueError(f"image {args.image!r} does not exist")
    positions = read_positions(args.positions) if args.positions else None
    family = OperatorFamily.load(args.family)
    array, _ = read_plane(args.image, args.plane, args=args)
    operator = identify_from_spikes(
        array, family, positions, cone=args.cone, k=args.threshold
    )
    info = operator.identification
    operator.save(args.output, {"source_image": str(args.image), "family": str(args.family)})
    summary(
        args,
        f"identified the operator from {len(info.positions)} beads (relative residual "
        f"{info.relative_residual:.3f}, median patch error "
        f"{float(np.median(info.patch_residuals)):.3f}) -> {args.output}",
    )
    return 0
