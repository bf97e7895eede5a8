"""Helpers shared by the sub-commands: output checks, progress bars, summaries, reading one
frame of a stack (--plane), checks of a measured --psf."""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from psfmap._container import sweep_stale_temps
from psfmap.cli import UsageError

# an integer image with at least this fraction of its pixels at the dtype's maximum is
# saturated: those pixels lost their true value and restoration treats them as real
SATURATION_WARNING = 1e-3
# a measured PSF whose flat border level holds more than this fraction of its flux is mostly
# background: normalised to unit sum, its peak is a small bump on a flat kernel
PEDESTAL_WARNING = 0.2


def check_outputs(
    args,
    inputs: Iterable[str | os.PathLike | None],
    outputs: Iterable[str | os.PathLike | None] = (),
    *,
    images: Iterable[str | os.PathLike | None] = (),
    figures: Iterable[str | os.PathLike | None] = (),
    files: Iterable[str | os.PathLike | None] = (),
) -> None:
    """Check every output before any work, so that a bad one costs nothing and leaves nothing.

    Refuses an output that is an input, a folder, in a missing folder, or named twice, and
    an extension that does not fit: ``images`` are TIFF, ``figures`` a format matplotlib
    writes, ``files`` (operators, maps, families) anything but those two. The outputs that do
    not exist yet are recorded in ``args.created``: :func:`psfmap.cli.main` removes them if
    the command fails (it also defers every write to the end of a command,
    :func:`psfmap._container.deferred_writes`, except for ``train``).
    """
    from psfmap.figures import FIGURE_SUFFIXES
    from psfmap.io import TIFF_SUFFIXES

    kinds = [(outputs, None), (images, "image"), (figures, "figure"), (files, "file")]
    named = [(path, kind) for group, kind in kinds for path in group if path is not None]
    resolved_inputs = {Path(p).resolve() for p in inputs if p is not None}
    seen = set()
    for output, kind in named:
        target = Path(output).resolve()
        if target in resolved_inputs:
            raise UsageError(f"output {str(output)!r} is also an input; refusing to overwrite it")
        if target in seen:
            raise UsageError(f"output {str(output)!r} is named twice; outputs must differ")
        seen.add(target)
        if kind == "image" and str(target).lower().endswith(".zarr"):
            # an OME-Zarr store: a folder written chunk by chunk, kept for --resume on failure
            # (psfmap.cli._large); an existing one needs --resume or --overwrite
            from psfmap.cli._large import check_zarr_output

            if not target.parent.is_dir():
                raise UsageError(f"output folder {str(Path(output).parent)!r} does not exist")
            check_zarr_output(args, output)
            continue
        if target.is_dir():
            raise UsageError(f"output {str(output)!r} is a folder; expected a file name")
        if not target.parent.is_dir():
            raise UsageError(f"output folder {str(Path(output).parent)!r} does not exist")
        suffix = target.suffix.lower()
        if kind == "image" and suffix not in TIFF_SUFFIXES:
            raise UsageError(f"output {str(output)!r} is an image: give it a .tif or .ome.zarr "
                             "name")
        if kind == "figure" and suffix not in FIGURE_SUFFIXES:
            raise UsageError(f"figure {str(output)!r}: expected one of "
                             f"{', '.join(FIGURE_SUFFIXES)}")
        if kind == "file" and suffix in (*TIFF_SUFFIXES, *FIGURE_SUFFIXES):
            raise UsageError(f"output {str(output)!r} is a psfmap file, not an image or a "
                             "figure: give it a .psfmap name")
        check_writable(output)
    args.created = [Path(path) for path, kind in named if not Path(path).exists()
                    and not (kind == "image" and str(path).lower().endswith(".zarr"))]
    for path, _ in named:  # temporary files of earlier runs killed outright (SIGKILL)
        sweep_stale_temps(path)


def check_writable(output: str | os.PathLike) -> None:
    """Refuse, before any work, an output that the file system would refuse at the end.

    The folder is probed by creating (and removing) a temporary file the way the write will,
    which also catches what ``os.access`` cannot see for root (a read-only mount, an
    immutable folder); an existing file must be writable (a read-only or immutable file is
    one its owner protected: it is not replaced).
    """
    target = Path(output)
    folder = target.parent
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.{os.getpid()}.",
                                         suffix=".tmp")
    except OSError as error:
        raise UsageError(f"output folder {str(folder)!r} is not writable "
                         f"({error.strerror or error}); choose another folder for "
                         f"{str(output)!r}") from None
    os.close(handle)
    Path(probe).unlink(missing_ok=True)
    if target.exists() and not os.access(target, os.W_OK):
        raise UsageError(f"output {str(output)!r} exists and is read-only; remove it or "
                         "choose another name")


def remove_created(args) -> None:
    """Remove the outputs a failed command created (see :func:`check_outputs`)."""
    for path in getattr(args, "created", []):
        path.unlink(missing_ok=True)


