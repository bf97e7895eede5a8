"""``psfmap.calibrate``: from bead images to a family of operators.

Pipeline (Debarnot, Mangeat & Weiss, "Learning low-dimensional models of microscopes",
IEEE TCI 7 (2021), Section II):

1. detect beads in every image (LoG at the PSF scale, robust threshold), reject saturated ones;
2. extract clean, isolated, centred, background-free, normalised patches, reject outliers;
3. eigen-PSFs ``u_i`` by PCA of all patches (I from the explained energy);
4. for every image ``k`` and component ``i``, a smoothing thin-plate spline of the coefficients
   at the bead positions (eq. 7, λ by leave-one-out cross-validation), evaluated on a coarse grid;
5. spatial basis ``v_j`` by randomized SVD of the I·K maps (J from the explained energy), and
   ``Γ_k`` = coefficients of image ``k`` on ``u_i ⊗ v_j``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from psfmap._validation import check_seed, describe
from psfmap.calibrate.detection import (
    as_image,
    default_saturation,
    detect_beads,
)
from psfmap.calibrate.eigen import eigen_psfs
from psfmap.calibrate.family import OperatorFamily
from psfmap.calibrate.options import CalibrationOptions
from psfmap.calibrate.patches import (
    PatchSet,
    extract_patches,
    fit_gaussian_centres,
    psf_patches,
    remove_background,
)
from psfmap.calibrate.spatial import coarse_grid, coefficient_maps, spatial_basis


def as_image_list(images: Any, name: str = "images") -> list:
    """Split ``images`` (list of 2-D arrays/tensors, or a 3-D stack) into a list of 2-D items."""
    if isinstance(images, (list, tuple)):
        items = list(images)
    elif hasattr(images, "ndim") and hasattr(images, "shape"):
        if images.ndim == 2:
            items = [images]
        elif images.ndim == 3:
            items = [images[k] for k in range(images.shape[0])]
        else:
            raise ValueError(
                f"{name} must be a 2-D image, a 3-D stack (K, H, W) or a list of 2-D images, "
                f"got shape {tuple(images.shape)}"
            )
    else:
        raise TypeError(
            f"{name} must be a list of 2-D images or a 3-D stack, got {describe(images)}"
        )
    if not items:
        raise ValueError(f"{name} is empty; expected at least one bead image")
    shapes = []
    for index, item in enumerate(items):
        if not hasattr(item, "ndim"):
            raise TypeError(
                f"{name}[{index}] must be a NumPy array or torch tensor, got {describe(item)}"
            )
        if item.ndim != 2:
            raise ValueError(
                f"{name}[{index}] must be a 2-D image (H, W), got shape {tuple(item.shape)}"
            )
        # checked here so that the message names the image (later steps see one at a time)
        as_image(item, f"{name}[{index}]")
        shapes.append(tuple(item.shape))
    for index, shape in enumerate(shapes):
        if shape != shapes[0]:
            raise ValueError(
                f"{name}[{index}] has shape {shape} but {name}[0] has shape {shapes[0]}; all "
                "calibration images must have the same shape"
            )
    return items


def estimate_psf_sigma(
    image: Any, *, initial: float = 2.0, saturation: float | None = None, iterations: int = 3
) -> float:
    """Estimate the PSF scale (Gaussian sigma, px) from the brightest isolated beads of an image.

    Alternates LoG detection at the current scale and Gaussian fits of the 40 strongest
    non-saturated candidates; returns the median fitted width.
    """
    if saturation is None:
        saturation = default_saturation(image)
    array = as_image(image)
    sigma = float(initial)
    for _ in range(iterations):
        half = int(np.ceil(4 * sigma))
        size = 2 * half + 1
        detection = detect_beads(
            array, sigma, k=8.0, margin=half + 1, saturation=saturation,
            min_distance=max(2, int(round(2 * sigma))),
        )
        positions = detection.good[:40]
        if len(positions) < 3:
            break
        patches, _ = remove_background(extract_patches(array, positions, size), 1, border=2)
        _, widths, converged = fit_gaussian_centres(patches, sigma)
        if converged.sum() < 3:
            break
        new_sigma = float(np.clip(np.median(widths[converged]), 0.7, 20.0))
        if abs(new_sigma - sigma) < 0.05 * sigma:
            sigma = new_sigma
            break
        sigma = new_sigma
    return sigma


def default_psf_size(psf_sigma: float) -> int:
    """Odd patch side ``2 ceil(6 σ) + 1`` (holds the PSF and some background)."""
    return 2 * int(np.ceil(6 * psf_sigma)) + 1


def collect_patches(
    images: Sequence,
    options: CalibrationOptions | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    name: str = "images",
    **settings: Any,
) -> list[PatchSet]:
    """Detect, clean and check the bead patches of every image (one PatchSet per image).

    ``options`` (:class:`CalibrationOptions`, with keyword ``settings`` overriding its
    fields) must give ``psf_size`` and ``psf_sigma``; the detection reads ``k``, ``z_max``,
    ``background_degree``, ``saturation``, ``min_beads`` and ``min_coverage``.

    Raises ``ValueError`` naming the image when no bead is found, all beads are saturated,
    none is isolated, too few remain, or the remaining beads cover too small a part of the
    field (``min_coverage`` of the height and of the width).
    """
    options = CalibrationOptions.build(options, **settings)
    if options.psf_size is None or options.psf_sigma is None:
        raise ValueError("collect_patches needs psf_size and psf_sigma (calibrate estimates "
                         "them when omitted)")
    psf_size, psf_sigma, k = options.psf_size, options.psf_sigma, options.k
    saturation, min_coverage = options.saturation, options.min_coverage
    sets = []
    for index, image in enumerate(images):
        level = saturation if saturation is not None else default_saturation(image)
        array = as_image(image, f"{name}[{index}]")
        height, width = array.shape
        margin = psf_size // 2 + 4
        if height <= 2 * margin + 2 or width <= 2 * margin + 2:
            raise ValueError(
                f"{name}[{index}] of shape {array.shape} is too small for {psf_size}x{psf_size} "
                "bead patches"
            )
        detection = detect_beads(array, psf_sigma, k=k, margin=margin, saturation=level)
        where = f"{name}[{index}]"
        if len(detection.positions) == 0:
            raise ValueError(
                f"no beads found in {where}: no LoG peak at scale {psf_sigma:.2f} px exceeds "
                f"median + {k:g}·MAD; check psf_sigma, lower k, or check the image holds beads"
            )
        if detection.saturated.all():
            raise ValueError(
                f"all {len(detection.positions)} beads detected in {where} are saturated "
                f"(pixels reach {level:g}); acquire with a lower exposure or pass a higher "
                "saturation level"
            )
        patches = psf_patches(
            array, detection.good, psf_size, psf_sigma,
            candidates=detection.positions, strengths=detection.strengths[~detection.saturated],
            candidate_strengths=detection.strengths, background_degree=options.background_degree,
            z_max=options.z_max, image_index=index,
        )
        patches.rejected["saturated"] = int(detection.saturated.sum())
        patches.rejected["detected"] = int(len(detection.positions))
        if len(patches) == 0 and patches.rejected.get("not_isolated", 0) > 0:
            smallest = 2 * int(np.ceil(3 * psf_sigma)) + 1  # the core, ±3σ
            hint = (f"; psf_size={psf_size} asks for that much room, a smaller one (down to "
                    f"{smallest} for psf_sigma={psf_sigma:.2f} px) asks for less"
                    if psf_size > smallest else "")
            raise ValueError(
                f"none of the {len(detection.good)} beads in {where} is isolated (all beads are "
                f"clustered: each has another bead within {psf_size // 2 + 3 * psf_sigma:.0f} px); "
                f"calibration needs isolated beads{hint}"
            )
        rows, cols = patches.positions[:, 0], patches.positions[:, 1]
        if len(patches) < 3:
            rows = cols = np.array([0.0, max(height, width)])
        row_cover = (rows.max() - rows.min()) / height
        col_cover = (cols.max() - cols.min()) / width
        if row_cover < min_coverage or col_cover < min_coverage:
            raise ValueError(
                f"the {len(patches)} beads of {where} are clustered in rows "
                f"{rows.min():.0f}–{rows.max():.0f} and columns {cols.min():.0f}–{cols.max():.0f} "
                f"of a {height}x{width} field ({row_cover:.0%} x {col_cover:.0%}); the spatial "
                f"maps need beads spread over at least {min_coverage:.0%} of each axis"
            )
        if len(patches) < options.min_beads:
            raise ValueError(
                f"only {len(patches)} clean isolated beads in {where} (detected "
                f"{len(detection.positions)}, rejected {_rejections(patches.rejected)}); the "
                f"spatial maps need at least {options.min_beads} per image"
            )
        sets.append(patches)
        if progress is not None:
            progress(1)
    return sets


def _rejections(rejected: Mapping[str, int]) -> str:
    parts = [f"{count} {reason.replace('_', ' ')}" for reason, count in rejected.items()
             if count and reason != "detected"]
    return ", ".join(parts) if parts else "none"


def calibrate(
    images: Any,
    options: CalibrationOptions | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
    seed: int | np.random.Generator | None = 0,
    progress: Callable[[int], None] | None = None,
    **settings: Any,
) -> OperatorFamily:
    """Learn a low-dimensional family of operators from bead images (one image per condition).

    The family is ``H_Γ f = Σ_ij γ_ij u_i ⋆ (v_j · f)`` (Debarnot, Mangeat & Weiss, IEEE TCI
    2021, eq. 6); image ``k`` gets ``Γ_k``.

    Parameters
    ----------
    images : list of 2-D arrays/tensors, or array/tensor (K, H, W)
        Bead images, one per acquisition condition (e.g. the slices of a z-stack), all the
        same shape. NumPy or torch, any real dtype; integer images are saturated at the
        dtype's maximum unless ``saturation`` is given.
    options : CalibrationOptions, optional
        Every setting of the calibration (PSF size and scale, numbers of eigen-PSFs and
        spatial maps or the energies that choose them, smoothing, detection thresholds);
        defaults when omitted.
    **settings :
        Fields of :class:`CalibrationOptions` given as keywords (``psf_size=21``,
        ``n_eigen=4``, ...), replacing those of ``options``.
    metadata : dict, optional
        Optics (``pixel_size`` in µm, ``na``, ``wavelength``...) stored with the family.
    seed : int or Generator
        Seed of the randomized SVD.
    progress : callable, optional
        Called with 1 after each image is processed.

    Returns
    -------
    OperatorFamily
        With ``.metadata["calibration"]`` (bead counts, rejections, spectra, chosen ranks,
        smoothing parameters, the ``options`` used) and the clean patches in ``.patches``
        (not saved).
    """
    options = CalibrationOptions.build(options, **settings)
    items = as_image_list(images)
    # checked before the work, not where each is first used minutes later
    check_seed(seed)
    _check_callables(metadata, progress)
    height, width = (int(n) for n in items[0].shape)
    psf_sigma = options.psf_sigma
    if psf_sigma is None:
        psf_sigma = estimate_psf_sigma(items[0], saturation=options.saturation)
    psf_size = options.psf_size if options.psf_size is not None else default_psf_size(psf_sigma)
    if psf_size < 5 or psf_size % 2 == 0:
        raise ValueError(f"psf_size must be an odd integer >= 5, got {psf_size!r}")
    options = options.replace(psf_sigma=float(psf_sigma), psf_size=int(psf_size))
    sets = collect_patches(items, options, progress=progress)
    family = fit_family(sets, (height, width), options, metadata=metadata, seed=seed)
    family.metadata["calibration"]["psf_sigma"] = float(psf_sigma)
    return family


def _check_callables(metadata: Any, progress: Any) -> None:
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict, got {describe(metadata)}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, got {describe(progress)}")


def fit_family(
    sets: Sequence[PatchSet],
    image_shape: tuple[int, int],
    options: CalibrationOptions | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
    seed: int | np.random.Generator | None = 0,
    **settings: Any,
) -> OperatorFamily:
    """Eigen-PSFs, thin-plate-spline maps and spatial basis from clean patches (steps 3–5).

    ``sets[k]`` holds the clean patches of image ``k`` (:func:`collect_patches`); the
    arguments are those of :func:`calibrate` (``options`` and keyword ``settings``: its
    ``n_eigen``, ``eigen_energy``, ``max_eigen``, ``spatial_rank``, ``spatial_energy``,
    ``max_spatial``, ``smoothing`` and ``grid_step`` are read here). Useful to hold out
    beads: calibrate on a subset of every image's patches.
    """
    options = CalibrationOptions.build(options, **settings)
    check_seed(seed)
    _check_callables(metadata, None)
    n_eigen, spatial_rank, grid_step = options.n_eigen, options.spatial_rank, options.grid_step
    height, width = (int(n) for n in image_shape)
    n_images = len(sets)
    patches = PatchSet.concatenate(
        [s.select(np.ones(len(s), dtype=bool)) for s in sets]
    )
    patches.image_index = np.concatenate(
        [np.full(len(s), k, dtype=np.int64) for k, s in enumerate(sets)]
    )
    total = len(patches)
    for index, item in enumerate(sets):
        if len(item) < 4:
            raise ValueError(
                f"image {index} has {len(item)} clean beads; a thin-plate spline needs at least 4"
            )
    if n_eigen is not None and n_eigen > total:
        raise ValueError(
            f"n_eigen={n_eigen} eigen-PSFs need at least {n_eigen} clean bead patches, "
            f"found {total}"
        )
    eigen = eigen_psfs(
        patches.patches, n_components=n_eigen, energy=options.eigen_energy,
        noise=patches.noise, max_components=options.max_eigen,
    )
    if spatial_rank is not None and spatial_rank > eigen.n_components * n_images:
        raise ValueError(
            f"spatial_rank={spatial_rank} needs at least {spatial_rank} coefficient maps, but "
            f"{n_images} image(s) × {eigen.n_components} eigen-PSF(s) give "
            f"{eigen.n_components * n_images}"
        )
    grid = coarse_grid((height, width), grid_step)
    scale = float(max(height, width))
    maps = np.empty((n_images, eigen.n_components, len(grid[0]), len(grid[1])))
    smoothing_used = []
    for index in range(n_images):
        mask = patches.image_index == index
        maps[index], spline = coefficient_maps(
            patches.positions[mask], eigen.coefficients[mask], grid,
            smoothing=options.smoothing, scale=scale,
        )
        smoothing_used.append(spline.smoothing.tolist())
    spatial = spatial_basis(
        maps, rank=spatial_rank, energy=options.spatial_energy,
        max_rank=options.max_spatial, seed=seed,
    )
    report = {
        "psf_size": int(patches.patches.shape[-1]),
        "n_images": n_images,
        "beads_per_image": [len(s) for s in sets],
        "detected_per_image": [s.rejected.get("detected", 0) for s in sets],
        "rejected": {key: int(value) for key, value in patches.rejected.items()
                     if key != "detected"},
        "n_eigen": eigen.n_components,
        "eigen_singular_values": eigen.singular_values[:64].tolist(),
        "eigen_explained": eigen.explained[:64].tolist(),
        "eigen_noise_floor": eigen.noise_floor,
        "n_spatial": int(spatial.basis.shape[0]),
        "spatial_singular_values": spatial.singular_values.tolist(),
        "spatial_explained": spatial.explained.tolist(),
        "smoothing": smoothing_used,
        "grid_step": int(grid_step),
        "options": options.to_dict(),
    }
    meta = dict(metadata or {})
    meta["calibration"] = report
    family = OperatorFamily(eigen.kernels, spatial.basis, spatial.gammas, (height, width), meta)
    family.patches = patches
    family.coefficients = eigen.coefficients
    return family
