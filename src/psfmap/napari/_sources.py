"""The blur sources of the Deconvolve widget beyond one 2-D PSF: files, volumes, families.

* **Volumes.** A 3-D PSF ``(d, h, w)``, a grid of 3-D PSFs ``(gz, gy, gx, d, h, w)`` or a 3-D
  operator restores the last three axes of the image layer, ``(..., Z, Y, X)``, as volumes
  (:func:`psfmap.deconvolve`, which runs :func:`psfmap.restore.richardson_lucy_volume`). The
  stack's z-step is its layer's z scale; a PSF that says its own z-step (a PSF layer with a
  z scale, a TIFF with ``PhysicalSizeZ``, an operator's ``z_step`` metadata) must agree with
  it within the tolerance of ``psfmap deconvolve`` (no resampling is done).
* **Operator families.** A calibrated :class:`~psfmap.calibrate.OperatorFamily` (a
  ``.psfmap`` written by ``psfmap calibrate`` or the Calibrate widget, or the eigen-PSFs
  layer the reader or the Calibrate widget shows) gives one operator per frame, as
  ``psfmap identify`` does: :func:`psfmap.calibrate.spikes.identify_from_spikes` from the
  isolated beads of the frame (its defaults, those of the command), or, when the frame has too
  few of them, the mean ``Γ̄ = (1/K) Σ_k Γ_k`` of the calibrated coefficients — a point of
  the family's cone (paper eq. 8), the operator of the average calibrated condition.

Debarnot, Mangeat & Weiss, "Learning low-dimensional models of microscopes", IEEE TCI 7 (2021).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from psfmap.napari._layers import InputError

TITLE = "Deconvolve"
# how the operator of a family is chosen for each frame (the widget's "family operator")
FAMILY_MODES = {
    "auto": "identify from beads, else the mean",
    "beads": "identify from beads",
    "mean": "mean of the calibrated",
}
# axis labels that say the third axis from the end is not z (a 3-D PSF is then refused)
NOT_Z_LABELS = ("t", "time", "c", "ch", "channel", "channels")
# at most this many frames are described one by one in the notification
DESCRIBED_FRAMES = 4


# ---------------------------------------------------------------------------- files
def peek_kind(path: Path) -> tuple[str, dict[str, Any]] | None:
    """``(kind, metadata)`` from the JSON header of a ``.psfmap`` file alone (its arrays are
    not read, so the main thread can call it); ``None`` when it cannot tell (the worker's full
    read then says what is wrong)."""
    import json

    try:
        with zipfile.ZipFile(path) as archive, archive.open("__header__.npy") as stream:
            header = json.loads(np.lib.format.read_array(stream).tobytes().decode("utf-8"))
        return str(header["kind"]), dict(header.get("metadata") or {})
    except Exception:  # noqa: BLE001 - any unreadable header: left to the worker's read
        return None


def read_source(path: Path) -> Any:
    """A PSF array, PSF map(s), operator or operator family from a file (worker thread)."""
    if path.suffix.lower() in (".psfmap", ".npz"):
        from psfmap.napari._io import load_psfmap_file

        return load_psfmap_file(path)[1]
    from psfmap.io import read_image

    psf, _ = read_image(path)
    return np.asarray(psf, dtype=np.float64)


# ---------------------------------------------------------------------------- volumes
def is_volume(blur: Any) -> bool:
    """Whether ``blur`` restores volumes: a 3-D PSF, a grid of 3-D PSFs or a 3-D operator."""
    if hasattr(blur, "forward"):
        return getattr(blur, "ndim", None) == 3
    if isinstance(blur, (list, tuple)) or not hasattr(blur, "shape"):
        return False
    return len(blur.shape) in (3, 6)


def volume_kernel(blur: Any) -> tuple[int, int, int]:
    """``(d, h, w)`` of a volume blur's PSFs."""
    shape = getattr(blur, "kernel_shape", None) if hasattr(blur, "forward") else blur.shape
    return tuple(int(n) for n in tuple(shape)[-3:])  # type: ignore[return-value]


def z_label_of_layer(layer: Any) -> str | None:
    """The label of the layer's third axis from the end (napari's default labels included)."""
    labels = getattr(layer, "axis_labels", None)
    return str(labels[-3]) if labels is not None and len(labels) >= 3 else None


def z_step_of_layer(layer: Any) -> float | None:
    """The z-step of a layer (µm when its units say a length): its scale on the third axis
    from the end; ``None`` when the layer says nothing (unit scale in pixels)."""
    scale = getattr(layer, "scale", None)
    if scale is None or len(scale) < 3:
        return None
    step = float(scale[-3])
    units = getattr(layer, "units", None)
    unit = units[-3] if units is not None and len(units) >= 3 else None
    if unit is None or str(unit) == "pixel":
        return None if step == 1.0 else step
    try:
        return float((step * unit).to("micrometer").magnitude)
    except Exception:  # noqa: BLE001 - a unit that is not a length: the scale as given
        return step


def z_step_of(blur: Any, path: Path | None) -> float | None:
    """The z-step a volume blur says it has: an operator's ``z_step`` metadata, or the
    ``PhysicalSizeZ`` of the TIFF it was read from."""
    metadata = getattr(blur, "metadata", None) or {}
    if metadata.get("z_step"):
        return float(metadata["z_step"])
    if path is not None and path.suffix.lower() in (".tif", ".tiff"):
        from psfmap.io import read_z_step

        return read_z_step(path)
    return None


