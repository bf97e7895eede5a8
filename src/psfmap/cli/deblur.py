"""``psfmap deblur``: blind spatially-variant deblurring (CNN PSF map + RL-TV)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from psfmap.cli import UsageError, command_parser
from psfmap.cli._common import check_outputs, summary
from psfmap.cli.estimate import (
    add_window_arguments,
    describe_map,
    load_estimator,
    read_plane,
    window_options,
    write_outputs,
)

EXAMPLE = (
    "psfmap deblur cells.tif --model zernike3 -o restored.tif --save-map map.psfmap "
    "--figure map.png"
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from psfmap.identify.blind import DEFAULT_ITERATIONS, DEFAULT_TV

    parser = command_parser(
        subparsers,
        "deblur",
        "Deblur an image blindly: estimate its PSF map with a CNN on sliding windows, then "
        "Richardson-Lucy with total variation (Shajkofci & Liebling, IEEE TIP 2020).",
        EXAMPLE,
    )
    parser.add_argument("image", metavar="IMAGE", help="blurred image (TIFF/PNG, 2-D)")
    add_window_arguments(parser)
    parser.add_argument(
        "--iterations", type=int, default=DEFAULT_ITERATIONS,
        help=f"Richardson-Lucy iterations (default {DEFAULT_ITERATIONS})",
    )
    parser.add_argument(
        "--tv", type=float, default=DEFAULT_TV,
        help=f"TV weight λ (default {DEFAULT_TV}; 0: plain RL)",
    )
    parser.add_argument(
        "--psf-map", default=None, help="use this PSF map file instead of estimating one"
    )
    parser.add_argument("-o", "--output", required=True, help="restored image to write (TIFF)")
    parser.add_argument("--save-map", default=None, help="PSF map file to write (.psfmap)")
    parser.add_argument("--figure", default=None, help="figure of the PSF map to write (.png)")
    return parser


def run(args) -> int:
    from psfmap.identify.blind import deblur
    from psfmap.io import write_image
    from psfmap.operators.psf_map import PSFMap

    outputs = [args.output, args.save_map, args.figure]
    check_outputs([args.image, args.weights, args.psf_map], outputs)
    named = [Path(o).resolve() for o in outputs if o is not None]
    if len(set(named)) != len(named):
        raise UsageError("output files must differ from each other")
    if args.iterations < 1:
        raise UsageError(f"--iterations must be >= 1, got {args.iterations}")
    if args.tv < 0:
        raise UsageError(f"--tv must be >= 0, got {args.tv}")
    options = window_options(args)
    image, metadata = read_plane(args.image, args.plane)
    start = time.perf_counter()
    if args.psf_map is not None:
        psf_map = PSFMap.load(args.psf_map)
        if psf_map.image_shape != image.shape:
            raise ValueError(
                f"--psf-map covers an image of {psf_map.image_shape}, but {args.image!r} has "
                f"shape {image.shape}"
            )
        estimator = None
    else:
        psf_map = None
        estimator = load_estimator(args)
    result = deblur(
        image,
        estimator,
        iterations=args.iterations,
        tv=args.tv,
        psf_map=psf_map,
        return_map=True,
        **options,
    )
    result.psf_map.metadata["source"] = Path(args.image).name
    elapsed = time.perf_counter() - start
    description = {
        k: v for k, v in (metadata.get("description") or {}).items() if k != "pixel_size"
    }
    description.update(
        psfmap_command="deblur",
        source=Path(args.image).name,
        model=result.psf_map.family.name,
        iterations=args.iterations,
        tv=args.tv,
        grid=list(result.psf_map.grid),
    )
    write_image(
        args.output,
        result.restored,
        pixel_size=metadata.get("pixel_size"),
        metadata=description,
        inputs=[args.image],
    )
    written = [args.output, *write_outputs(args, image, result.psf_map)]
    summary(
        args,
        f"deblurred {image.shape[0]}x{image.shape[1]} with a {describe_map(result.psf_map)}, "
        f"RL-TV {args.iterations} iterations λ={args.tv:g}, in {elapsed:.1f} s -> "
        f"{', '.join(written)}",
    )
    return 0
