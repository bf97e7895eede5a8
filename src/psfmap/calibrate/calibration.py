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

from psfmap._validation import check_int, check_positive, check_seed, describe
from psfmap.calibrate.detection import (
    as_image,
    default_saturation,
    detect_beads,
)
from psfmap.calibrate.eigen import eigen_psfs
from psfmap.calibrate.family import OperatorFamily
from psfmap.calibrate.patches import (
    PatchSet,
    extract_patches,
    fit_gaussian_centres,
    psf_patches,
    remove_background,
)
from psfmap.calibrate.spatial import coarse_grid, coefficient_maps, spatial_basis

MIN_BEADS_PER_IMAGE = 8


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
    *,
    psf_size: int,
    psf_sigma: float,
    k: float = 6.0,
    z_max: float | None = 4.0,
    background_degree: int = 1,
    saturation: float | None = None,
    min_beads: int = MIN_BEADS_PER_IMAGE,
    min_coverage: float = 0.3,
    progress: Callable[[int], None] | None = None,
    name: str = "images",
) -> list[PatchSet]:
    """Detect, clean and check the bead patches of every image (one PatchSet per image).

    Raises ``ValueError`` naming the image when no bead is found, all beads are saturated,
    none is isolated, too few remain, or the remaining beads cover too small a part of the
    field (``min_coverage`` of the height and of the width).
    """
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
            candidate_strengths=detection.strengths, background_degree=background_degree,
            z_max=z_max, image_index=index,
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
        if len(patches) < min_beads:
            raise ValueError(
                f"only {len(patches)} clean isolated beads in {where} (detected "
                f"{len(detection.positions)}, rejected {_rejections(patches.rejected)}); the "
                f"spatial maps need at least {min_beads} per image"
            )
        sets.append(patches)
        if progress is not None:
            progress(1)
    return sets


def _rejections(rejected: Mapping[str, int]) -> str:
    parts = [f"{count} {reason.replace('_', ' ')}" for reason, count in rejected.items()
             if count and reason != "detected"]
    return ", ".join(parts) if parts else "none"


def _check_calibration_options(grid_step, background_degree, saturation, metadata, progress,
                               ranks):
    for name, rank in ranks.items():
        if rank is not None:
            check_int(rank, name)
    check_int(grid_step, "grid_step")
    check_int(background_degree, "background_degree", minimum=0)
    if saturation is not None:
        check_positive(saturation, "saturation")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict, got {describe(metadata)}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, got {describe(progress)}")


def calibrate(
    images: Any,
    *,
    psf_size: int | None = None,
    psf_sigma: float | None = None,
    n_eigen: int | None = None,
    eigen_energy: float = 0.9995,
    max_eigen: int = 12,
    spatial_rank: int | None = None,
    spatial_energy: float = 0.9999,
    max_spatial: int = 16,
    smoothing: float | None = None,
    grid_step: int = 16,
    k: float = 6.0,
    z_max: float | None = 4.0,
    background_degree: int = 1,
    saturation: float | None = None,
    min_beads: int = MIN_BEADS_PER_IMAGE,
    min_coverage: float = 0.3,
    metadata: Mapping[str, Any] | None = None,
    seed: int | np.random.Generator | None = 0,
    progress: Callable[[int], None] | None = None,
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
    psf_size : int, optional
        Odd side of the PSF patches and eigen-PSFs (default ``2 ceil(6 σ) + 1``).
    psf_sigma : float, optional
        PSF scale in pixels (Gaussian sigma); estimated from the first image when omitted.
    n_eigen, eigen_energy, max_eigen :
        Number I of eigen-PSFs, or the explained signal energy that chooses it (capped).
    spatial_rank, spatial_energy, max_spatial :
        Number J of spatial maps, or the explained energy of the I·K maps that chooses it.
    smoothing : float, optional
        Thin-plate-spline λ (eq. 7) in units of the image size; leave-one-out
        cross-validation when omitted.
    grid_step : int
        Pixel step of the coarse grid on which the maps are evaluated.
    k, z_max, background_degree :
        Detection threshold (median + k·MAD), outlier z-score bound, border polynomial degree.
    saturation : float, optional
        Saturation level of the images.
    min_beads, min_coverage :
        At least ``min_beads`` clean beads per image, spread over ``min_coverage`` of each axis.
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
        smoothing parameters) and the clean patches in ``.patches`` (not saved).
    """
    items = as_image_list(images)
    # checked before the work, not where each is first used minutes later
    check_seed(seed)
    _check_calibration_options(grid_step, background_degree, saturation, metadata, progress,
                               {"n_eigen": n_eigen, "spatial_rank": spatial_rank})
    height, width = (int(n) for n in items[0].shape)
    if psf_sigma is None:
        psf_sigma = estimate_psf_sigma(items[0], saturation=saturation)
    psf_sigma = check_positive(psf_sigma, "psf_sigma (px)")
    if psf_size is None:
        psf_size = default_psf_size(psf_sigma)
    if int(psf_size) != psf_size or psf_size < 5 or psf_size % 2 == 0:
        raise ValueError(f"psf_size must be an odd integer >= 5, got {psf_size!r}")
    psf_size = int(psf_size)
    sets = collect_patches(
        items, psf_size=psf_size, psf_sigma=psf_sigma, k=k, z_max=z_max,
        background_degree=background_degree, saturation=saturation, min_beads=min_beads,
        min_coverage=min_coverage, progress=progress,
    )
    family = fit_family(
        sets, (height, width), n_eigen=n_eigen, eigen_energy=eigen_energy, max_eigen=max_eigen,
        spatial_rank=spatial_rank, spatial_energy=spatial_energy, max_spatial=max_spatial,
        smoothing=smoothing, grid_step=grid_step, metadata=metadata, seed=seed,
    )
    family.metadata["calibration"]["psf_sigma"] = float(psf_sigma)
    return family


def fit_family(
    sets: Sequence[PatchSet],
    image_shape: tuple[int, int],
    *,
    n_eigen: int | None = None,
    eigen_energy: float = 0.9995,
    max_eigen: int = 12,
    spatial_rank: int | None = None,
    spatial_energy: float = 0.9999,
    max_spatial: int = 16,
    smoothing: float | None = None,
    grid_step: int = 16,
    metadata: Mapping[str, Any] | None = None,
    seed: int | np.random.Generator | None = 0,
) -> OperatorFamily:
    """Eigen-PSFs, thin-plate-spline maps and spatial basis from clean patches (steps 3–5).

    ``sets[k]`` holds the clean patches of image ``k`` (:func:`collect_patches`); the
    arguments are those of :func:`calibrate`. Useful to hold out beads: calibrate on a subset
    of every image's patches.
    """
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
        patches.patches, n_components=n_eigen, energy=eigen_energy, noise=patches.noise,
        max_components=max_eigen,
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
            smoothing=smoothing, scale=scale,
        )
        smoothing_used.append(spline.smoothing.tolist())
    spatial = spatial_basis(
        maps, rank=spatial_rank, energy=spatial_energy, max_rank=max_spatial, seed=seed
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
    }
    meta = dict(metadata or {})
    meta["calibration"] = report
    family = OperatorFamily(eigen.kernels, spatial.basis, spatial.gammas, (height, width), meta)
    family.patches = patches
    family.coefficients = eigen.coefficients
    return family