def show_progress(args) -> bool:
    """Progress bars only on a terminal and without --quiet."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def progress_bar(args, total: int, description: str):
    """A tqdm bar (disabled when not a TTY or with --quiet); use as a context manager."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, disable=not show_progress(args), leave=False)


def summary(args, line: str) -> None:
    """Print the one-line summary unless --quiet."""
    if not getattr(args, "quiet", False):
        print(line)


def provenance(metadata: dict, **step) -> dict:
    """The JSON description of an output: this step's settings, the input's axes, and the
    input's own description nested under ``input`` (so a restored image of a simulated one
    does not look simulated itself)."""
    described = dict(step)
    earlier = {k: v for k, v in (metadata.get("description") or {}).items()
               if k not in ("pixel_size", "axes")}
    if earlier:
        described["input"] = earlier
    if metadata.get("axes"):
        described["axes"] = metadata["axes"]
    if metadata.get("plane") is not None:  # the frame of a stack that was taken (--plane)
        described["plane"] = metadata["plane"]
    return described


def warn(args, line: str) -> None:
    """A one-line warning on stderr (shown even with --quiet: it concerns the result)."""
    print(f"psfmap {args.command}: warning: {line}", file=sys.stderr)


def parse_pair(text: str, name: str, cast=int) -> tuple:
    """Parse '4x4' or '4' into a pair."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = tuple(cast(p) for p in parts)
    except ValueError:
        raise UsageError(f"{name} must look like 4x4, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise UsageError(f"{name} must look like 4x4, got {text!r}")
    return values


def check_number(
    value: float | int | None,
    flag: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
    expected: str | None = None,
) -> None:
    """Refuse a bad option value with a usage error (exit 2): not finite, below ``minimum``
    (or at it with ``strict``), above ``maximum``. ``None`` (option not given) passes."""
    if value is None:
        return
    low_ok = minimum is None or (value > minimum if strict else value >= minimum)
    high_ok = maximum is None or value <= maximum
    if not math.isfinite(value) or not low_ok or not high_ok:
        if expected is None:
            parts = []
            if minimum is not None:
                parts.append(f"{'>' if strict else '>='} {minimum:g}")
            if maximum is not None:
                parts.append(f"<= {maximum:g}")
            expected = "a finite number" + (f" {' and '.join(parts)}" if parts else "")
        raise UsageError(f"{flag} must be {expected}, got {value}")


def warn_saturated(args, image, name: str) -> float:
    """Warn (one line) when an integer image has many pixels at its dtype's maximum; return
    the saturated fraction (0 for a float image)."""
    import numpy as np

    array = np.asarray(image)
    if not np.issubdtype(array.dtype, np.integer) or array.size == 0:
        return 0.0
    top = np.iinfo(array.dtype).max
    fraction = float(np.count_nonzero(array == top)) / array.size
    if fraction >= SATURATION_WARNING:
        warn(args, f"{name} is saturated: {100 * fraction:.2g} % of its pixels are at the "
                   f"{array.dtype} maximum {top}; their true intensity is lost and the "
                   "restoration around them is unreliable")
    return fraction


def border_level(psf) -> float:
    """The flat level under a PSF (2-D or 3-D): the 10th percentile of its border pixels
    (every face of a 3-D PSF). A background lifts the whole border, corners included; a
    tightly cropped clean PSF only the middle of its edges."""
    import numpy as np

    psf = np.asarray(psf, dtype=np.float64)
    inner = np.zeros(psf.shape, dtype=bool)
    inner[tuple(slice(1, -1) for _ in psf.shape)] = True
    border = psf[~inner]
    return float(np.percentile(border, 10)) if border.size else 0.0


def pedestal_fraction(psf) -> float:
    """Fraction of a PSF's flux in the flat level under it: ``b · size / sum``,
    ``b`` = :func:`border_level`."""
    import numpy as np

    total = float(np.sum(psf))
    if not total > 0:
        return 0.0
    return float(max(border_level(psf), 0.0) * np.size(psf) / total)


def _cropped_psf(psf, size: int, name: str):
    """``psf`` cropped laterally to ``size × size`` around its brightest pixel (of its
    maximum projection for a 3-D PSF), the window kept inside the array."""
    import numpy as np

    height, width = psf.shape[-2:]
    if size < 1 or size % 2 == 0:
        raise UsageError(f"--psf-crop must be an odd number of pixels, got {size}")
    if size > min(height, width):
        raise UsageError(f"--psf-crop {size} is larger than --psf {name} ({height}x{width})")
    plane = psf.reshape(-1, height, width).max(axis=0)
    row, col = np.unravel_index(int(np.argmax(plane)), plane.shape)
    top = min(max(int(row) - size // 2, 0), height - size)
    left = min(max(int(col) - size // 2, 0), width - size)
    return psf[..., top : top + size, left : left + size]


def psf_preparation(args) -> str:
    """What --psf-crop / --psf-background did to --psf, for the summary and the output's
    description (empty when neither was asked)."""
    done = [f"cropped to {args.psf_crop} px"] if args.psf_crop is not None else []
    if args.psf_background:
        done.append("background subtracted")
    return f" ({', '.join(done)})" if done else ""


def checked_psf(args, psf):
    """A ``--psf`` array made ready for the verbs, with one line for what the user should
    know: freed of its background (--psf-background) and cropped (--psf-crop) when asked;
    negative values (the noise of a background subtraction) clipped under --clip-psf
    with a warning, else refused naming the option; a PSF whose border level carries much
    of its flux (background not subtracted) warned about."""
    import numpy as np

    name = Path(args.psf).name
    # the background is read on the whole field's border (a crop's border is the PSF's tail)
    if args.psf_background and np.isfinite(psf).all():
        psf = np.clip(psf - border_level(psf), 0.0, None)  # and the noise that falls below 0
    if args.psf_crop is not None:
        psf = _cropped_psf(psf, args.psf_crop, name)
    if not np.isfinite(psf).all():
        return psf  # non-finite values: the verb's own message
    negative = psf < 0
    if negative.any():
        mass = float(np.abs(psf).sum())
        fraction = float(-psf[negative].sum()) / mass if mass > 0 else 1.0
        if not args.clip_psf:
            raise ValueError(
                f"--psf {args.psf!r} has negative values (minimum {float(psf.min()):.3g}, "
                f"{100 * fraction:.2g} % of its mass); pass --clip-psf to set them to 0")
        warn(args, f"--clip-psf set {int(negative.sum())} negative values of --psf {name} "
                   f"to 0 ({100 * fraction:.2g} % of its mass)")
        psf = np.clip(psf, 0.0, None)
    if (pedestal := pedestal_fraction(psf)) > PEDESTAL_WARNING:
        warn(args, f"the border level of --psf {name} carries {100 * pedestal:.0f} % of its "
                   "flux: subtract the background and crop the PSF around the bead "
                   "(--psf-background, --psf-crop), or the restoration barely sharpens")
    return psf


def _shape_text(shape: tuple, axes: str | None) -> str:
    return f"shape {tuple(shape)}" + (f", axes {axes}" if axes and len(axes) == len(shape)
                                       else "")


def select_frame(image: Any, plane: int, path: str, axes: str | None = None) -> Any:
    """Frame ``plane`` of a stack ``(..., H, W)``: its leading axes (Z, T, C...) counted
    together in file order, so that a TCYX file has ``T · C`` frames. Works on NumPy and dask
    arrays (no copy of the other frames)."""
    import numpy as np

    if image.ndim < 3:
        raise UsageError(f"--plane applies to a stack; {path!r} is one image of shape "
                         f"{tuple(image.shape)}")
    lead = tuple(int(n) for n in image.shape[:-2])
    count = int(np.prod(lead))
    if not 0 <= plane < count:
        raise UsageError(f"--plane must be in [0, {count - 1}] (the frames of "
                         f"{_shape_text(image.shape, axes)} in file order), got {plane}")
    return image[tuple(int(i) for i in np.unravel_index(plane, lead))]


def one_frame(image: Any, metadata: dict, plane: int | None, path: str) -> tuple[Any, dict]:
    """With a ``plane``, frame ``plane`` of the stack (:func:`select_frame`) and its metadata
    with the frame's own axes and the plane recorded; without, both unchanged."""
    if plane is None:
        return image, metadata
    axes = metadata.get("axes")
    lead = image.ndim - 2
    frame = select_frame(image, plane, path, axes)
    return frame, {**metadata, "axes": axes[lead:] if axes and len(axes) == lead + 2 else None,
                   "plane": plane}


