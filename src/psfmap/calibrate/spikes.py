"""Identify the operator of a new image from a few isolated beads (spikes) in it.

Debarnot, Mangeat & Weiss, "Learning low-dimensional models of microscopes", IEEE TCI 7
(2021), Section III. Given a calibrated family ``H_Γ f = Σ_ij γ_ij u_i ⋆ (v_j · f)`` and M
beads at positions ``y_m`` in an image of a sample, each bead patch (sample background
removed, projected on the eigen-PSFs) gives coefficients ``c_m ∈ R^I``; with unknown bead
intensities the model is bilinear (eq. 10)

    min_{Γ, α}  Σ_m ‖ c_m − α_m Γ v(y_m) ‖²,      v(y) = (v_1(y), …, v_J(y)).

Lifting with ``β_m = 1 / α_m`` makes it linear in ``x = (vec Γ, β)``:

    min_x Σ_m ‖ β_m c_m − Γ v(y_m) ‖²   subject to  ⟨Γ, Γ_0⟩ = 1,

a homogeneous least-squares problem with one linear constraint, solved in closed form
``x = (BᵀB)⁻¹ g / (gᵀ (BᵀB)⁻¹ g)`` (``Γ_0`` = mean calibrated Γ, ``g = (vec Γ_0, 0)``;
in practice through the KKT system). By default Γ is sought in the linear span of the
calibrated ``Γ_k`` (K unknowns instead of I·J, which a dozen beads cannot determine); with
``span=False`` all I·J entries are free and the PSF mass ``Σ_i w_i(y) Σ u_i`` is constrained
to be uniform, the only part of Γ the unknown bead intensities leave undetermined.
Optionally ``Γ`` is constrained to the cone of the calibrated ``Γ_k`` (eq. 8) by alternating
projected gradient. The result is scaled so that the PSFs sum to 1 on average over the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from psfmap._validation import check_int
from psfmap.calibrate.calibration import estimate_psf_sigma
from psfmap.calibrate.detection import as_image, default_saturation, detect_beads
from psfmap.calibrate.family import OperatorFamily
from psfmap.calibrate.patches import psf_patches


@dataclass
class SpikeIdentification:
    """What :func:`identify_from_spikes` found (attached to the operator as ``.identification``).

    Attributes
    ----------
    gamma : ndarray (I, J)
        Identified coefficients Γ (PSFs sum to 1 on average over the field).
    positions : ndarray (M, 2)
        Sub-pixel (row, col) of the beads used.
    bead_scales : ndarray (M,)
        Lifted variables ``β_m`` (inverse bead intensities relative to the normalised patch).
    residuals : ndarray (M,)
        Relative residual ``‖β_m c_m − Γ v(y_m)‖ / ‖β_m c_m‖`` of each bead in eigen-PSF space.
    patch_residuals : ndarray (M,)
        Relative L2 error between each normalised patch and the PSF of the identified operator
        at its position (includes the part outside the span of the eigen-PSFs).
    relative_residual : float
        ``√(Σ_m ‖β_m c_m − Γ v(y_m)‖² / Σ_m ‖β_m c_m‖²)``.
    cone_coefficients : ndarray (K,) or None
        ``α ≥ 0`` with ``Γ = Σ_k α_k Γ_k`` when the cone constraint was used.
    required_beads : int
        Minimum number of beads this family needs.
    """

    gamma: np.ndarray
    positions: np.ndarray
    bead_scales: np.ndarray
    residuals: np.ndarray
    patch_residuals: np.ndarray
    relative_residual: float
    cone_coefficients: np.ndarray | None = None
    required_beads: int = 0
    rejected: dict = field(default_factory=dict)


def required_beads(n_eigen: int, n_spatial: int) -> int:
    """Beads needed to determine Γ (I·J unknowns) and the M bead scales from M·I equations.

    ``M I ≥ I J + M − 1`` gives ``M ≥ (I J − 1) / (I − 1)``; with a single eigen-PSF the
    scales are fixed by the normalisation of the patches and ``M ≥ J``.
    """
    if n_eigen <= 1:
        return int(n_spatial)
    return int(max(n_spatial, int(np.ceil((n_eigen * n_spatial - 1) / (n_eigen - 1)))))


def lifted_least_squares(
    coefficients: np.ndarray,
    basis_values: np.ndarray,
    reference: np.ndarray,
    kernel_sums: np.ndarray | None = None,
    mass: np.ndarray | None = None,
    subspace: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``min Σ_m ‖β_m c_m − Γ v_m‖²`` s.t. ``⟨Γ, Γ_0⟩ = 1`` (paper eq. 10, lifted).

    With unknown bead intensities, the mass of the PSF ``Σ_i s_i w_i(y)`` (``s_i`` = sum of
    ``u_i``) is not identifiable from the beads: any smooth rescaling is absorbed by the
    ``β_m``. Every calibrated operator has a uniform mass (its patches sum to 1), i.e.
    ``Γ_kᵀ s ≈ m``; when ``kernel_sums`` and ``mass`` are given the solution is constrained to
    ``Γᵀ s ∥ m`` (J − 1 more homogeneous linear constraints), which removes the ambiguity.

    Parameters
    ----------
    coefficients : ndarray (M, I)
        ``c_m``.
    basis_values : ndarray (M, J)
        ``v(y_m)``.
    reference : ndarray (I, J)
        ``Γ_0``.
    kernel_sums : ndarray (I,), optional
        ``s_i = Σ u_i``.
    mass : ndarray (J,), optional
        Mass coefficients ``m`` of the calibrated family (mean of ``Γ_kᵀ s``).
    subspace : ndarray (R, I, J), optional
        Orthonormal basis of a subspace Γ must lie in (e.g. the span of the calibrated Γ_k):
        the unknowns are then its R coordinates instead of the I·J entries of Γ.

    Returns
    -------
    gamma : ndarray (I, J)
    beta : ndarray (M,)
    """
    m, n_eigen = coefficients.shape
    n_spatial = basis_values.shape[1]
    # vec(Γ) = T θ: the identity for the full problem, the subspace basis otherwise
    if subspace is None:
        transform = np.eye(n_eigen * n_spatial)
    else:
        transform = np.asarray(subspace, dtype=np.float64).reshape(len(subspace), -1).T
    n_theta = transform.shape[1]
    system = np.zeros((m * n_eigen, n_theta + m))
    for bead in range(m):
        rows = slice(bead * n_eigen, (bead + 1) * n_eigen)
        # (Γ v_m)_i = Σ_j γ_ij v_mj  ->  kron(I_I, v_mᵀ) vec(Γ) (row-major vec)
        system[rows, :n_theta] = -np.kron(np.eye(n_eigen), basis_values[bead][None, :]) @ transform
        system[rows, n_theta + bead] = coefficients[bead]
    constraints = [np.concatenate([reference.ravel() @ transform, np.zeros(m)])]
    if kernel_sums is not None and mass is not None and n_spatial > 1 and subspace is None:
        # (Γᵀ s)_j = Σ_i s_i γ_ij; require it to be orthogonal to every direction ⟂ m
        mass_rows = np.zeros((n_spatial, n_eigen * n_spatial))
        for j in range(n_spatial):
            mass_rows[j, j::n_spatial] = kernel_sums
        complement = np.linalg.svd(mass[None, :])[2][1:]  # (J-1, J), orthonormal ⟂ m
        for row in complement @ mass_rows @ transform:
            constraints.append(np.concatenate([row, np.zeros(m)]))
    equality = np.array(constraints)
    n_constraints = len(equality)
    # minimise ‖B x‖² subject to E x = e_1: the KKT system [[BᵀB, Eᵀ], [E, 0]]
    size = n_theta + m
    kkt = np.zeros((size + n_constraints, size + n_constraints))
    kkt[:size, :size] = system.T @ system
    kkt[:size, size:] = equality.T
    kkt[size:, :size] = equality
    rhs = np.zeros(size + n_constraints)
    rhs[size] = 1.0
    solution, *_ = np.linalg.lstsq(kkt, rhs, rcond=None)
    x = solution[:size]
    gamma = (transform @ x[:n_theta]).reshape(n_eigen, n_spatial)
    return gamma, x[n_theta:]


