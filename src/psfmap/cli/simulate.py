"""``psfmap simulate``: blur a sharp image with a spatially varying PSF and add camera noise;
a sharp z-stack with a 3-D ``--psf`` or ``--operator`` is blurred as a volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from psfmap.cli import UsageError, command_parser
from psfmap.cli._common import check_number, check_outputs, parse_pair, summary, warn
from psfmap.cli._large import add_large_flags, wants_chunks

# pixel sizes (µm) at which a file's own sampling is used for a Zernike pupil: below, the NA 0.8
# pupil spans too few frequency samples; above, the PSF is under a pixel and the supersampled
# grid grows without bound
ZERNIKE_PIXEL_SIZES = (0.03, 0.4)

EXAMPLE = (
    "psfmap simulate sharp.tif --model zernike3 --field tilt --grid 4x4 --photons 1000 "
    "-o blurred.tif --save-truth truth.psfmap --seed 0\n  psfmap simulate sharp_zstack.tif "
    "--operator beads3d.psfmap --photons 500 -o blurred_zstack.tif --seed 0"
)

# the names of psfmap.psf.FAMILIES and psfmap.simulate.fields.FIELDS, checked in run (importing
# them here would load torch whenever the command line is parsed)
FIELD_NAMES = ("constant", "tilt", "radial", "smooth_random")


def add_parser(subparsers):
    parser = command_parser(
        subparsers,
        "simulate",
        "Blur a sharp image with a spatially varying PSF and add Poisson-Gaussian noise; a "
        "z-stack with a 3-D --psf or --operator is blurred as a volume.",
        EXAMPLE,
    )
    parser.add_argument("sharp", help="sharp 2-D image (TIFF, OME-TIFF, PNG, or .ome.zarr "
                        "read lazily), or a z-stack (Z, Y, X) with a 3-D --psf or --operator")
    parser.add_argument("-o", "--output", required=True, help="blurred image to write (.tif, "
                        "or .ome.zarr written chunk by chunk)")
    parser.add_argument("--model", default="zernike3",
                        help="PSF family (gaussian1, gaussian2, zernike1, zernike2, zernike3, "
                        "...: psfmap.psf.FAMILIES)")
    parser.add_argument("--plane", type=int, default=None,
                        help="frame of a stack to blur, its leading axes (Z, T, C...) counted "
                             "in file order")
    parser.add_argument("--field", default="tilt", choices=FIELD_NAMES,
                        help="how the PSF parameters vary over the field")
    parser.add_argument("--psf", metavar="PSF3D", default=None,
                        help="z-stacks: a 3-D PSF (TIFF, Z, Y, X) blurring the whole volume")
    parser.add_argument("--operator", metavar="OPERATOR", default=None,
                        help="z-stacks: a 3-D operator (.psfmap, e.g. from psfmap calibrate "
                        "--volume) whose PSF varies with depth and field")
    parser.add_argument("--z-step", type=float, default=None, metavar="MICRONS",
                        help="z-stacks: axial step in µm written with the output (default: "
                        "the input's metadata)")
    parser.add_argument("--grid", default="4x4", help="PSF grid, rows x columns (default 4x4)")
    parser.add_argument("--photons", type=float, default=None,
                        help="expected photons at the brightest pixel (default: no noise)")
    parser.add_argument("--quantum-efficiency", type=float, default=1.0,
                        help="camera quantum efficiency in (0, 1]")
    parser.add_argument("--read-noise", type=float, default=0.0,
                        help="Gaussian read noise, electrons")
    parser.add_argument("--offset", type=float, default=0.0, help="camera offset, electrons")
    parser.add_argument("--angle", type=float, default=0.0,
                        help="direction of a tilt field, degrees (0: along x)")
    parser.add_argument("--save-truth", metavar="PATH", default=None,
                        help="write the true PSF map (.psfmap)")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    add_large_flags(parser)
    return parser


def run(args) -> int:
    from psfmap.cli._large import dask_client, read_lazy
    from psfmap.io import read_image
    from psfmap.psf import model as psf_model
    from psfmap.simulate import simulate

    grid = parse_pair(args.grid, "--grid")
    if min(grid) < 1:
        raise UsageError(f"--grid must be positive, got {args.grid!r}")
    check_number(args.photons, "--photons", minimum=0, strict=True)
    check_number(args.quantum_efficiency, "--quantum-efficiency", minimum=0, maximum=1,
                 strict=True, expected="a fraction in (0, 1]")
    check_number(args.read_noise, "--read-noise", minimum=0)
    check_number(args.offset, "--offset")
    check_number(args.angle, "--angle")
    check_number(args.seed, "--seed", minimum=0)
    check_number(args.z_step, "--z-step", minimum=0, strict=True)
    from psfmap.psf import FAMILIES

    if args.model not in FAMILIES:
        raise UsageError(f"--model must be one of {', '.join(FAMILIES)}, got {args.model!r}")
    if args.psf is not None or args.operator is not None:
        if args.plane is not None:
            raise UsageError("--plane takes one frame to blur in 2-D; a 3-D --psf or --operator "
                             "blurs the whole z-stack")
        return _simulate_volume(args)
    if args.z_step is not None:
        raise UsageError("--z-step applies to z-stacks blurred with a 3-D --psf or --operator")
    check_outputs(args, [args.sharp], images=[args.output], files=[args.save_truth])
    # chunked (dask): blurred chunk by chunk with a halo, noise drawn per chunk
    chunked = wants_chunks(args, args.sharp, [args.output])
    sharp, metadata = (read_lazy(args.sharp, args.chunk) if chunked
                       else read_image(args.sharp))
    if args.plane is not None:
        from psfmap.cli._common import select_frame

        sharp = select_frame(sharp, args.plane, args.sharp, metadata.get("axes"))
    if sharp.ndim != 2:
        raise ValueError(
            f"SHARP must be a 2-D image, got shape {sharp.shape} (axes {metadata.get('axes')}); "
            "blur a z-stack as a volume with a 3-D --psf or --operator, or take one frame with "
            "--plane"
        )
    image = sharp.astype(np.float32)
    # a lazy image is checked chunk by chunk as it is blurred
    if not chunked and float(image.min()) < 0:
        raise ValueError("SHARP has negative values; expected a non-negative intensity image")
    pixel_size = metadata.get("pixel_size")
    family = psf_model(args.model)
    if family.kind == "zernike" and pixel_size is not None:
        # the pupil is sampled at the image's own pixels (a Gaussian width is in pixels anyway)
        low, high = ZERNIKE_PIXEL_SIZES
        if low <= pixel_size <= high:
            family = psf_model(args.model, pixel_size=float(pixel_size))
        else:
            warn(args, f"the input's pixel size {pixel_size:g} µm is outside {low}-{high} µm, "
                       f"where the {args.model} optics (NA {family.optics['na']}) are sampled "
                       f"sensibly; using the family's {family.optics['pixel_size']} µm")
    with dask_client(args) as client:
        _simulate_and_write(args, simulate, image, family, grid, pixel_size, chunked, client)
    return 0


def _simulate_and_write(args, simulate, image, family, grid, pixel_size, chunked: bool,
                        client) -> None:
    from psfmap.cli._large import where, write_chunked
    from psfmap.io import write_image

    result = simulate(
        image,
        model=family,
        field=args.field,
        grid=grid,
        photons=args.photons,
        quantum_efficiency=args.quantum_efficiency,
        read_noise=args.read_noise,
        offset=args.offset,
        angle=np.deg2rad(args.angle),
        seed=args.seed,
        metadata={"source": str(args.sharp), "pixel_size": pixel_size,
                  **({"plane": args.plane} if args.plane is not None else {})},
    )
    # everything is computed before anything is written (an .ome.zarr: chunk by chunk)
    written = {"pixel_size": pixel_size, "inputs": [args.sharp],
               "metadata": {"psfmap": "simulate", "model": args.model, "field": args.field,
                            "grid": list(grid), "photons": args.photons, "seed": result.seed}}
    if chunked:
        write_chunked(args, args.output, result.blurred, client, **written)
    else:
        write_image(args.output, result.blurred, **written)
    if args.save_truth is not None:
        result.psf_map.save(args.save_truth)
    noise = f"{args.photons:g} photons" if args.photons is not None else "no noise"
    truth = f", truth -> {args.save_truth}" if args.save_truth else ""
    summary(
        args,
        f"simulated {args.model} blur ({args.field}, {grid[0]}x{grid[1]} grid, {noise}) on "
        f"{image.shape[0]}x{image.shape[1]} image{f' ({where(args)})' if chunked else ''}, "
        f"seed {result.seed} -> {args.output}{truth}",
    )


def _simulate_volume(args) -> int:
    """A z-stack blurred as a volume by a 3-D --psf or --operator; voxel sizes kept."""
    from psfmap.io import read_image, write_image
    from psfmap.simulate.volume import simulate_volume

    if args.psf is not None and args.operator is not None:
        raise UsageError("give --psf or --operator, not both")
    if args.save_truth is not None:
        raise UsageError("--save-truth writes a simulated PSF map; with --psf or --operator the "
                         "truth is that file already")
    if args.chunk is not None or str(args.output).endswith(".zarr"):
        raise UsageError("a z-stack blurred as a volume is written as one TIFF, not in chunks")
    blur_file = args.psf if args.psf is not None else args.operator
    check_outputs(args, [args.sharp, blur_file], images=[args.output])
    sharp, metadata = read_image(args.sharp)
    sharp = np.asarray(sharp)
    if sharp.ndim != 3:
        raise ValueError(f"SHARP must be a z-stack (Z, Y, X) to be blurred by a 3-D "
                         f"{'--psf' if args.psf else '--operator'}, got shape {sharp.shape}")
    volume = sharp.astype(np.float32)
    if float(volume.min()) < 0:
        raise ValueError("SHARP has negative values; expected a non-negative intensity stack")
    z_step = args.z_step if args.z_step is not None else metadata.get("z_step")
    if args.psf is not None:
        blur, psf_meta = read_image(args.psf)
        blur = np.asarray(blur, dtype=np.float64)
        if blur.ndim != 3:
            raise ValueError(f"--psf {args.psf!r} must be a 3-D PSF (Z, Y, X), got shape "
                             f"{blur.shape}")
        step = psf_meta.get("z_step")
        if step is not None and z_step is not None and abs(step - z_step) > 0.02 * z_step:
            raise ValueError(f"--psf {args.psf!r} has a z-step of {step:g} µm, the stack "
                             f"{z_step:g} µm; expected the same axial sampling (resample the "
                             "PSF)")
    else:
        from psfmap.operators import load

        blur = load(args.operator)
        if getattr(blur, "ndim", 2) != 3:
            raise ValueError(f"--operator {args.operator!r} is a 2-D operator; a z-stack needs "
                             "a 3-D one (psfmap calibrate --volume)")
    if z_step is None and args.operator is not None:
        z_step = getattr(blur, "metadata", {}).get("z_step")
    pixel_size = metadata.get("pixel_size")
    result = simulate_volume(volume, blur, photons=args.photons,
                             quantum_efficiency=args.quantum_efficiency,
                             read_noise=args.read_noise, offset=args.offset, seed=args.seed)
    source = Path(blur_file).name
    write_image(args.output, result.blurred.astype(np.float32), pixel_size=pixel_size,
                z_step=z_step, axes="ZYX", inputs=[args.sharp, blur_file],
                metadata={"psfmap": "simulate", "volume": True, "blur": source,
                          "photons": args.photons, "seed": result.seed})
    if z_step is None:
        warn(args, f"{Path(args.sharp).name} gives no z-step; the output keeps none "
                   "(pass --z-step)")
    noise = f"{args.photons:g} photons" if args.photons is not None else "no noise"
    summary(args, f"simulated 3-D blur ({source}, {noise}) on a "
                  f"{'x'.join(str(n) for n in volume.shape)} z-stack, seed {result.seed} -> "
                  f"{args.output}")
    return 0