def check_volume(image_shape: tuple[int, ...], kernel: tuple[int, int, int], source: str,
                 method: str, image_step: float | None, psf_step: float | None,
                 z_label: str | None = None) -> None:
    """Refuse, in one sentence, a volume restoration that cannot run: a 2-D image, a stack
    whose third axis from the end is labelled as time or channels, a PSF deeper or wider than
    the stack, method sparse-smooth, z-steps that disagree."""
    from psfmap.cli._volume import Z_STEP_TOLERANCE

    if len(image_shape) < 3:
        raise InputError(f"{TITLE}: {source} is a 3-D PSF ({kernel[0]}×{kernel[1]}×{kernel[2]}) "
                         f"and restores z-stacks; the image is 2-D ({image_shape[0]}×"
                         f"{image_shape[1]} px): choose a z-stack or a 2-D PSF")
    if z_label is not None and z_label.strip().lower() in NOT_Z_LABELS:
        raise InputError(f"{TITLE}: {source} is a 3-D PSF, but the image's axis "
                         f"{len(image_shape) - 3} is labelled {z_label!r}, not z; a 3-D PSF "
                         "restores (..., Z, Y, X) stacks (move the z axis last but two)")
    depth, height, width = (int(n) for n in image_shape[-3:])
    if kernel[0] > depth:
        raise InputError(f"{TITLE}: the 3-D PSF of {source} is {kernel[0]} planes deep, deeper "
                         f"than the stack's {depth} planes; crop the PSF in z to at most "
                         f"{depth} planes")
    if kernel[1] > height or kernel[2] > width:
        raise InputError(f"{TITLE}: the PSF of {source} ({kernel[1]}×{kernel[2]} px) is larger "
                         f"than the image frames ({height}×{width} px); crop the PSF around "
                         "its centre or choose the right PSF")
    if method == "sparse-smooth":
        raise InputError(f"{TITLE}: method sparse-smooth restores 2-D images; a 3-D PSF "
                         "restores volumes with rl or rl-tv")
    if image_step is not None and psf_step is not None and \
            abs(psf_step - image_step) > Z_STEP_TOLERANCE * image_step:
        raise InputError(f"{TITLE}: {source} has a z-step of {psf_step:g}, the stack "
                         f"{image_step:g}; expected the same axial sampling (resample the PSF "
                         "or set the layers' z scale)")


# ---------------------------------------------------------------------------- families
def is_family(blur: Any) -> bool:
    """Whether ``blur`` is a calibrated :class:`~psfmap.calibrate.OperatorFamily`."""
    from psfmap.calibrate import OperatorFamily

    return isinstance(blur, OperatorFamily)


def check_family_shape(image_shape: tuple[int, ...], family_shape: Any, source: str) -> None:
    """The frames must be the images the family was calibrated on."""
    frame = tuple(int(n) for n in image_shape[-2:])
    calibrated = tuple(int(n) for n in family_shape)
    if frame != calibrated:
        raise InputError(f"{TITLE}: {source} is an operator family calibrated on "
                         f"{calibrated[0]}×{calibrated[1]} px images; the image frames are "
                         f"{frame[0]}×{frame[1]} px (use frames of the calibrated field)")


def family_operator(frame: np.ndarray, family: Any, mode: str) -> tuple[Any, dict[str, Any]]:
    """The operator of one frame within the family, and the report of how it was chosen:
    ``{"operator": "identified" | "mean", "gamma": Γ as nested lists, ...}``.

    ``mode`` is a key of :data:`FAMILY_MODES`. Identification is
    :func:`~psfmap.calibrate.spikes.identify_from_spikes` with its defaults (as
    ``psfmap identify``); in mode ``auto`` its refusal (no beads, too few isolated ones, all
    saturated) falls back on the mean calibrated ``Γ`` and is kept as ``"reason"``.
    """
    reason = None
    if mode in ("auto", "beads"):
        from psfmap.calibrate.spikes import identify_from_spikes

        try:
            operator = identify_from_spikes(frame, family)
        except ValueError as error:
            if mode == "beads":
                raise InputError(f"{TITLE}: cannot identify the family's operator: "
                                 f"{error}") from None
            reason = str(error)
        else:
            info = operator.identification
            return operator, {"operator": "identified", "gamma": np.asarray(info.gamma).tolist(),
                              "beads": len(info.positions),
                              "relative_residual": float(info.relative_residual)}
    gamma = family.gammas.numpy().mean(axis=0)
    report: dict[str, Any] = {"operator": "mean", "gamma": gamma.tolist(),
                              "conditions": family.n_conditions}
    if reason is not None:
        report["reason"] = reason
    return family.operator(gamma), report


def describe_family(reports: list[dict[str, Any]]) -> str:
    """One sentence on the operators used (for the status line and the notification); for
    more than :data:`DESCRIBED_FRAMES` frames only the counts (``Γ`` is in the metadata)."""
    if len(reports) > DESCRIBED_FRAMES:
        identified = sum(report["operator"] == "identified" for report in reports)
        return (f"of {len(reports)} frames: {identified} identified from beads, "
                f"{len(reports) - identified} the mean of the calibrated operators (Γ of every "
                "frame in the layer's metadata)")
    parts = []
    for index, report in enumerate(reports):
        where = f"frame {index}: " if len(reports) > 1 else ""
        gamma = "[" + ", ".join("[" + ", ".join(f"{value:.3g}" for value in row) + "]"
                                for row in np.atleast_2d(report["gamma"])) + "]"
        if report["operator"] == "identified":
            how = (f"identified from {report['beads']} beads (relative residual "
                   f"{report['relative_residual']:.3f})")
        else:
            how = f"mean of the {report['conditions']} calibrated operators"
            if "reason" in report:
                how += " (no identification: " + report["reason"].split(";")[0] + ")"
        parts.append(f"{where}{how}, Γ = {gamma}")
    return "; ".join(parts)
