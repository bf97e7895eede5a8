"""``psfmap optics fit``: fit a wave-optics microscope (JSON train) to a bead z-stack."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from psfmap.cli import UsageError, command_parser
from psfmap.cli._common import check_number, check_outputs, show_progress, summary

EXAMPLE = (
    "psfmap optics fit beads_zstack.tif --optics train.json --planes 10,13,16 --z-step 0.3 "
    "--params source.zernike,source.depth -o fitted.json --psf psf.psfmap --figure fit.png"
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers,
        "optics",
        "Differentiable wave optics (WaveBlocks). 'psfmap optics fit STACK' fits the named "
        "parameters of an optical train (a JSON file, see the guide) to three or more planes "
        "of a bead z-stack, then predicts the depth of every plane by focal-stack matching.",
        EXAMPLE,
    )
    parser.add_argument("action", choices=("fit",), help="what to do (fit)")
    parser.add_argument("image", metavar="STACK", help="bead z-stack (Z, H, W), TIFF")
    parser.add_argument("--optics", required=True, help="JSON description of the optical train")
    parser.add_argument("--planes", required=True,
                        help="comma-separated slice indices to fit, e.g. 10,13,16")
    parser.add_argument("--z-step", type=float, required=True, help="µm between slices")
    parser.add_argument("--reference", type=int, default=None,
                        help="slice at focus offset 0 (default: the middle fitted plane)")
    parser.add_argument("--params", default="source.zernike,source.depth",
                        help="comma-separated parameters to fit (block.parameter)")
    parser.add_argument("--steps", type=int, default=300, help="most Adam steps (default 300)")
    parser.add_argument("--lr", type=float, default=0.02, help="Adam learning rate")
    parser.add_argument("--center", default=None,
                        help="bead position ROW,COL (default: the brightest bead)")
    parser.add_argument("-o", "--output", required=True,
                        help="JSON file: fitted train, parameters before/after, loss, depths")
    parser.add_argument("--psf", default=None, help="write the fitted PSF (.psfmap operator)")
    parser.add_argument("--figure", default=None, help="write the fit figure (.png, .pdf...)")
    return parser


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise UsageError(f"{flag} must name at least one value, got {text!r}")
    return values


def run(args) -> int:
    import torch

    from psfmap._container import atomic_write
    from psfmap.cli.calibrate import read_image
    from psfmap.figures import save_figure
    from psfmap.operators import Convolution
    from psfmap.optics import build, crop_bead, estimate_depth, fit

    check_number(args.z_step, "--z-step", minimum=0, strict=True)
    check_number(args.lr, "--lr", minimum=0, strict=True)
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    planes = _ints(args.planes, "--planes")
    params = [p.strip() for p in args.params.split(",") if p.strip()]
    center = tuple(_ints(args.center, "--center")) if args.center else None
    if center is not None and len(center) != 2:
        raise UsageError(f"--center must be ROW,COL, got {args.center!r}")
    check_outputs(args, [args.image, args.optics], [args.output], files=[args.psf],
                  figures=[args.figure])
    for path, what in ((args.image, "image"), (args.optics, "optics file")):
        if not Path(path).is_file():
            raise ValueError(f"{what} {path!r} does not exist")
    try:
        spec = json.loads(Path(args.optics).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"optics file {args.optics!r} is not valid JSON ({error})") from None
    microscope = build(spec)
    missing = sorted(set(params) - set(microscope.parameter_names()))
    if missing:
        raise UsageError(f"--params names {missing}, which the optical train does not have; "
                         f"it has {microscope.parameter_names()}")
    array, _ = read_image(args.image)
    stack = np.asarray(array, dtype=np.float64)
    if stack.ndim != 3:
        raise ValueError(f"image {args.image!r} has shape {stack.shape}; expected a z-stack "
                         "(Z, H, W)")
    bad = [p for p in planes if not 0 <= p < len(stack)]
    if bad:
        raise UsageError(f"--planes {bad} are outside the stack's slices 0..{len(stack) - 1}")
    reference = planes[len(planes) // 2] if args.reference is None else args.reference
    size = int(microscope.psf().shape[-1])
    beads = crop_bead(stack, size, center).to(torch.float32)
    offsets = [(p - reference) * args.z_step for p in planes]
    report = fit(microscope, None, beads[planes], params, depths=offsets, steps=args.steps,
                 lr=args.lr, photometric=True, progress=show_progress(args))
    # the depth of every slice, by matching it against the fitted focal stack
    span = (len(stack) + 2) * args.z_step
    candidates = np.arange(-span, span + args.z_step / 8, args.z_step / 4)
    estimate = estimate_depth(beads, microscope, candidates)
    truth = (np.arange(len(stack)) - reference) * args.z_step
    errors = np.abs(estimate.depths.numpy() - truth)
    result = {"optics": microscope.describe(), "fit": report.to_dict(),
              "planes": planes, "reference": reference, "z_step": args.z_step,
              "depths": {"true": truth.tolist(), "estimated": estimate.depths.tolist(),
                         "median_error": float(np.median(errors))},
              "source_image": str(args.image)}
    text = json.dumps(result, indent=1)
    atomic_write(args.output, lambda tmp: tmp.write_text(text))
    if args.psf:
        with torch.no_grad():
            psf = microscope.psf().detach()
        Convolution(psf).save(args.psf, {"pixel_size": microscope.pixel_size(),
                                         "optics": microscope.describe()})
    if args.figure:
        save_figure(report.figure(), args.figure)
    summary(args, f"fitted {', '.join(params)} on {len(planes)} planes: NMSE "
                  f"{report.loss[0]:.3g} -> {report.final_loss:.3g} in {report.steps} steps; "
                  f"median depth error {float(np.median(errors)):.3g} µm over {len(stack)} "
                  f"slices -> {args.output}")
    return 0
