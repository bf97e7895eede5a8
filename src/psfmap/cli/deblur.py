"""``psfmap deblur``: blind spatially-variant deblurring (CNN PSF map + RL-TV), frame by frame
for a stack."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from psfmap.cli import UsageError, command_parser
from psfmap.cli._common import (
    check_outputs,
    one_frame,
    progress_bar,
    provenance,
    read_plane,
    summary,
)
from psfmap.cli._large import add_large_flags, wants_chunks
from psfmap.cli.estimate import (
    DEFAULT_MEDIAN,
    add_map_output_arguments,
    add_window_arguments,
    describe_map,
    label_maps,
    load_estimator,
    window_options,
    write_outputs,
)

EXAMPLE = (
    "psfmap deblur cells.tif --model zernike3 -o restored.tif --save-map map.psfmap "
    "--figure map.png"
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from psfmap.blind.verbs import (
        DEFAULT_ENERGY,
        DEFAULT_ITERATIONS,
        DEFAULT_OVERLAP,
        DEFAULT_TILE,
        DEFAULT_TV,
        MIN_TILE,
    )

    parser = command_parser(
        subparsers,
        "deblur",
        "Deblur an image blindly: estimate its PSF map with a CNN on sliding windows, then "
        "Richardson-Lucy with total variation (Shajkofci & Liebling, IEEE TIP 2020).",
        EXAMPLE,
    )
    parser.add_argument(
        "image", metavar="IMAGE",
        help="blurred image (TIFF/PNG, or .ome.zarr read lazily); a stack (..., H, W) is "
        "deblurred frame by frame, each frame with its own map",
    )
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
        "--energy", type=float, default=DEFAULT_ENERGY, metavar="FRACTION",
        help="compress the operator to this fraction of its PSF field's energy where that is "
        f"faster (default {DEFAULT_ENERGY}: PSF field error <= 3.2 %%; 1: the exact operator)",
    )
    # the old name of --energy, kept for one release
    parser.add_argument("--compress", type=float, dest="energy", help=argparse.SUPPRESS)
    parser.add_argument(
        "--tile", type=int, default=DEFAULT_TILE, metavar="PIXELS",
        help="restore frames larger than PIXELS x PIXELS in tiles of at most that size (with "
        f"--overlap px of context): memory bounded by the tile (at least {MIN_TILE}; "
        f"default {DEFAULT_TILE}; 0: always one piece)",
    )
    parser.add_argument(
        "--overlap", type=int, default=DEFAULT_OVERLAP, metavar="PIXELS",
        help=f"context around each tile (default {DEFAULT_OVERLAP})",
    )
    parser.add_argument(
        "--psf-map", default=None,
        help="use this PSF map file instead of estimating one (for a stack: one map for all "
        "frames or one per frame)",
    )
    parser.add_argument("-o", "--output", required=True, help="restored image to write (TIFF, "
                        "or .ome.zarr written chunk by chunk)")
    add_map_output_arguments(parser)
    add_large_flags(parser)
    return parser


def _given_maps(path: str, image: np.ndarray) -> list:
    """The maps of --psf-map for the frames of ``image``: one for all, or one per frame."""
    from psfmap.operators.psf_map import load_psf_maps

    maps = load_psf_maps(path)
    frames = int(np.prod(image.shape[:-2], dtype=int))
    if len(maps) not in (1, frames):
        raise ValueError(
            f"--psf-map holds {len(maps)} maps; {image.ndim}-D image {image.shape} needs one "
            f"map{'' if frames == 1 else f' or {frames} (one per frame)'}"
        )
    for psf_map in maps:
        psf_map.check_covers(image.shape[-2:], f"--psf-map {path!r}")
    return maps


def run(args) -> int:
    from psfmap.blind.verbs import MIN_TILE, deblur, estimate, stack_frames
    from psfmap.io import write_image

    check_outputs(args, [args.image, args.weights, args.psf_map], images=[args.output],
                  files=[args.save_map], figures=[args.figure])
    if args.iterations < 1:
        raise UsageError(f"--iterations must be >= 1, got {args.iterations}")
    if not 0 <= args.tv < float("inf"):
        raise UsageError(f"--tv must be a weight >= 0, got {args.tv}")
    if args.energy is not None and not 0 < args.energy <= 1:
        raise UsageError(f"--energy must be a fraction in (0, 1], got {args.energy}")
    if args.tile != 0 and args.tile < MIN_TILE:
        raise UsageError(f"--tile must be >= {MIN_TILE} pixels (0: one piece), got {args.tile}")
    if args.overlap < 0:
        raise UsageError(f"--overlap must be >= 0 pixels, got {args.overlap}")
    options = window_options(args)
    if args.psf_map is not None:
        estimation = {"--model": args.model, "--weights": args.weights, "--window": args.window,
                      "--stride": args.stride, "--grid": args.grid}
        given = [flag for flag, value in estimation.items() if value is not None]
        if args.median != DEFAULT_MEDIAN:
            given.append("--median")
        if given:
            raise UsageError(f"{', '.join(given)} choose how a map is estimated; with --psf-map "
                             "the map is given")
    if wants_chunks(args, args.image, [args.output]):
        return _run_chunked(args, options)
    image, metadata = read_plane(args.image, args.plane, stack=True, args=args)
    start = time.perf_counter()
    frames = image.reshape(-1, *image.shape[-2:])
    if args.psf_map is not None:
        maps = _given_maps(args.psf_map, image)
    else:
        # every map before the first restoration: a frame that cannot be estimated fails fast
        maps = estimate(frames, load_estimator(args), **options)
    # one map for the whole image, or shared by every frame of a stack
    psf_map = maps[0] if len(maps) == 1 else maps
    label_maps(psf_map, Path(args.image).name, metadata.get("pixel_size"))
    maps = maps * len(frames) if len(maps) == 1 else maps
    with progress_bar(args, len(frames), "deblur") as bar:

        def restore(index: int, frame: np.ndarray) -> np.ndarray:
            # a frame restored on its own: its warnings and errors name it in the stack
            with stack_frames(lambda _: index, len(frames)):
                restored = deblur(frame, iterations=args.iterations, tv=args.tv,
                                  psf_map=maps[index], energy=_energy(args.energy),
                                  tile=args.tile or None,
                                  overlap=args.overlap)
            bar.update(1)
            return restored

        restored = np.stack([restore(index, frame) for index, frame in enumerate(frames)])
    elapsed = time.perf_counter() - start
    axes = metadata.get("axes")
    description = provenance(
        metadata,
        psfmap_command="deblur",
        source=Path(args.image).name,
        model=maps[0].family.name,
        iterations=args.iterations,
        tv=args.tv,
        grid=list(maps[0].grid),
        energy=_energy(args.energy),
    )
    write_image(
        args.output,
        restored.reshape(image.shape),
        pixel_size=metadata.get("pixel_size"),
        metadata=description,
        axes=axes if axes and len(axes) == image.ndim else None,
        inputs=[args.image],
    )
    written = [args.output, *write_outputs(args, image, psf_map)]
    what = "" if image.ndim == 2 else f"{len(frames)} frames of "
    summary(
        args,
        f"deblurred {what}{image.shape[-2]}x{image.shape[-1]} with {describe_map(psf_map)}, "
        f"RL-TV {args.iterations} iterations λ={args.tv:g}, in {elapsed:.1f} s -> "
        f"{', '.join(written)}",
    )
    return 0


def _energy(value: float | None) -> float | None:
    """--energy 1 keeps the whole PSF field: the exact operator."""
    return None if value is None or value >= 1 else value


def _run_chunked(args, options: dict) -> int:
    """Chunked deblurring (dask): every frame of an OME-Zarr (or TIFF) input deblurred as in
    memory, frames in parallel on threads or a cluster (--workers / --scheduler), an OME-Zarr
    output written chunk by chunk (--resume completes an interrupted one).

    --plane takes one frame of a stack lazily. With --save-map or --figure the maps are
    estimated first, one per frame on its whole frame (on the cluster when there is one),
    saved, and the frames then restored with them (so they are estimated once); otherwise
    every frame's map is estimated where the frame is restored."""
    from psfmap.blind.verbs import deblur
    from psfmap.cli._large import dask_client, read_lazy, where, write_chunked

    image, metadata = read_lazy(args.image, args.chunk)
    image, framed = one_frame(image, metadata, args.plane, args.image)
    axes = framed.get("axes")
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    frames = int(np.prod(image.shape[:-2], dtype=int))
    psf_map = None
    if args.psf_map is not None:
        maps = _given_maps(args.psf_map, image)
        psf_map = maps[0] if len(maps) == 1 else maps
        label_maps(psf_map, Path(args.image).name, metadata.get("pixel_size"))
    start = time.perf_counter()
    with dask_client(args) as client:
        if psf_map is None and (args.save_map is not None or args.figure is not None):
            maps = _estimate_frames(image, load_estimator(args), options, client)
            psf_map = maps[0] if frames == 1 else maps
            label_maps(psf_map, Path(args.image).name, metadata.get("pixel_size"))
        estimation = {} if psf_map is not None else {
            "model": load_estimator(args), **options}
        settings = {"iterations": args.iterations, "tv": args.tv,
                    "energy": _energy(args.energy), "tile": args.tile or None,
                    "overlap": args.overlap}
        restored = deblur(image, psf_map=psf_map, **settings, **estimation)
        first = psf_map[0] if isinstance(psf_map, list) else psf_map
        description = provenance(
            metadata, psfmap_command="deblur", source=Path(args.image).name,
            model=first.family.name if first is not None else args.model,
            iterations=args.iterations, tv=args.tv, energy=_energy(args.energy),
            chunks=[int(c) for c in restored.chunksize])
        if args.plane is not None:
            description["plane"] = args.plane
        if first is not None:
            description["grid"] = list(first.grid)
        write_chunked(args, args.output, restored, client,
                      pixel_size=metadata.get("pixel_size"), metadata=description,
                      axes=axes if axes and len(axes) == image.ndim else None,
                      inputs=[p for p in (args.image, args.psf_map) if p is not None])
    written = [args.output]
    if psf_map is not None and args.save_map is not None:  # the map itself, full size
        written += write_outputs(argparse.Namespace(**{**vars(args), "figure": None}), image,
                                 psf_map)
    if psf_map is not None and args.figure is not None:  # drawn over a downsampled view
        written += write_outputs(argparse.Namespace(**{**vars(args), "save_map": None}),
                                 _overview(image, psf_map), _overview_map(psf_map, image))
    mapped = f" with {describe_map(psf_map)}" if psf_map is not None else ""
    summary(args, f"deblurred {'x'.join(str(n) for n in image.shape)} in "
                  f"{int(np.prod(restored.numblocks))} chunk(s){mapped}, RL-TV "
                  f"{args.iterations} iterations λ={args.tv:g} ({where(args)}) in "
                  f"{time.perf_counter() - start:.1f} s -> {', '.join(written)}")
    return 0


