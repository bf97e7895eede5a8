"""``psfmap calibrate``: bead images -> operator family file (+ optional figure); with
``--volume``, a bead z-stack -> a depth- and field-variant 3-D operator (+ orthogonal views)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from psfmap.cli import UsageError, command_parser
from psfmap.cli._common import check_number, check_outputs, progress_bar, summary, warn_saturated

EXAMPLE = (
    "psfmap calibrate beads_zstack.tif --slices 26:37 --psf-size 31 -o family.psfmap "
    "--figure calibration.png\n  psfmap calibrate beads_zstack.tif --volume --z-step 0.3 "
    "-o beads3d.psfmap --figure views.png"
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers,
        "calibrate",
        "Learn a low-dimensional family of blur operators from bead images "
        "(each 2-D image, or each slice of a z-stack, is one condition); with --volume, "
        "a 3-D operator whose PSF varies with depth and field from one bead z-stack.",
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
    volume = parser.add_argument_group("bead z-stacks as volumes (--volume)")
    volume.add_argument("--volume", action="store_true",
                        help="calibrate a 3-D operator (PSFs varying with depth and field) from "
                        "one bead z-stack, instead of one condition per slice; --figure writes "
                        "XY/XZ/YZ views of its PSFs")
    volume.add_argument("--z-step", type=float, metavar="MICRONS",
                        help="axial step in µm (default: the file's metadata)")
    volume.add_argument("--psf-depth", type=int,
                        help="odd number of planes of the 3-D bead patches (default 2⌈4σz⌉+1)")
    volume.add_argument("--psf-sigma-z", type=float,
                        help="axial PSF scale in planes (estimated if omitted)")
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
    if args.volume:
        return run_volume(args)
    for flag, value in (("--z-step", args.z_step), ("--psf-depth", args.psf_depth),
                        ("--psf-sigma-z", args.psf_sigma_z)):
        if value is not None:
            raise UsageError(f"{flag} applies to 3-D calibration; add --volume to calibrate the "
                             "z-stack as a volume")
    images, names, file_meta = load_conditions(args.beads, parse_slices(args.slices), args)
    pixel_size = args.pixel_size if args.pixel_size is not None else file_meta.get("pixel_size")
    metadata = {"conditions": names, "sources": [str(p) for p in args.beads]}
    if pixel_size:
        metadata["pixel_size"] = float(np.atleast_1d(pixel_size)[-1])
    try:
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
    except ValueError as error:
        raise ValueError(_name_condition(str(error), names, args)) from None
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


def _name_condition(message: str, names: list[str], args) -> str:
    """A calibration error about ``images[k]`` names the file (and slice) it came from, and
    for a slice of a z-stack taken whole says how to pick the in-focus slices."""
    match = re.search(r"images\[(\d+)\]", message)
    if match is None or int(match.group(1)) >= len(names):
        return message
    name = names[int(match.group(1))]
    message = message.replace(match.group(0), name)
    if name.endswith("]") and args.slices is None:
        message += ("; every slice of a z-stack is one condition: keep the slices where the "
                    "beads are in focus with --slices a:b, or calibrate the stack as one "
                    "volume with --volume")
    return message


def run_volume(args) -> int:
    """``--volume``: one bead z-stack -> a 3-D operator file (and orthogonal views)."""
    from psfmap.calibrate.volume_calibration import calibrate_volume
    from psfmap.calibrate.volume_figures import plot_volume_psfs

    if len(args.beads) != 1:
        raise UsageError(f"--volume calibrates one bead z-stack, got {len(args.beads)} files")
    if args.spatial is not None:
        raise UsageError("--spatial applies to operator families; a 3-D calibration has no "
                         "spatial basis")
    if args.psf_depth is not None and (args.psf_depth < 3 or args.psf_depth % 2 == 0):
        raise UsageError(f"--psf-depth must be an odd integer >= 3, got {args.psf_depth}")
    check_number(args.psf_sigma_z, "--psf-sigma-z", minimum=0, strict=True)
    check_number(args.z_step, "--z-step", minimum=0, strict=True)
    path = args.beads[0]
    if not Path(path).is_file():
        raise ValueError(f"bead image {path!r} does not exist")
    stack, meta = read_image(path)
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise ValueError(f"--volume needs a bead z-stack (Z, Y, X); {path!r} has shape "
                         f"{stack.shape}")
    slices = parse_slices(args.slices)
    if slices is not None:
        stack = stack[slices]
        if stack.shape[0] < 3:
            raise ValueError(f"--slices keeps {stack.shape[0]} plane(s) of {path!r}; a bead "
                             "z-stack needs at least 3")
    warn_saturated(args, stack, Path(path).name)
    z_step = args.z_step if args.z_step is not None else meta.get("z_step")
    if z_step is None:
        raise UsageError(f"the z-step of {path!r} is unknown (no PhysicalSizeZ, spacing or "
                         "z_step in its metadata) and z-stack voxels are usually anisotropic: "
                         "pass --z-step in µm")
    pixel_size = args.pixel_size if args.pixel_size is not None else meta.get("pixel_size")
    pixel_size = float(np.atleast_1d(pixel_size)[-1]) if pixel_size else None
    with progress_bar(args, 2, "calibrating 3-D") as bar:
        operator = calibrate_volume(
            stack, z_step=float(z_step), pixel_size=pixel_size,
            metadata={"source": Path(path).name, "slices": args.slices},
            psf_size=args.psf_size, psf_sigma=args.psf_sigma, psf_depth=args.psf_depth,
            psf_sigma_z=args.psf_sigma_z, n_eigen=args.eigen, smoothing=args.smoothing,
            k=args.threshold, min_beads=args.min_beads, progress=bar.update)
    operator.save(args.output)
    if args.figure:
        plot_volume_psfs(operator, args.figure)
    report = operator.metadata["calibration"]
    varies = "depth and field" if report["depth_variant"] else \
        "field (beads on one surface: constant in depth)"
    summary(args, f"calibrated a 3-D operator from {report['n_beads']} beads of "
                  f"{Path(path).name}: I={report['n_eigen']} eigen-PSFs of "
                  f"{'x'.join(str(n) for n in operator.kernel_shape)} voxels, varying with "
                  f"{varies} -> {args.output}")
    return 0
