"""``psfmap deconvolve`` of z-stacks as volumes, when the PSF or the operator is 3D.

Kept apart from :mod:`psfmap.cli.deconvolve` (the 2D, tiled and chunked paths): reading the
z-step, telling the z axis apart, the 3D verb, voxel sizes kept, orthogonal views.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from psfmap.cli import UsageError
from psfmap.cli._common import (
    checked_psf,
    progress_bar,
    provenance,
    psf_preparation,
    summary,
    warn,
)
from psfmap.io import read_z_step

# a PSF's z-step may differ from the stack's by this fraction (no resampling is done)
Z_STEP_TOLERANCE = 0.02


def add_volume_flags(parser) -> None:
    """The flags of the volume path (shared with nothing else)."""
    parser.add_argument(
        "--z-step", type=float, default=None, metavar="MICRONS",
        help="axial step of the stack in µm, when its metadata does not say it (a 3-D --psf "
        "or a 3-D --operator restores the stack as a volume)")
    parser.add_argument(
        "--plane-by-plane", action="store_true",
        help="with a 3-D --psf: restore every plane in 2-D with the PSF's brightest plane "
        "(the former behaviour) instead of as a volume")
    parser.add_argument(
        "--accelerate", action="store_true",
        help="Biggs-Andrews accelerated Richardson-Lucy, for images and volumes (plain RL's "
             "error in about 2.5x fewer iterations)")
    parser.add_argument(
        "--views", default=None, metavar="PNG",
        help="volumes: also write XY/XZ/YZ orthogonal views of the stack and the result")


def volume_operator(args, image: np.ndarray) -> tuple[Any, str] | None:
    """The 3D operator and its description when the stack is to be restored as a volume
    (a 3-D --psf or a 3-D --operator with a stack), else None (the 2D path)."""
    if args.psf is not None:
        from psfmap.io import read_image

        psf, _ = read_image(args.psf)
        psf = np.asarray(psf, dtype=np.float64)
        if psf.ndim != 3 or image.ndim < 3 or args.plane_by_plane:
            return None
        psf = checked_psf(args, psf)
        if any(k > n for k, n in zip(psf.shape[-2:], image.shape[-2:], strict=True)):
            raise ValueError(f"--psf {args.psf!r} is {psf.shape[-2]}x{psf.shape[-1]} px across, "
                             f"wider than the stack ({image.shape[-2]}x{image.shape[-1]}); crop "
                             "it around the bead, e.g. --psf-crop 65")
        if not np.isfinite(psf).all() or not psf.sum() > 0:
            raise ValueError(f"--psf {args.psf!r} must be a finite, non-negative 3-D PSF with a "
                             "positive sum (subtract the background and clip it first)")
        from psfmap.operators import Convolution

        return (Convolution(psf / psf.sum()),
                f"3-D PSF {Path(args.psf).name}{psf_preparation(args)}")
    if args.operator is not None:
        from psfmap.operators import load

        operator = load(args.operator)
        if getattr(operator, "ndim", 2) != 3:
            return None
        if image.ndim < 3:
            raise ValueError(f"--operator {args.operator!r} is a 3-D operator; {args.image!r} "
                             f"must be a z-stack (Z, Y, X), got shape {image.shape}")
        return operator, f"3-D operator {Path(args.operator).name}"
    return None


def _check_same_step(args, stack_step: float) -> None:
    """A 3-D ``--psf`` file that states its own z-step must sample z as the stack does."""
    step = read_z_step(args.psf) if args.psf is not None else None
    if step is not None and abs(step - stack_step) > Z_STEP_TOLERANCE * stack_step:
        raise ValueError(f"--psf {args.psf!r} has a z-step of {step:g} µm, the stack "
                         f"{stack_step:g} µm; expected the same axial sampling (resample the PSF)")


def stack_z_step(args, metadata: dict) -> float:
    """The stack's z-step in µm: ``--z-step``, else the file's metadata; a usage error when
    neither says or the value is not a step, an error when a 3-D ``--psf`` file states another
    (both volume paths, in memory and chunked, call this once before restoring)."""
    z_step = args.z_step if args.z_step is not None else metadata.get("z_step")
    if z_step is None:
        raise UsageError(f"the z-step of {args.image!r} is unknown (no PhysicalSizeZ, spacing, "
                         "z scale or z_step in its metadata): pass --z-step in µm")
    if not 0 < z_step < float("inf"):
        raise UsageError(f"--z-step must be a step in µm > 0, got {z_step}")
    _check_same_step(args, float(z_step))
    return float(z_step)


def _z_axis_last(args, image: np.ndarray, axes: str | None) -> tuple[np.ndarray, tuple]:
    """The stack as ``(..., Z, Y, X)`` and how to put it back: 3 axes are ZYX; with more,
    the axes metadata must name Z once."""
    if image.ndim == 3:
        return image, (None, image.shape)
    letters = (axes or "").upper()
    if len(letters) != image.ndim or letters.count("Z") != 1 or letters[-2:] != "YX":
        raise ValueError(
            f"cannot tell which axis of {args.image!r} (shape {image.shape}, axes "
            f"{axes!r}) is Z; expected a (Z, Y, X) stack or axes metadata naming Z once")
    z = letters.index("Z")
    moved = np.moveaxis(image, z, -3)
    return moved, (z, moved.shape)


def run_volume(args, image: np.ndarray, metadata: dict, method: str, iterations: int,
               known: float, operator: Any, source: str, inputs: list) -> int:
    """Restore the stack(s) as volumes and write the result (and --views)."""
    from psfmap.io import write_image
    from psfmap.restore import DEFAULT_TV
    from psfmap.restore.volume import richardson_lucy_volume

    if method == "sparse-smooth":
        raise UsageError("--method sparse-smooth restores 2-D images; a 3-D PSF or operator "
                         "restores with rl or rl-tv (or pass --plane-by-plane)")
    if args.tile:
        raise UsageError("--tile applies to 2-D restoration; a volume is restored in one piece")
    pixel_size = metadata.get("pixel_size")
    z_step = stack_z_step(args, metadata)
    stack, (z_axis, moved_shape) = _z_axis_last(args, image, metadata.get("axes"))
    volumes = stack.reshape((-1,) + stack.shape[-3:])
    tv = (DEFAULT_TV if args.tv is None else args.tv) if method == "rl-tv" else 0.0
    reached: list[int] = []
    start = time.perf_counter()
    restored = np.empty_like(volumes)
    with progress_bar(args, len(volumes) * iterations, f"deconvolve 3-D ({method})") as bar:
        for index, volume in enumerate(volumes):
            def advance(iteration, *_):
                bar.update(1)
                reached.append(int(iteration))

            restored[index] = richardson_lucy_volume(
                volume, operator, iterations=iterations, tv=tv, background=known, tol=args.tol,
                accelerate=args.accelerate, callback=advance)
    elapsed = time.perf_counter() - start
    result = restored.reshape(moved_shape)
    if z_axis is not None:
        result = np.moveaxis(result, -3, z_axis)
    ran = max(reached, default=iterations)
    kept = provenance(metadata, psfmap_command="deconvolve", source=Path(args.image).name,
                      method=method, iterations=iterations, iterations_run=ran, blur=source,
                      volume=True, z_step=z_step, accelerate=bool(args.accelerate))
    if method == "rl-tv":
        kept["tv"] = tv
    axes = metadata.get("axes")
    write_image(args.output, result, pixel_size=pixel_size, metadata=kept, z_step=z_step,
                axes=axes if axes and len(axes) == image.ndim and "Z" in axes.upper()
                else ("ZYX" if image.ndim == 3 else None), inputs=inputs)
    if args.views is not None:
        from psfmap.orthoviews import save_orthogonal_views

        save_orthogonal_views(args.views, [volumes[0], restored[0]],
                              [Path(args.image).name, "restored (3-D)"], z_step=z_step,
                              pixel_size=pixel_size or z_step, gamma=0.7)
    if pixel_size is None:
        warn(args, f"{Path(args.image).name} gives no pixel size; the output keeps none")
    accelerated = ", accelerated" if args.accelerate else ""
    summary(args, f"deconvolved {len(volumes)} volume(s) of "
                  f"{'x'.join(str(n) for n in volumes.shape[1:])} (z-step {z_step:g} µm) with "
                  f"{method} in 3-D ({iterations} iterations{accelerated}, {source}) in "
                  f"{elapsed:.1f} s -> {args.output}")
    return 0