# the figure of a chunked run is drawn over a view of the image at most this many px wide
OVERVIEW_SIDE = 1024


def _estimate_frames(image, estimator, options: dict, client) -> list:
    """One PSF map per frame of the dask array ``image`` (..., H, W), each estimated on its
    whole frame as :func:`psfmap.estimate` does, frames in parallel on the cluster of
    ``client`` (or on threads)."""
    import dask

    from psfmap.blind.verbs import estimate

    model = dask.delayed(estimator, pure=True)  # shipped once, shared by the frames
    flat = image.reshape(-1, *image.shape[-2:], merge_chunks=False)
    tasks = [dask.delayed(estimate, pure=True)(flat[index].rechunk(-1), model, **options)
             for index in range(flat.shape[0])]
    if client is not None:
        return list(client.gather(client.compute(tasks)))
    return list(dask.compute(*tasks, scheduler="threads"))


def _overview_factor(image) -> int:
    """The integer step that brings the frame's longer side to at most OVERVIEW_SIDE px."""
    return max(1, -(-max(image.shape[-2:]) // OVERVIEW_SIDE))


def _overview(image, psf_map) -> np.ndarray:
    """The background of the figure: the frames' maximum projection (a list of maps draws no
    image: an empty stand-in), block-averaged to at most OVERVIEW_SIDE px."""
    if isinstance(psf_map, list):
        return np.zeros((1, 1), np.float32)
    import dask.array as da

    flat = image.reshape(-1, *image.shape[-2:], merge_chunks=False).max(axis=0)
    factor = _overview_factor(image)
    if factor > 1:
        flat = da.coarsen(np.mean, flat, {0: factor, 1: factor}, trim_excess=True)
    return np.asarray(flat.compute())


def _overview_map(psf_map, image):
    """``psf_map`` as drawn over :func:`_overview`: the same cells and PSFs over the
    downsampled frame (a list of maps, drawn parameter by parameter, is kept)."""
    factor = _overview_factor(image)
    if isinstance(psf_map, list) or factor == 1:
        return psf_map
    from psfmap.operators.psf_map import PSFMap

    shape = tuple(n // factor for n in image.shape[-2:])
    return PSFMap(psf_map.family, psf_map.params, shape, validity=psf_map.validity,
                  metadata=dict(psf_map.metadata), std=psf_map.std)
