"""Calibration from bead z-stacks: a 3-D operator whose PSFs vary with depth and field.

The 3-D form of :mod:`psfmap.calibrate.calibration` for one z-stack of beads (embedded at
several depths, or spread on a coverslip):

1. detect beads with the anisotropic 3-D LoG (:mod:`psfmap.calibrate.volume_detection`),
   reject saturated ones;
2. clean, isolated, sub-voxel centred, background-free, normalised 3-D patches
   (:mod:`psfmap.calibrate.volume_patches`), outliers rejected;
3. eigen-PSFs ``u_i`` by the (uncentred) PCA of the flattened patches
   (:func:`psfmap.calibrate.eigen.eigen_psfs`; Debarnot, Mangeat & Weiss, IEEE TCI 2021, eq. 5);
4. for every eigen-PSF, a smoothing thin-plate spline of its coefficients at the bead centres
   ``(z, y, x)`` (kernel ``−r`` in 3-D, λ by exact leave-one-out cross-validation,
   :func:`psfmap.calibrate.spatial.fit_thin_plate_spline`), with the axial coordinate scaled
   by the voxel aspect ``z_step / pixel_size`` so that the smoothness is isotropic in µm,
   evaluated on a coarse ``gz × gy × gx`` grid;
5. the operator ``H f = Σ_i u_i ⋆ (w_i · f)`` with ``w_i`` the trilinear interpolation of the
   coarse maps, stored factored (:meth:`VolumeProductConvolution.from_factors`: hat profiles
   in z, y, x and a core ``(I, gz, gy, gx)``): the depth-variant strata model of Preza &
   Conchello (JOSA A 2004) extended to the field.

The PSF of a source at voxel ``(z, y, x)`` is ``Σ_i w_i(z, y, x) u_i``, centred on the bead's
observed (apparent) centre: bead images cannot tell the axial focal shift between a
source's true and apparent depth, so the operator lives in the stack's recorded coordinates.

When the beads lie on one surface (a coverslip, even tilted: their z about the best plane
through them spans less than ``min_coverage`` of the stack), depth and field cannot be told
apart; the maps are then fitted in ``(y, x)`` only and the operator is field-variant and
constant in depth (``metadata["calibration"]["depth_variant"]`` is False).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from psfmap._validation import check_positive, describe
from psfmap.calibrate.calibration import estimate_psf_sigma
from psfmap.calibrate.detection import default_saturation, detect_beads
from psfmap.calibrate.eigen import eigen_psfs
from psfmap.calibrate.options import CalibrationOptions
from psfmap.calibrate.patches import PatchSet
from psfmap.calibrate.spatial import coarse_grid, coefficient_maps
from psfmap.calibrate.volume_detection import as_stack, detect_beads_3d
from psfmap.calibrate.volume_patches import volume_patches
from psfmap.metrics import fwhm
from psfmap.operators.volume import VolumeProductConvolution

__all__ = ["calibrate_volume", "collect_volume_patches", "estimate_psf_sigma_3d",
           "fit_volume_operator", "resolve_options"]


def estimate_psf_sigma_3d(stack: Any, *, saturation: float | None = None,
                          beads: int = 20) -> tuple[float, float]:
    """Lateral (px) and axial (planes) PSF scale ``(σ, σ_z)`` of a bead z-stack.

    ``σ`` is :func:`psfmap.calibrate.estimate_psf_sigma` on the maximum projection along z;
    ``σ_z`` is the median of ``FWHM / 2.3548`` of the axial profiles (the core summed over
    ``±2σ``, minus its 20th percentile) of the ``beads`` strongest beads of that projection.
    """
    array = as_stack(stack)
    if saturation is None:
        saturation = default_saturation(stack)
    projection = array.max(axis=0).astype(np.float64)
    sigma = estimate_psf_sigma(projection, saturation=saturation)
    core = max(1, int(np.ceil(2 * sigma)))
    detection = detect_beads(projection, sigma, k=8.0, margin=core + 1, saturation=saturation,
                             min_distance=max(2, int(round(3 * sigma))))
    widths = []
    for y, x in detection.good[:beads]:
        profile = array[:, y - core:y + core + 1, x - core:x + core + 1].sum(axis=(1, 2))
        profile = profile - np.percentile(profile, 20)
        try:
            widths.append(fwhm(profile) / 2.3548)
        except ValueError:  # no positive peak, or a profile cut by the stack's ends
            continue
    if not widths:
        raise ValueError("could not measure the axial PSF scale: no bead of the stack has a "
                         "full axial profile inside it; pass psf_sigma_z (planes)")
    sigma_z = float(np.clip(np.median(widths), 0.7, array.shape[0] / 4))
    return float(sigma), sigma_z


def default_psf_depth(psf_sigma_z: float) -> int:
    """Odd number of planes ``2 ceil(4 σ_z) + 1`` of a 3-D bead patch."""
    return 2 * int(np.ceil(4 * psf_sigma_z)) + 1


def resolve_options(stack: np.ndarray, options: CalibrationOptions) -> CalibrationOptions:
    """``options`` with the PSF scales and patch sizes of a z-stack filled in (estimated by
    :func:`estimate_psf_sigma_3d` when missing; patches ``2 ceil(6 σ) + 1`` pixels wide and
    ``2 ceil(4 σ_z) + 1`` planes deep)."""
    from psfmap.calibrate.calibration import default_psf_size

    sigma, sigma_z = options.psf_sigma, options.psf_sigma_z
    if sigma is None or sigma_z is None:
        estimated = estimate_psf_sigma_3d(stack, saturation=options.saturation)
        sigma = estimated[0] if sigma is None else sigma
        sigma_z = estimated[1] if sigma_z is None else sigma_z
    size = options.psf_size if options.psf_size is not None else default_psf_size(sigma)
    depth = options.psf_depth if options.psf_depth is not None else default_psf_depth(sigma_z)
    for name, value, least in (("psf_size", size, 5), ("psf_depth", depth, 3)):
        if value < least or value % 2 == 0:
            raise ValueError(f"{name} must be an odd integer >= {least}, got {value!r}")
    return options.replace(psf_sigma=float(sigma), psf_sigma_z=float(sigma_z),
                           psf_size=int(size), psf_depth=int(depth))


def collect_volume_patches(stack: Any, options: CalibrationOptions | None = None, *,
                           name: str = "stack", **settings: Any) -> PatchSet:
    """Detect and clean the beads of a z-stack: a :class:`PatchSet` of ``(N, d, h, w)`` patches
    with sub-voxel ``(z, y, x)`` centres.

    ``options`` (with keyword ``settings`` overriding it) must give ``psf_size``,
    ``psf_depth``, ``psf_sigma`` and ``psf_sigma_z`` (:func:`calibrate_volume` estimates them);
    ``k``, ``z_max``, ``background_degree``, ``saturation``, ``min_beads`` and
    ``min_coverage`` are read. Raises ``ValueError`` naming the stack when no bead is found,
    all are saturated, too few remain, or they cover too little of the field laterally.
    """
    options = CalibrationOptions.build(options, **settings)
    if None in (options.psf_size, options.psf_depth, options.psf_sigma, options.psf_sigma_z):
        raise ValueError("collect_volume_patches needs psf_size, psf_depth, psf_sigma and "
                         "psf_sigma_z (calibrate_volume estimates them when omitted)")
    level = options.saturation if options.saturation is not None else default_saturation(stack)
    array = as_stack(stack, name)
    shape = (options.psf_depth, options.psf_size, options.psf_size)
    margin = tuple(s // 2 + 3 for s in shape)
    if any(n <= 2 * m + 2 for n, m in zip(array.shape, margin)):
        raise ValueError(f"{name} of shape {array.shape} is too small for {shape} bead patches "
                         "(planes, rows, columns); pass a smaller psf_depth or psf_size")
    detection = detect_beads_3d(array, options.psf_sigma, options.psf_sigma_z, k=options.k,
                                margin=margin, saturation=level)
    if len(detection.positions) == 0:
        raise ValueError(f"no beads found in {name}: no 3-D LoG peak at scale "
                         f"({options.psf_sigma_z:.2f}, {options.psf_sigma:.2f}) voxels exceeds "
                         f"median + {options.k:g}·MAD; check the PSF scales, lower k, or check "
                         "the stack holds beads")
    if detection.saturated.all():
        raise ValueError(f"all {len(detection.positions)} beads detected in {name} are saturated "
                         f"(voxels reach {level:g}); acquire with a lower exposure or pass a "
                         "higher saturation level")
    patches = volume_patches(
        array, detection.good, shape, options.psf_sigma, options.psf_sigma_z,
        candidates=detection.positions, strengths=detection.strengths[~detection.saturated],
        candidate_strengths=detection.strengths, background_degree=options.background_degree,
        z_max=options.z_max)
    patches.rejected["saturated"] = int(detection.saturated.sum())
    patches.rejected["detected"] = int(len(detection.positions))
    if len(patches) < options.min_beads:
        reasons = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in
                            patches.rejected.items() if count and reason != "detected")
        raise ValueError(f"only {len(patches)} clean isolated beads in {name} (detected "
                         f"{len(detection.positions)}, rejected {reasons or 'none'}); the "
                         f"calibration needs at least {options.min_beads}")
    for axis, size in ((1, array.shape[1]), (2, array.shape[2])):
        cover = np.ptp(patches.positions[:, axis]) / size
        if cover < options.min_coverage:
            raise ValueError(f"the {len(patches)} beads of {name} span {cover:.0%} of the "
                             f"{'rows' if axis == 1 else 'columns'}; the maps need beads "
                             f"spread over at least {options.min_coverage:.0%} of each axis")
    return patches


def _hat_profiles(nodes: np.ndarray, length: int) -> np.ndarray:
    """``(len(nodes), length)`` piecewise-linear interpolation weights (a partition of unity)."""
    if len(nodes) == 1:
        return np.ones((1, length))
    positions = np.arange(length, dtype=np.float64)
    return np.stack([np.interp(positions, nodes, row) for row in np.eye(len(nodes))])


def depth_spread(positions: np.ndarray) -> float:
    """Range (planes) of the bead depths about the least-squares plane ``z ≈ a + b y + c x``
    through them: 0 for beads on one (even tilted) surface."""
    design = np.column_stack([np.ones(len(positions)), positions[:, 1:]])
    beta, *_ = np.linalg.lstsq(design, positions[:, 0], rcond=None)
    return float(np.ptp(positions[:, 0] - design @ beta))


def fit_volume_operator(
    patches: PatchSet,
    stack_shape: tuple[int, int, int],
    options: CalibrationOptions | None = None,
    *,
    voxel_aspect: float = 1.0,
    metadata: Mapping[str, Any] | None = None,
    **settings: Any,
) -> VolumeProductConvolution:
    """Eigen-PSFs, smooth ``(z, y, x)`` coefficient maps and the 3-D operator (steps 3–5).

    ``patches`` from :func:`collect_volume_patches` (or a subset, to hold beads out);
    ``voxel_aspect`` is ``z_step / pixel_size``. Reads ``n_eigen``, ``eigen_energy``,
    ``max_eigen``, ``smoothing``, ``grid_step`` and ``min_coverage`` of ``options``.
    """
    options = CalibrationOptions.build(options, **settings)
    aspect = check_positive(voxel_aspect, "voxel_aspect")
    depth, height, width = (int(n) for n in stack_shape)
    if len(patches) < 5:
        raise ValueError(f"a 3-D calibration needs at least 5 clean bead patches, got "
                         f"{len(patches)}")
    if options.n_eigen is not None and options.n_eigen > len(patches):
        raise ValueError(f"n_eigen={options.n_eigen} eigen-PSFs need at least {options.n_eigen} "
                         f"clean bead patches, found {len(patches)}")
    eigen = eigen_psfs(patches.patches, n_components=options.n_eigen,
                       energy=options.eigen_energy, noise=patches.noise,
                       max_components=options.max_eigen)
    spread = depth_spread(patches.positions)
    depth_variant = spread >= options.min_coverage * depth and len(patches) >= 6
    rows, cols = coarse_grid((height, width), options.grid_step)
    scale = float(max(height, width, depth * aspect))
    if depth_variant:
        step = max(1, int(round(options.grid_step / aspect)))
        planes = np.linspace(0, depth - 1, max(2, min(depth, int(np.ceil((depth - 1) / step))
                                                      + 1)))
        coordinates = patches.positions * np.array([aspect, 1.0, 1.0])
        maps, spline = coefficient_maps(coordinates, eigen.coefficients,
                                        (planes * aspect, rows, cols),
                                        smoothing=options.smoothing, scale=scale)
    else:
        planes = np.array([0.0])
        maps, spline = coefficient_maps(patches.positions[:, 1:], eigen.coefficients,
                                        (rows, cols), smoothing=options.smoothing, scale=scale)
        maps = maps[:, None]
    profiles = (_hat_profiles(planes, depth), _hat_profiles(rows, height),
                _hat_profiles(cols, width))
    report = {
        "n_beads": len(patches),
        "detected": int(patches.rejected.get("detected", 0)),
        "rejected": {key: int(value) for key, value in patches.rejected.items()
                     if key != "detected"},
        "psf_shape": [int(n) for n in patches.patches.shape[1:]],
        "n_eigen": eigen.n_components,
        "eigen_singular_values": eigen.singular_values[:64].tolist(),
        "eigen_explained": eigen.explained[:64].tolist(),
        "eigen_noise_floor": eigen.noise_floor,
        "depth_variant": bool(depth_variant),
        "bead_depth_spread": spread,
        "bead_planes": [float(patches.positions[:, 0].min()),
                        float(patches.positions[:, 0].max())],
        "grid": [len(planes), len(rows), len(cols)],
        "smoothing": spline.smoothing.tolist(),
        "voxel_aspect": aspect,
        "options": options.to_dict(),
    }
    meta = dict(metadata or {})
    meta["calibration"] = report
    dtype = torch.get_default_dtype()
    tensors = [torch.from_numpy(np.ascontiguousarray(p)).to(dtype) for p in profiles]
    return VolumeProductConvolution.from_factors(
        torch.from_numpy(eigen.kernels).to(dtype), tuple(tensors),
        torch.from_numpy(maps).to(dtype), meta)


def calibrate_volume(
    stack: Any,
    options: CalibrationOptions | None = None,
    *,
    z_step: float | None = None,
    pixel_size: float | None = None,
    metadata: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    **settings: Any,
) -> VolumeProductConvolution:
    """Learn a depth- and field-variant 3-D operator from one bead z-stack.

    Parameters
    ----------
    stack : array or tensor (D, H, W)
        Bead z-stack, planes first (NumPy or torch, any real dtype; integer stacks saturate
        at the dtype's maximum unless ``saturation`` is given).
    options : CalibrationOptions, optional
        The settings of :func:`psfmap.calibrate.calibrate` (``psf_size`` is the lateral patch
        side, ``psf_depth`` the number of planes, ``psf_sigma``/``psf_sigma_z`` the PSF
        scales in pixels/planes, estimated when omitted; ``grid_step`` the lateral step of
        the coarse map grid in pixels, the axial step covering as many µm).
    z_step, pixel_size : float, optional
        Voxel size in µm. Their ratio scales depth against the field in the smooth maps;
        without either the voxels are taken as cubes (a ``pixel_size`` without a
        ``z_step`` is an error: the voxels may be anisotropic).
    metadata : dict, optional
        Optics stored with the operator (``na``, ``wavelength``...).
    progress : callable, optional
        Called with 1 after the beads are collected and after the operator is fitted.
    **settings :
        Fields of :class:`CalibrationOptions` as keywords.

    Returns
    -------
    VolumeProductConvolution
        ``H f = Σ_i u_i ⋆ (w_i · f)`` on ``(D, H, W)``; ``psf_at(z, y, x)`` is the calibrated
        PSF there. ``metadata["calibration"]`` holds the bead counts, rejections, spectrum,
        ``depth_variant``, grid and the options used; ``z_step`` and ``pixel_size`` are kept.

    Examples
    --------
    >>> from psfmap.calibrate.volume_synthetic import synthetic_bead_volume
    >>> sample = synthetic_bead_volume((28, 80, 80), grid=(3, 2), psf_shape=(7, 9, 9),
    ...                                margin=(8, 9, 9), spacing=16, model="gaussian",
    ...                                psf_sigma=1.0, psf_sigma_z=1.3, seed=1)
    >>> operator = calibrate_volume(sample.stack, z_step=0.25, pixel_size=0.1, psf_size=13,
    ...                             psf_depth=11, psf_sigma=1.0, psf_sigma_z=1.3)
    >>> operator.image_shape, operator.kernel_shape, operator.metadata["calibration"]["n_beads"]
    ((28, 80, 80), (11, 13, 13), 16)
    """
    options = CalibrationOptions.build(options, **settings)
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict, got {describe(metadata)}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, got {describe(progress)}")
    if z_step is not None:
        z_step = check_positive(z_step, "z_step (µm)")
    if pixel_size is not None:
        pixel_size = check_positive(pixel_size, "pixel_size (µm)")
        if z_step is None:
            raise ValueError("z_step (µm) is needed with pixel_size: the voxels of a z-stack "
                             "are usually anisotropic; pass the axial step")
    if options.saturation is None and default_saturation(stack) is not None:
        options = options.replace(saturation=default_saturation(stack))
    array = as_stack(stack)
    options = resolve_options(array, options)
    patches = collect_volume_patches(array, options)
    if progress is not None:
        progress(1)
    aspect = z_step / pixel_size if z_step is not None and pixel_size is not None else 1.0
    meta = dict(metadata or {})
    meta.update({key: value for key, value in (("z_step", z_step), ("pixel_size", pixel_size))
                 if value is not None})
    operator = fit_volume_operator(patches, array.shape, options, voxel_aspect=aspect,
                                   metadata=meta)
    operator.metadata["calibration"]["psf_sigma"] = options.psf_sigma
    operator.metadata["calibration"]["psf_sigma_z"] = options.psf_sigma_z
    if progress is not None:
        progress(1)
    return operator
