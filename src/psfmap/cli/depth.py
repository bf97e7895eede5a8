"""``psfmap depth``: depth map from astigmatism, and its calibration from a bead z-stack."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from psfmap.cli import UsageError, command_parser
from psfmap.cli._common import check_number, check_outputs, read_plane, summary
from psfmap.cli.estimate import add_window_arguments, load_estimator, window_options

EXAMPLE = (
    "psfmap depth calibrate beads_zstack.tif --z-step 0.1 -o depth_calibration.psfmap\n"
    "  psfmap depth cells.tif --model zernike3 --calibration depth_calibration.psfmap "
    "-o depth.tif"
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers,
        "depth",
        "Depth from astigmatism, z = a1 (2 a3 / pi - 1) from the zernike3 PSF map (focus a1, "
        "axis a3; Shajkofci & Liebling, IEEE TIP 2020). 'psfmap depth calibrate STACK' fits "
        "the affine map to micrometres from a z-stack of beads at known depths.",
        EXAMPLE,
    )
    parser.add_argument(
        "target", nargs="+", metavar="IMAGE",
        help="image to map, or 'calibrate STACK' for a z-stack (Z, H, W) of beads",
    )
    add_window_arguments(parser)
    parser.add_argument(
        "-o", "--output", required=True,
        help="depth image (TIFF, image size) or, with calibrate, the calibration file",
    )
    parser.add_argument(
        "--calibration", default=None, help="calibration file: depth in µm instead of raw units"
    )
    parser.add_argument("--cells", action="store_true", help="write one value per grid cell")
    calibrate = parser.add_argument_group("calibrate")
    calibrate.add_argument("--z-step", type=float, default=None, help="µm between stack slices")
    calibrate.add_argument(
        "--z-start", type=float, default=0.0, help="depth of the first slice in µm (default 0)"
    )
    calibrate.add_argument(
        "--slices", default=None, help="slices to use, FIRST:STOP (default: all)"
    )
    calibrate.add_argument(
        "--formula", choices=("paper", "twin-invariant"), default="paper",
        help="raw depth: the papers' a1 (2 a3 / pi - 1), or one that a focus/astigmatism "
             "mix-up of the CNN does not change (psfmap.depth; more accurate on the real "
             "bead stack of benchmarks/RESULTS.md)",
    )
    return parser


def _slices(text: str | None, n: int) -> range:
    if text is None:
        return range(n)
    try:
        first, stop = (int(v) if v else None for v in text.split(":"))
    except ValueError:
        raise UsageError(f"--slices must look like 20:45, got {text!r}") from None
    chosen = range(n)[slice(first, stop)]
    if not chosen:
        raise UsageError(f"--slices {text!r} selects none of the {n} slices")
    return chosen


def _calibrate(args, stack_path: str) -> int:
    from psfmap.blind import calibrate_depth, depth_images_needed
    from psfmap.io import read_image

    if args.z_step is None or not 0 < args.z_step < float("inf"):
        raise UsageError("calibrate needs --z-step, the distance between slices in µm (> 0)")
    check_outputs(args, [stack_path, args.weights], files=[args.output])
    stack, _ = read_image(stack_path)
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise ValueError(f"{stack_path!r} must be a z-stack (Z, H, W), got shape {stack.shape}")
    chosen = _slices(args.slices, stack.shape[0])
    needed = depth_images_needed(args.formula)
    if len(chosen) < needed:
        raise UsageError(f"the {args.formula} calibration needs at least {needed} slices "
                         f"(it fits {needed - 1} numbers), got {len(chosen)}")
    z_um = args.z_start + args.z_step * np.asarray(chosen, dtype=np.float64)
    estimator = load_estimator(args)
    options = window_options(args)
    if options["grid"] is not None:
        raise UsageError("--grid is not used by calibrate; give --window/--stride")
    start = time.perf_counter()
    images = [stack[k].astype(np.float32) for k in chosen]
    calibration = calibrate_depth(
        images, z_um, model=estimator, window=options["window"], stride=options["stride"],
        median=options["median"], formula=args.formula,
    )
    calibration.metadata.update(
        source=Path(stack_path).name, z_step=args.z_step, slices=[chosen[0], chosen[-1] + 1]
    )
    calibration.save(args.output)
    side = f" {calibration.step:+.4g} side" if calibration.formula != "paper" else ""
    summary(
        args,
        f"calibrated depth on {calibration.metadata['n_used']}/{len(chosen)} slices "
        f"({calibration.formula} formula): z = {calibration.slope:.4g} raw{side} "
        f"{calibration.intercept:+.4g} µm, RMS error {calibration.rms_error:.3f} µm "
        f"({100 * calibration.rms_error / (z_um[-1] - z_um[0]):.1f} % of the range) in "
        f"{time.perf_counter() - start:.1f} s -> {args.output}",
    )
    return 0


def run(args) -> int:
    from psfmap.blind import DepthCalibration, depth_map
    from psfmap.io import write_image

    check_number(args.z_start, "--z-start")
    if args.target[0] == "calibrate" and not Path("calibrate").exists():
        if len(args.target) != 2:
            raise UsageError("usage: psfmap depth calibrate STACK --z-step UM -o FILE")
        return _calibrate(args, args.target[1])
    if len(args.target) != 1:
        raise UsageError(f"expected one IMAGE, got {len(args.target)}: {' '.join(args.target)}")
    if args.z_step is not None or args.slices is not None or args.formula != "paper":
        raise UsageError("--z-step, --slices and --formula apply to 'psfmap depth calibrate' "
                         "(a calibration file carries its formula)")
    image_path = args.target[0]
    check_outputs(args, [image_path, args.weights, args.calibration], images=[args.output])
    calibration = DepthCalibration.load(args.calibration) if args.calibration else None
    image, metadata = read_plane(image_path, args.plane, args=args)
    estimator = load_estimator(args)
    start = time.perf_counter()
    depth = depth_map(
        image, estimator, calibration=calibration, full_size=not args.cells,
        **window_options(args),
    )
    unit = "µm" if calibration is not None else "raw (uncalibrated)"
    write_image(
        args.output,
        np.asarray(depth, dtype=np.float32),
        pixel_size=None if args.cells else metadata.get("pixel_size"),
        metadata={"psfmap_command": "depth", "source": Path(image_path).name, "unit": unit},
        inputs=[image_path],
    )
    summary(
        args,
        f"depth {np.min(depth):.3g}..{np.max(depth):.3g} {unit} over {image.shape[0]}x"
        f"{image.shape[1]} in {time.perf_counter() - start:.1f} s -> {args.output}",
    )
    return 0