def read_plane(
    path: str, plane: int | None, *, stack: bool = False, args=None
) -> tuple[Any, dict[str, Any]]:
    """Read a 2-D image, or one frame of a stack (``plane``, :func:`select_frame`), as a
    float32/float64 array (with ``args``, a saturated integer image is warned about).

    With ``stack`` and no ``plane``, a stack is returned whole, ``(..., H, W)``: its leading
    axes are frames (planes, time points, channels).
    """
    import numpy as np

    from psfmap.io import read_image

    image, metadata = read_image(path)
    image = np.asarray(image)
    if plane is None and image.ndim > 2 and all(n == 1 for n in image.shape[:-2]):
        image = image.reshape(image.shape[-2:])
    if plane is not None:
        image = select_frame(image, plane, path, metadata.get("axes"))
    elif image.ndim >= 3 and not stack:
        raise UsageError(
            f"{path!r} is a stack of {int(np.prod(image.shape[:-2]))} planes "
            f"({_shape_text(image.shape, metadata.get('axes'))}); choose one with --plane"
        )
    if image.ndim < 2 or (image.ndim > 2 and not stack):
        raise ValueError(f"{path!r} must be a 2-D image, got shape {image.shape}")
    if args is not None:
        warn_saturated(args, image, Path(path).name)
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    return image, metadata