def cone_least_squares(
    family: OperatorFamily,
    coefficients: np.ndarray,
    basis_values: np.ndarray,
    reference: np.ndarray,
    start: np.ndarray,
    iterations: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """Alternating projected gradient for eq. 10 with Γ in the cone of the calibrated Γ_k.

    Alternates the closed-form bead scales ``β_m = ⟨c_m, Γ v_m⟩ / ‖c_m‖²``, a gradient step
    on Γ with step ``1 / ‖Σ_m v_m v_mᵀ‖``, the projection on the cone (NNLS, eq. 8) and the
    renormalisation ``⟨Γ, Γ_0⟩ = 1``.
    """
    gamma = family.project(start)
    scale = float((gamma * reference).sum())
    if scale <= 0:
        gamma = reference.copy()
        scale = float((reference * reference).sum())
    gamma = gamma / scale
    lipschitz = float(np.linalg.norm(basis_values.T @ basis_values, 2))
    norms = np.maximum((coefficients**2).sum(axis=1), 1e-300)
    beta = np.zeros(len(coefficients))
    for _ in range(iterations):
        predicted = basis_values @ gamma.T  # (M, I)
        beta = (coefficients * predicted).sum(axis=1) / norms
        gradient = (predicted - beta[:, None] * coefficients).T @ basis_values  # (I, J)
        gamma = family.project(gamma - gradient / max(lipschitz, 1e-300))
        scale = float((gamma * reference).sum())
        if scale <= 0:
            break
        gamma = gamma / scale
    predicted = basis_values @ gamma.T
    beta = (coefficients * predicted).sum(axis=1) / norms
    return gamma, beta


def identify_from_spikes(
    image,
    family: OperatorFamily,
    positions=None,
    *,
    cone: bool = False,
    span: bool = True,
    iterations: int = 200,
    psf_sigma: float | None = None,
    k: float = 6.0,
    z_max: float | None = 4.0,
    background_degree: int = 1,
    saturation: float | None = None,
    max_beads: int | None = None,
):
    """Operator of an image from the isolated beads (spikes) it contains (paper Section III).

    Parameters
    ----------
    image : ndarray or Tensor (H, W)
        Image of a sample with a few isolated beads; same shape as the family's images.
    family : OperatorFamily
        Calibrated family (``psfmap.calibrate`` or ``OperatorFamily.load``).
    positions : array (M, 2), optional
        (row, col) of the beads to use (those whose patch would leave the image are skipped);
        detected (LoG, robust threshold, isolation, outlier tests) when omitted.
    cone : bool
        Constrain Γ to the cone of the calibrated Γ_k (eq. 8) by alternating projected
        gradient, started from the lifted least-squares solution.
    span : bool
        Seek Γ in the linear span of the calibrated Γ_k (R ≤ K unknowns instead of I·J; much
        better conditioned with few beads). ``False`` solves for all I·J entries, with the
        PSF mass constrained to be uniform over the field.
    iterations : int
        Iterations of the projected gradient (``cone=True``).
    psf_sigma, k, z_max, background_degree, saturation :
        Detection and patch cleaning settings (``psf_sigma`` defaults to the calibration's).
    max_beads : int, optional
        Use at most this many beads (the strongest detections).

    Returns
    -------
    ProductConvolution
        ``H_Γ`` of the family with the identified Γ; its ``.identification`` attribute holds a
        :class:`SpikeIdentification` (Γ, beads used, residuals).
    """
    if not isinstance(family, OperatorFamily):
        raise TypeError(f"family must be an OperatorFamily, got {type(family).__name__}")
    if cone:
        check_int(iterations, "iterations")
    if max_beads is not None:
        check_int(max_beads, "max_beads")
    level = saturation if saturation is not None else default_saturation(image)
    array = as_image(image)
    if array.shape != tuple(family.image_shape):
        raise ValueError(
            f"image has shape {array.shape} but the family was calibrated on images of shape "
            f"{tuple(family.image_shape)}"
        )
    size = family.kernel_shape[0]
    if psf_sigma is None:
        psf_sigma = family.metadata.get("calibration", {}).get("psf_sigma")
        if psf_sigma is None:
            psf_sigma = estimate_psf_sigma(array, saturation=level)
    needed = required_beads(family.n_eigen_psfs, family.n_spatial)
    margin = size // 2 + 4
    if positions is None:
        detection = detect_beads(array, psf_sigma, k=k, margin=margin, saturation=level)
        if len(detection.positions) == 0:
            raise ValueError(
                "no beads found in image: no LoG peak exceeds median + "
                f"{k:g}·MAD at scale {psf_sigma:.2f} px; pass positions= or lower k"
            )
        if detection.saturated.all():
            raise ValueError(
                f"all {len(detection.positions)} beads detected in image are saturated (pixels "
                f"reach {level:g}); use an image with unsaturated beads or pass saturation="
            )
        candidates = detection.positions
        chosen = detection.good
        strengths = detection.strengths[~detection.saturated]
        candidate_strengths = detection.strengths
    else:
        given = np.asarray(positions, dtype=np.float64)
        if given.ndim != 2 or given.shape[1] != 2 or not np.isfinite(given).all():
            raise ValueError(
                f"positions must be an array (M, 2) of finite (row, col), got shape {given.shape}"
            )
        chosen = np.round(given).astype(np.int64)
        inside = (
            (chosen[:, 0] >= margin) & (chosen[:, 1] >= margin)
            & (chosen[:, 0] < array.shape[0] - margin) & (chosen[:, 1] < array.shape[1] - margin)
        )
        border_rejected = int((~inside).sum())  # their patches would leave the image
        chosen = chosen[inside]
        candidates = chosen
        strengths = candidate_strengths = None
    patches = psf_patches(
        array, chosen, size, psf_sigma, candidates=candidates, strengths=strengths,
        candidate_strengths=candidate_strengths,
        background_degree=background_degree, z_max=z_max,
    )
    if positions is not None:
        patches.rejected["border"] += border_rejected
    else:
        patches.rejected["saturated"] = int(detection.saturated.sum())
    if max_beads is not None:
        patches = patches.select(np.argsort(-patches.energy)[: int(max_beads)])
    if len(patches) < needed:
        rejected = ", ".join(
            f"{count} {reason.replace('_', ' ')}" for reason, count in patches.rejected.items()
            if count
        ) or "none"
        raise ValueError(
            f"only {len(patches)} usable isolated beads in image (rejected: {rejected}), but "
            f"this family (I={family.n_eigen_psfs} eigen-PSFs, J={family.n_spatial} spatial "
            f"maps) needs at least {needed} to identify its operator"
        )
    eigen = family._eigen.reshape(family.n_eigen_psfs, -1)
    coefficients = patches.patches.reshape(len(patches), -1) @ eigen.T  # (M, I)
    basis_values = family.basis_at(patches.positions)  # (M, J)
    gammas = family._gammas
    reference = gammas.mean(axis=0)
    reference = reference / max(float((reference**2).sum()), 1e-300)
    if family.n_eigen_psfs == 1:
        # scales fixed by the patch normalisation: plain least squares for Γ (1, J)
        solution, *_ = np.linalg.lstsq(basis_values, coefficients[:, 0], rcond=None)
        gamma = solution[None, :]
        beta = np.ones(len(patches))
    else:
        kernel_sums = family._eigen.sum(axis=(1, 2))
        mass = np.einsum("i,kij->j", kernel_sums, gammas) / len(gammas)
        subspace = None
        if span:
            flat = gammas.reshape(len(gammas), -1)
            _, singular, vt = np.linalg.svd(flat, full_matrices=False)
            rank = int((singular > 1e-10 * singular[0]).sum())
            subspace = vt[:rank].reshape(rank, *gammas.shape[1:])
        gamma, beta = lifted_least_squares(
            coefficients, basis_values, reference, kernel_sums, mass, subspace
        )
    alpha = None
    if cone:
        gamma, beta = cone_least_squares(
            family, coefficients, basis_values, reference, gamma, iterations
        )
        alpha = family.cone_coefficients(gamma)
    # normalise: PSFs sum to 1 on average over the field
    kernel_sums = family._eigen.sum(axis=(1, 2))
    mean_basis = family._basis.mean(axis=(1, 2))
    mean_sum = float(kernel_sums @ gamma @ mean_basis)
    if not np.isfinite(mean_sum) or abs(mean_sum) < 1e-12:
        raise ValueError(
            "identification failed: the identified PSFs have no positive mass; the beads may "
            "not match the family (check the image and the family)"
        )
    gamma = gamma / mean_sum
    beta = beta / mean_sum
    if alpha is not None:
        alpha = alpha / mean_sum
    scaled = beta[:, None] * coefficients
    predicted = basis_values @ gamma.T
    residual = np.sqrt(((scaled - predicted) ** 2).sum(axis=1))
    norms = np.sqrt((scaled**2).sum(axis=1))
    model_psfs = family.psfs_at(gamma, patches.positions)
    patch_residuals = np.sqrt(((model_psfs - patches.patches) ** 2).sum(axis=(1, 2))) / np.sqrt(
        (patches.patches**2).sum(axis=(1, 2))
    )
    info = SpikeIdentification(
        gamma=gamma,
        positions=patches.positions,
        bead_scales=beta,
        residuals=residual / np.maximum(norms, 1e-300),
        patch_residuals=patch_residuals,
        relative_residual=float(np.sqrt((residual**2).sum() / max((norms**2).sum(), 1e-300))),
        cone_coefficients=alpha,
        required_beads=needed,
        rejected=dict(patches.rejected),
    )
    operator = family.operator(gamma)
    operator.metadata["identification"] = {
        "method": "spikes",
        "n_beads": int(len(patches)),
        "relative_residual": info.relative_residual,
        "cone": bool(cone),
        "span": bool(span),
    }
    operator.identification = info
    return operator
