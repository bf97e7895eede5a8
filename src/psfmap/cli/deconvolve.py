"""``psfmap deconvolve``: restore an image (or a stack, frame by frame) with a known blur."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from psfmap.cli import UsageError, command_parser
from psfmap.cli._common import (
    check_number,
    check_outputs,
    checked_psf,
    one_frame,
    progress_bar,
    provenance,
    psf_preparation,
    summary,
    warn,
    warn_saturated,
)
from psfmap.cli._large import add_large_flags, wants_chunks
from psfmap.cli._volume import add_volume_flags, run_volume, volume_operator

# frames restored together: at most this many pixels per batch (memory stays bounded)
BATCH_PIXELS = 4 * 1024 * 1024
def add_parser(subparsers):
    from psfmap.restore.tiled import DEFAULT_OVERLAP, MIN_TILE

    parser = command_parser(
        subparsers,
        "deconvolve",
        "Deconvolve an image or a stack (frame by frame) with a known, possibly "
        "space-variant blur: Richardson-Lucy, RL with total variation, or sparse + smooth.",
        "psfmap deconvolve cells.tif --psf-map map.psfmap --method rl-tv --tv 0.01 -o restored.tif",
    )
    parser.add_argument("image", help="image to restore (TIFF; leading Z/T/C axes are frames)")
    parser.add_argument("--plane", type=int, default=None,
                        help="restore one frame of a stack, its leading axes counted in file "
                             "order (default: every frame, or the stack as a volume with a "
                             "3-D --psf or --operator)")
    blur = parser.add_mutually_exclusive_group(required=True)
    blur.add_argument("--psf", help="one PSF image at the image's pixel size, background "
                      "subtracted and cropped (TIFF, 2-D; a 3-D PSF with a z-stack restores "
                      "it as a volume, see --z-step and --plane-by-plane)")
    blur.add_argument("--operator", help="operator file written by psfmap (psfmap identify, "
                      "or an operator's .save() in Python; .psfmap/.npz)")
    blur.add_argument("--psf-map", help="PSF map file (psfmap estimate / deblur --save-map, "
                      "simulate --save-truth)")
    parser.add_argument(
        "--method",
        choices=("rl", "rl-tv", "sparse-smooth"),
        default=None,
        help="rl: Richardson-Lucy; rl-tv: with total variation (Dey et al. 2006); "
        "sparse-smooth: spikes + smooth background (Debarnot et al. 2021). "
        "Default: rl-tv, as psfmap.deconvolve",
    )
    parser.add_argument(
        "--iterations", type=int, default=None, help="iterations (default 20; sparse-smooth 200)"
    )
    parser.add_argument(
        "--tv", type=float, default=None, help="TV weight λ for rl-tv (default 0.01)"
    )
    parser.add_argument(
        "--background", type=float, default=0.0,
        help="known additive background still in the image (camera offset), >= 0",
    )
    parser.add_argument(
        "--offset", type=float, default=0.0,
        help="for a background-subtracted image with negative pixels: add this constant back "
        "(>= minus the minimum) and treat it as known background; the result is the same "
        "restoration as of the unsubtracted image",
    )
    parser.add_argument(
        "--clip-psf", action="store_true",
        help="set the negative values of --psf (noise of a background subtraction) to 0, "
        "with a warning giving the clipped fraction of its mass, instead of refusing them",
    )
    parser.add_argument(
        "--psf-crop", type=int, default=None, metavar="PIXELS",
        help="crop --psf to PIXELS x PIXELS (odd) around its brightest pixel first (a "
        "measured bead PSF is often a whole field of view)",
    )
    parser.add_argument(
        "--psf-background", action="store_true",
        help="subtract the level of --psf's border (its camera background) and set what "
        "falls below 0 to 0, before any other check",
    )
    parser.add_argument(
        "--tol", type=float, default=None, help="stop a frame when its relative change < TOL"
    )
    parser.add_argument("--smooth", type=float, default=None, help="sparse-smooth: λ1")
    parser.add_argument("--sparse", type=float, default=None, help="sparse-smooth: λ2")
    parser.add_argument("--sparse-out", default=None, help="sparse-smooth: also write the spikes")
    parser.add_argument(
        "--smooth-out", default=None, help="sparse-smooth: also write the smooth background"
    )
    parser.add_argument(
        "--tile", type=int, default=0, metavar="PIXELS",
        help="restore frames larger than PIXELS x PIXELS in tiles of at most that size (with "
        f"--overlap px of context): memory bounded by the tile (at least {MIN_TILE}; "
        "default 0: one piece). Plain RL in tiles equals the one-piece result",
    )
    parser.add_argument(
        "--overlap", type=int, default=None, metavar="PIXELS",
        help=f"context around each tile, at least a PSF wide (default {DEFAULT_OVERLAP}; "
        "with --tile); in a chunked run, the halo of every chunk (default from the PSF size "
        "and the iterations)",
    )
    parser.add_argument("-o", "--output", required=True,
                        help="restored image to write (TIFF, or .ome.zarr written chunk by "
                        "chunk)")
    add_large_flags(parser)
    add_volume_flags(parser)
    return parser


def _method(args) -> str:
    from psfmap.restore.tiled import MIN_TILE

    method = args.method or "rl-tv"
    if args.tv is not None and not 0 <= args.tv < float("inf"):
        raise UsageError(f"--tv must be a weight >= 0, got {args.tv}")
    if args.tol is not None and not 0 < args.tol < float("inf"):
        raise UsageError(f"--tol must be a relative change > 0, got {args.tol}")
    if args.tv is not None and method != "rl-tv":
        raise UsageError(f"--tv applies to --method rl-tv, not {method}")
    sparse_only = {
        "--smooth": args.smooth,
        "--sparse": args.sparse,
        "--sparse-out": args.sparse_out,
        "--smooth-out": args.smooth_out,
    }
    if method != "sparse-smooth":
        given = [flag for flag, value in sparse_only.items() if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} apply to --method sparse-smooth, not {method}")
    elif args.tol is not None:
        raise UsageError("--tol applies to the Richardson-Lucy methods, not sparse-smooth")
    elif args.tile and (args.sparse_out is not None or args.smooth_out is not None):
        raise UsageError("--sparse-out and --smooth-out need one piece; they do not combine "
                         "with --tile")
    # the same checks as deblur's --tile / --overlap
    if args.tile != 0 and args.tile < MIN_TILE:
        raise UsageError(f"--tile must be >= {MIN_TILE} pixels (0: one piece), got {args.tile}")
    if args.overlap is not None and args.overlap < 0:
        raise UsageError(f"--overlap must be >= 0 pixels, got {args.overlap}")
    chunked = (args.image.lower().rstrip("/").endswith(".zarr")
               or args.output.lower().rstrip("/").endswith(".zarr")
               or args.workers is not None or args.scheduler is not None
               or args.chunk is not None)
    if args.overlap is not None and not args.tile and not chunked:
        raise UsageError("--overlap applies with --tile (or as the halo of a chunked run)")
    return method


def _check_plane_options(args, method: str) -> None:
    """The options of volumes and of Richardson-Lucy that a plane-by-plane run cannot honour."""
    if args.views is not None:
        raise UsageError("--views applies to volumes (a 3-D --psf or --operator with a "
                         "z-stack)")
    if args.accelerate and method == "sparse-smooth":
        raise UsageError("--accelerate applies to Richardson-Lucy (--method rl or rl-tv)")


def _load_operator(args, image_shape: tuple[int, int]):
    """The blur operator from --psf / --operator / --psf-map, and a note for the summary."""
    if args.psf is not None:
        from psfmap.io import read_image
        from psfmap.restore._domain import as_operator

        psf, _ = read_image(args.psf)
        psf = np.asarray(psf, dtype=np.float64)
        note = ""
        if psf.ndim == 3:
            plane = int(np.argmax(psf.reshape(psf.shape[0], -1).max(axis=1)))
            psf, note = psf[plane], f" (PSF plane {plane} of {psf.shape[0]})"
        if psf.ndim != 2:
            raise ValueError(f"--psf must be a 2-D PSF image, got shape {psf.shape}")
        psf = checked_psf(args, psf)
        # the verb's own reading of a PSF array: checked (finite, non-negative, not all
        # zero), then normalised to unit sum
        operator = as_operator(psf, image_shape, f"--psf {args.psf!r}")
        return operator, f"PSF {Path(args.psf).name}{psf_preparation(args)}{note}"
    if args.operator is not None:
        from psfmap.operators import load

        return load(args.operator), f"operator {Path(args.operator).name}"
    from psfmap.operators.psf_map import PSFMap

    psf_map = PSFMap.load(args.psf_map)
    psf_map.check_covers(image_shape, f"--psf-map {args.psf_map!r}")
    return psf_map.operator(image_shape), f"PSF map {Path(args.psf_map).name}"


def _shift_negative(args, image: np.ndarray) -> tuple[np.ndarray, float]:
    """The image raised by --offset, and the background the solver gets (--background plus
    the offset: y + c = H x + b + c keeps the model exact). A negative image beyond round-off
    is refused with the --offset that would fix it."""
    from psfmap.restore._domain import ROUNDOFF

    background = args.background + args.offset
    if args.offset:
        image = image + np.asarray(args.offset, dtype=image.dtype)
    low = float(np.min(image))
    if low < -ROUNDOFF * float(np.max(np.abs(image))):
        needed = -float(np.min(image - args.offset)) if args.offset else -low
        raise ValueError(
            f"{args.image!r} has negative pixels (minimum {low:.4g}"
            f"{' after --offset' if args.offset else ''}): a background-subtracted image? "
            f"pass --offset {needed:.4g} (or more) to add that constant back as background"
        )
    return image, background


def _advance(bar, frames: int, reached: list[int]):
    """Progress callback: one solver iteration moves the bar by the frames in the batch and
    is recorded in ``reached`` (with --tol the solver may stop early)."""

    def callback(iteration, *_):
        bar.update(frames)
        reached.append(int(iteration))

    return callback


def run(args) -> int:
    from psfmap.io import read_image, write_image
    from psfmap.restore import DEFAULT_TV, deconvolve, richardson_lucy, sparse_smooth

    method = _method(args)
    inputs = [args.image, args.psf, args.operator, args.psf_map]
    outputs = [args.output, args.sparse_out, args.smooth_out]
    check_outputs(args, inputs, images=outputs, figures=[args.views])
    if args.iterations is not None and args.iterations < 1:
        raise UsageError(f"--iterations must be >= 1, got {args.iterations}")
    check_number(args.background, "--background", minimum=0,
                 expected="a known background level >= 0 (an image with negative pixels "
                 "needs --offset)")
    check_number(args.offset, "--offset", minimum=0)
    check_number(args.smooth, "--smooth", minimum=0)
    check_number(args.sparse, "--sparse", minimum=0)
    iterations = args.iterations or (200 if method == "sparse-smooth" else 20)
    if wants_chunks(args, args.image, outputs):
        return _run_chunked(args, method, iterations, [p for p in inputs if p is not None])

    image, metadata = one_frame(*read_image(args.image), args.plane, args.image)
    image = np.asarray(image)
    if image.ndim < 2:
        raise ValueError(f"{args.image!r} must be an image (..., H, W), got shape {image.shape}")
    warn_saturated(args, image, Path(args.image).name)
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    image, known = _shift_negative(args, image)
    volume = volume_operator(args, image)  # a 3-D PSF or operator: restore as volumes
    if volume is not None:
        return run_volume(args, image, metadata, method, iterations, known, *volume,
                          inputs=[p for p in inputs if p is not None])
    _check_plane_options(args, method)
    shape = image.shape[-2:]
    frames = image.reshape(-1, *shape)
    operator, source = _load_operator(args, tuple(shape))

    batch = max(1, BATCH_PIXELS // (shape[0] * shape[1]))
    restored = np.empty_like(frames)
    spikes = np.empty_like(frames) if method == "sparse-smooth" else None
    background = np.empty_like(frames) if method == "sparse-smooth" else None
    start = time.perf_counter()
    reached: list[int] = []
    tv = (DEFAULT_TV if args.tv is None else args.tv) if method == "rl-tv" else None
    tiled = bool(args.tile) and max(shape) > args.tile
    # with tiles the solver reports every tile's iterations (a bar over all of them)
    pieces = -(-shape[0] // args.tile) * -(-shape[1] // args.tile) if tiled else 1
    with progress_bar(args, len(frames) * iterations * pieces,
                      f"deconvolve ({method})") as bar:
        for first in range(0, len(frames), batch):
            chunk = frames[first : first + batch]
            advance = _advance(bar, len(chunk), reached)
            part = slice(first, first + len(chunk))
            if tiled:
                options = ({"background": known, "tol": args.tol,
                            "accelerate": bool(args.accelerate)}
                           if method != "sparse-smooth" else
                           {k: v for k, v in (("smooth", args.smooth), ("sparse", args.sparse))
                            if v is not None})
                restored[part] = deconvolve(chunk, operator, method, iterations, tv,
                                            tile=args.tile, overlap=args.overlap,
                                            callback=advance, **options)
            elif method == "sparse-smooth":
                weights = {
                    k: v
                    for k, v in (("smooth", args.smooth), ("sparse", args.sparse))
                    if v is not None
                }
                result = sparse_smooth(
                    chunk, operator, iterations=iterations, callback=advance, **weights
                )
                restored[part], spikes[part], background[part] = (
                    result.restored,
                    result.sparse,
                    result.smooth,
                )
            else:
                restored[part] = richardson_lucy(
                    chunk,
                    operator,
                    iterations=iterations,
                    tv=tv or 0.0,
                    background=known,
                    tol=args.tol,
                    accelerate=bool(args.accelerate),
                    callback=advance,
                )
    elapsed = time.perf_counter() - start
    ran = max(reached, default=iterations)
    stopped = f", stopped by --tol at {ran}" if ran < iterations else ""

    pixel_size = metadata.get("pixel_size")
    axes = metadata.get("axes")
    kept = provenance(
        metadata,
        psfmap_command="deconvolve",
        source=Path(args.image).name,
        method=method,
        iterations=iterations,
        iterations_run=ran,
        blur=source,
    )
    if method == "rl-tv":
        kept["tv"] = tv
    if args.offset:
        kept["offset"] = args.offset
    if tiled:
        from psfmap.restore.tiled import DEFAULT_OVERLAP

        kept.update(tile=args.tile, overlap=DEFAULT_OVERLAP if args.overlap is None
                    else args.overlap)
    written = [(args.output, restored)]
    if args.sparse_out is not None:
        written.append((args.sparse_out, spikes))
    if args.smooth_out is not None:
        written.append((args.smooth_out, background))
    for path, array in written:
        write_image(
            path,
            array.reshape(image.shape),
            pixel_size=pixel_size,
            metadata=kept,
            axes=axes if axes and len(axes) == image.ndim else None,
            inputs=[p for p in inputs if p is not None],
        )
    summary(
        args,
        f"deconvolved {len(frames)} frame(s) of {shape[0]}x{shape[1]} with {method} "
        f"({iterations} iterations{stopped}, {source}) in {elapsed:.1f} s -> {args.output}",
    )
    return 0


def _check_pixel_size(args, operator, metadata: dict) -> float | None:
    """The image's pixel size, checked against the operator's when both say one: a store
    without one is assumed at the operator's (warning), a different one is refused."""
    image_size = metadata.get("pixel_size")
    operator_size = (getattr(operator, "metadata", None) or {}).get("pixel_size")
    if operator_size is None:
        return image_size
    if image_size is None:
        warn(args, f"{Path(args.image).name} gives no pixel size; assuming the operator's "
                   f"{float(operator_size):g} µm")
        return float(operator_size)
    if abs(float(image_size) - float(operator_size)) > 0.01 * float(operator_size):
        raise ValueError(f"{args.image!r} has pixels of {float(image_size):g} µm, the operator "
                         f"was built for {float(operator_size):g} µm; expected the same size")
    return image_size


def _run_chunked(args, method: str, iterations: int, inputs: list) -> int:
    """Chunked restoration (dask): an OME-Zarr input read lazily, chunks restored with a halo
    on threads or a cluster (--workers / --scheduler), an OME-Zarr output written chunk by
    chunk (--resume completes an interrupted one)."""
    from psfmap.cli._large import as_dask, dask_client, read_lazy, where, write_chunked
    from psfmap.restore import DEFAULT_TV, deconvolve

    if args.sparse_out is not None or args.smooth_out is not None:
        raise UsageError("--sparse-out and --smooth-out need one piece; they do not combine "
                         "with chunked runs (.ome.zarr, --workers, --scheduler, --chunk)")
    if args.tile:
        raise UsageError("--tile applies to in-memory restoration; a chunked run restores "
                         "chunk by chunk (--chunk PIXELS)")
    image, metadata = one_frame(*read_lazy(args.image, None), args.plane, args.image)
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    volume = volume_operator(args, image)  # a 3-D PSF or operator: restore as volumes
    if volume is not None:
        return _run_chunked_volume(args, image, metadata, method, iterations, *volume,
                                   inputs=inputs)
    _check_plane_options(args, method)
    image = as_dask(image, args.chunk)
    start = time.perf_counter()
    with dask_client(args) as client:
        image, known = _shift_negative(args, image)
        shape = tuple(int(v) for v in image.shape[-2:])
        operator, source = _load_operator(args, shape)
        pixel_size = _check_pixel_size(args, operator, metadata)
        tv = (DEFAULT_TV if args.tv is None else args.tv) if method == "rl-tv" else None
        options = ({"background": known, "tol": args.tol, "accelerate": bool(args.accelerate)}
                   if method != "sparse-smooth" else
                   {k: v for k, v in (("smooth", args.smooth), ("sparse", args.sparse))
                    if v is not None})
        restored = deconvolve(image, operator, method, iterations, tv, overlap=args.overlap,
                              **options)
        kept = provenance(metadata, psfmap_command="deconvolve", source=Path(args.image).name,
                          method=method, iterations=iterations, blur=source,
                          chunks=[int(c) for c in image.chunksize])
        if method == "rl-tv":
            kept["tv"] = tv
        if args.offset:
            kept["offset"] = args.offset
        axes = metadata.get("axes")
        write_chunked(args, args.output, restored, client, pixel_size=pixel_size,
                      metadata=kept, axes=axes if axes and len(axes) == image.ndim else None,
                      inputs=inputs)
    summary(args, f"deconvolved {'x'.join(str(n) for n in image.shape)} in "
                  f"{int(np.prod(image.numblocks))} chunk(s) with {method} ({iterations} "
                  f"iterations, {source}, {where(args)}) in {time.perf_counter() - start:.1f} s "
                  f"-> {args.output}")
    return 0


def _run_chunked_volume(args, image, metadata: dict, method: str, iterations: int,
                        operator, source: str, inputs: list) -> int:
    """Chunked 3-D restoration of a dask stack ``(..., Z, Y, X)`` (a 3-D --psf or --operator):
    chunks of every plane (or of the store's z chunks when they are at least the z halo)
    and --chunk px squares, each restored with a halo and the operator restricted to it;
    pixel size and z-step kept in the output."""
    from psfmap.cli._large import dask_client, is_zarr, where, write_chunked
    from psfmap.cli._volume import stack_z_step
    from psfmap.restore import DEFAULT_TV, deconvolve
    from psfmap.restore.chunked import default_axial_halo

    if method == "sparse-smooth":
        raise UsageError("--method sparse-smooth restores 2-D images; a 3-D PSF or operator "
                         "restores with rl or rl-tv (or pass --plane-by-plane)")
    if args.views is not None:
        raise UsageError("--views needs the volumes in memory; it does not combine with "
                         "chunked runs (.ome.zarr, --workers, --scheduler, --chunk)")
    axes = (metadata.get("axes") or "").upper()
    if image.ndim > 3 and (len(axes) != image.ndim or axes.count("Z") != 1
                           or not axes.endswith("ZYX")):
        raise ValueError(f"cannot restore {args.image!r} (shape {image.shape}, axes "
                         f"{axes or None!r}) as volumes in chunks: expected axes ending in ZYX")
    z_step = stack_z_step(args, metadata)
    # every plane in a chunk unless the store's z chunks already hold a z halo
    z_chunk = max(image.chunks[-3])
    if z_chunk < image.shape[-3] and z_chunk < default_axial_halo(
            int(operator.kernel_shape[0]), iterations):
        z_chunk = -1
    side = args.chunk or (None if is_zarr(args.image) else 1024)
    image = image.rechunk((1,) * (image.ndim - 3) + (z_chunk,) + (
        (side, side) if side else image.chunks[-2:]))
    pixel_size = _check_pixel_size(args, operator, metadata)
    if pixel_size is None:
        warn(args, f"{Path(args.image).name} gives no pixel size; the output keeps none")
    tv = (DEFAULT_TV if args.tv is None else args.tv) if method == "rl-tv" else 0.0
    start = time.perf_counter()
    with dask_client(args) as client:
        image, known = _shift_negative(args, image)
        restored = deconvolve(image, operator, method, iterations,
                              tv if method == "rl-tv" else None,
                              overlap=args.overlap, background=known, tol=args.tol,
                              accelerate=bool(args.accelerate))
        kept = provenance(metadata, psfmap_command="deconvolve", source=Path(args.image).name,
                          method=method, iterations=iterations, blur=source, volume=True,
                          z_step=z_step, accelerate=bool(args.accelerate),
                          chunks=[int(c) for c in image.chunksize])
        if method == "rl-tv":
            kept["tv"] = tv
        if args.offset:
            kept["offset"] = args.offset
        write_chunked(args, args.output, restored, client, pixel_size=pixel_size,
                      metadata=kept, axes=axes if len(axes) == image.ndim else "ZYX",
                      z_step=z_step, inputs=inputs)
    summary(args, f"deconvolved {'x'.join(str(n) for n in image.shape)} as volumes in "
                  f"{int(np.prod(image.numblocks))} chunk(s) with {method} in 3-D "
                  f"({iterations} iterations, {source}, {where(args)}) in "
                  f"{time.perf_counter() - start:.1f} s -> {args.output}")
    return 0
