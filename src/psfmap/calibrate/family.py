"""The low-dimensional family of operators learned from bead images.

Debarnot, Mangeat & Weiss, "Learning low-dimensional models of microscopes", IEEE TCI 7
(2021), eq. 6: every operator of the microscope is

    H_Γ f = Σ_{i=1}^{I} Σ_{j=1}^{J} γ_ij  u_i ⋆ (v_j · f)  =  Σ_i u_i ⋆ (w_i · f),
    w_i = Σ_j γ_ij v_j,

with eigen-PSFs ``u_i`` (I, h, w), spatial basis maps ``v_j`` (J, H, W) and a small matrix
``Γ ∈ R^{I×J}`` per acquisition condition. Calibration yields ``Γ_1 … Γ_K``; a new operator
is sought in their cone (eq. 8) ``{Σ_k α_k Γ_k : α ≥ 0}``.

The spatial basis is stored on the coarse grid on which the thin-plate splines were evaluated
and interpolated bicubically to the image size when an operator is built (the full-size maps
are a linear function of the coarse ones, so ``w_i`` can be formed coarse and interpolated).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import nnls

from psfmap._container import load_container, save_container
from psfmap._validation import as_tensor, describe
from psfmap.calibrate.spatial import upsample

KIND = "operator_family"


class OperatorFamily:
    """A calibrated family of product-convolution operators ``H_Γ`` (paper eq. 6).

    Parameters
    ----------
    eigen_psfs : array (I, h, w)
        Orthonormal eigen-PSFs ``u_i`` centred at ``(h//2, w//2)``.
    spatial_basis : array (J, Gr, Gc) or (J, H, W)
        Spatial basis ``v_j`` on a coarse grid whose corners are the image's corner pixels
        (or at full size).
    gammas : array (K, I, J)
        Coefficients ``Γ_k`` of the K calibrated conditions, in input order.
    image_shape : (H, W)
        Size of the images the operators act on.
    metadata : dict, optional
        Optics (``pixel_size`` µm, ``na``, ``wavelength``...) and calibration report (spectra,
        bead counts); saved with the family.

    Attributes
    ----------
    patches : PatchSet or None
        After :func:`psfmap.calibrate`: the clean bead patches used (not saved to files).
    coefficients : ndarray (N, I) or None
        Their coefficients on the eigen-PSFs.

    Examples
    --------
    >>> family = psfmap.calibrate(bead_images)             # doctest: +SKIP
    >>> blurred = family.operators()[0].forward(image)      # doctest: +SKIP
    """

    def __init__(
        self,
        eigen_psfs: Any,
        spatial_basis: Any,
        gammas: Any,
        image_shape: tuple[int, int],
        metadata: Mapping[str, Any] | None = None,
    ):
        eigen = _as_float64(eigen_psfs, "eigen_psfs")
        basis = _as_float64(spatial_basis, "spatial_basis")
        gammas = _as_float64(gammas, "gammas")
        if eigen.ndim != 3:
            raise ValueError(f"eigen_psfs must have shape (I, h, w), got {eigen.shape}")
        if basis.ndim != 3:
            raise ValueError(f"spatial_basis must have shape (J, Gr, Gc), got {basis.shape}")
        if gammas.ndim == 2:
            gammas = gammas[None]
        if gammas.ndim != 3 or gammas.shape[1:] != (eigen.shape[0], basis.shape[0]):
            raise ValueError(
                f"gammas must have shape (K, I, J) = (K, {eigen.shape[0]}, {basis.shape[0]}), "
                f"got {gammas.shape}"
            )
        image_shape = tuple(int(n) for n in image_shape)
        if len(image_shape) != 2 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W) with H, W >= 1, got {image_shape}")
        if basis.shape[1] > image_shape[0] or basis.shape[2] > image_shape[1]:
            raise ValueError(
                f"spatial_basis grid {basis.shape[1:]} is larger than image_shape {image_shape}"
            )
        self._eigen = eigen
        self._basis = basis
        self._gammas = gammas
        self.image_shape: tuple[int, int] = image_shape  # type: ignore[assignment]
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._full_basis: torch.Tensor | None = None
        # set by psfmap.calibrate (not saved): the clean patches and their coefficients on u_i
        self.patches = None
        self.coefficients: np.ndarray | None = None

    # ------------------------------------------------------------------ shapes
    @property
    def n_eigen_psfs(self) -> int:
        """I, the number of eigen-PSFs."""
        return int(self._eigen.shape[0])

    @property
    def n_spatial(self) -> int:
        """J, the number of spatial basis maps."""
        return int(self._basis.shape[0])

    @property
    def n_conditions(self) -> int:
        """K, the number of calibrated operators."""
        return int(self._gammas.shape[0])

    @property
    def kernel_shape(self) -> tuple[int, int]:
        return int(self._eigen.shape[1]), int(self._eigen.shape[2])

    def __len__(self) -> int:
        return self.n_conditions

    def __repr__(self) -> str:
        return (
            f"OperatorFamily(I={self.n_eigen_psfs}, J={self.n_spatial}, K={self.n_conditions}, "
            f"kernel_shape={self.kernel_shape}, image_shape={self.image_shape})"
        )

    # ------------------------------------------------------------------ arrays
    @property
    def eigen_psfs(self) -> torch.Tensor:
        """Eigen-PSFs ``u_i`` as a float32 tensor (I, h, w)."""
        return torch.from_numpy(self._eigen).float()

    @property
    def spatial_basis(self) -> torch.Tensor:
        """Spatial basis ``v_j`` at full size, float32 tensor (J, H, W) (computed once)."""
        if self._full_basis is None:
            self._full_basis = upsample(torch.from_numpy(self._basis), self.image_shape).float()
        return self._full_basis

    @property
    def coarse_spatial_basis(self) -> np.ndarray:
        """Spatial basis on the coarse grid (J, Gr, Gc), float64."""
        return self._basis.copy()

    @property
    def gammas(self) -> torch.Tensor:
        """Coefficients ``Γ_k`` of the calibrated conditions, float64 tensor (K, I, J)."""
        return torch.from_numpy(self._gammas.copy())

    def basis_at(self, positions: np.ndarray) -> np.ndarray:
        """Values ``v_j(y)`` ``(N, J)`` at sub-pixel positions ``(N, 2)`` (bicubic, as the maps)."""
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
        height, width = self.image_shape
        _, gr, gc = self._basis.shape
        # grid_sample with align_corners=True: -1 and 1 are the corner pixel centres
        grid = np.empty((1, 1, len(positions), 2))
        grid[0, 0, :, 0] = 2 * positions[:, 1] / max(width - 1, 1) - 1
        grid[0, 0, :, 1] = 2 * positions[:, 0] / max(height - 1, 1) - 1
        values = torch.nn.functional.grid_sample(
            torch.from_numpy(self._basis)[None], torch.from_numpy(grid), mode="bicubic",
            align_corners=True, padding_mode="border",
        )
        return values[0, :, 0, :].numpy().T

    # ------------------------------------------------------------------ operators
    def _check_gamma(self, gamma: Any) -> np.ndarray:
        array = _as_float64(gamma, "gamma")
        expected = (self.n_eigen_psfs, self.n_spatial)
        if array.shape != expected:
            # a flat vector (the lifted problem's unknown, C order) is accepted; a matrix of
            # another shape (e.g. transposed) is not silently reshaped
            if array.ndim == 1 and array.size == np.prod(expected):
                array = array.reshape(expected)
            else:
                raise ValueError(f"gamma must have shape (I, J) = {expected} (or be flat, "
                                 f"I·J = {int(np.prod(expected))}), got {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError("gamma contains NaN or infinite values; expected finite numbers")
        return array

    def weights(self, gamma: Any) -> torch.Tensor:
        """Full-size weight maps ``w_i = Σ_j γ_ij v_j`` (I, H, W), float32."""
        gamma = self._check_gamma(gamma)
        coarse = np.einsum("ij,jrc->irc", gamma, self._basis)
        return upsample(torch.from_numpy(coarse), self.image_shape).float()

    def operator(
        self,
        gamma: Any,
        *,
        factored: bool = True,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        compress: bool | None = None,
    ):
        """The operator ``H_Γ = Σ_i u_i ⋆ (w_i · f)``, ``w_i = Σ_j γ_ij v_j``.

        Parameters
        ----------
        gamma : array (I, J)
            Coefficients Γ (e.g. ``family.gammas[k]`` or an identified Γ).
        factored : bool
            Use the exact factorisation ``Γ = A diag(s) Bᵀ`` (SVD, rank r ≤ min(I, J)):
            ``H_Γ f = Σ_r (s_r Σ_i a_ir u_i) ⋆ ((Σ_j b_jr v_j) · f)`` — the same operator with
            r instead of I terms (fewer FFTs and weight maps; nothing is approximated, unlike
            :meth:`~psfmap.operators.ProductConvolution.compress`). ``False`` keeps the
            kernels ``u_i`` and weights ``w_i``.
        dtype, device :
            Of the operator (float32 by default).
        compress : bool, optional
            Deprecated name of ``factored`` (it is exact, not a compression).

        Returns
        -------
        ProductConvolution
            With the family's optics metadata.
        """
        from psfmap.operators import ProductConvolution

        if compress is not None:
            warnings.warn("OperatorFamily.operator(compress=...) is deprecated; use factored=",
                          DeprecationWarning, stacklevel=2)
            factored = compress
        gamma = self._check_gamma(gamma)
        eigen = self._eigen
        if factored:
            left, singular, right_t = np.linalg.svd(gamma, full_matrices=False)
            keep = singular > 1e-12 * max(float(singular[0]), 1e-300)
            keep[0] = True
            eigen = np.einsum("ir,ihw->rhw", left[:, keep] * singular[keep], self._eigen)
            coarse = np.einsum("rj,jyx->ryx", right_t[keep], self._basis)
        else:
            coarse = np.einsum("ij,jrc->irc", gamma, self._basis)
        dtype = dtype or torch.float32
        weights = upsample(torch.from_numpy(coarse), self.image_shape).to(dtype)
        kernels = torch.from_numpy(np.ascontiguousarray(eigen)).to(dtype)
        metadata = {k: v for k, v in self.metadata.items() if k in _OPTICS_KEYS}
        metadata["source"] = "operator_family"
        operator = ProductConvolution(kernels, weights, metadata)
        if device is not None:
            operator = operator.to(device=device)
        return operator

    def operators(self, **kwargs) -> list:
        """The K calibrated operators ``H_{Γ_k}``, in the order of the calibration images.

        Each holds ``min(I, J)`` full-size weight maps (see :meth:`operator`); for many large
        images build them one at a time with ``operator(family.gammas[k])``.
        """
        return [self.operator(gamma, **kwargs) for gamma in self._gammas]

    def psfs_at(self, gamma: Any, positions: np.ndarray) -> np.ndarray:
        """PSFs ``Σ_ij γ_ij v_j(y) u_i`` ``(N, h, w)`` at sub-pixel positions ``(N, 2)``."""
        gamma = self._check_gamma(gamma)
        coefficients = self.basis_at(positions) @ gamma.T  # (N, I)
        return np.einsum("ni,ihw->nhw", coefficients, self._eigen)

    def project(self, gamma: Any) -> np.ndarray:
        """Closest point of the cone ``{Σ_k α_k Γ_k, α ≥ 0}`` to ``gamma`` (paper eq. 8).

        Solves ``min_{α ≥ 0} ‖Σ_k α_k Γ_k − Γ‖_F`` by non-negative least squares
        (Lawson–Hanson) and returns ``Σ_k α_k Γ_k`` as a float64 (I, J) array.
        """
        alpha = self.cone_coefficients(gamma)
        return (alpha @ self._gammas.reshape(self.n_conditions, -1)).reshape(self.projected_shape)

    def cone_coefficients(self, gamma: Any) -> np.ndarray:
        """The ``α ≥ 0`` of :meth:`project`, shape (K,)."""
        gamma = self._check_gamma(gamma)
        matrix = self._gammas.reshape(self.n_conditions, -1).T
        alpha, _ = nnls(matrix, gamma.ravel())
        return alpha

    @property
    def projected_shape(self) -> tuple[int, int]:
        return self.n_eigen_psfs, self.n_spatial

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write the family to one self-describing psfmap file (kind ``operator_family``)."""
        meta = {**self.metadata, **dict(metadata or {})}
        meta["image_shape"] = list(self.image_shape)
        arrays = {
            "eigen_psfs": self._eigen,
            "spatial_basis": self._basis,
            "gammas": self._gammas,
        }
        return save_container(path, KIND, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> OperatorFamily:
        """Read a family written by :meth:`save`."""
        _, arrays, meta = load_container(path, KIND)
        try:
            image_shape = tuple(meta.pop("image_shape"))
            return cls(arrays["eigen_psfs"], arrays["spatial_basis"], arrays["gammas"],
                       image_shape, meta)
        except KeyError as missing:
            raise ValueError(f"{str(path)!r} is missing the entry {missing}") from None


_OPTICS_KEYS = (
    "pixel_size", "na", "wavelength", "immersion_index", "microscope", "units",
)


def _as_float64(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    if isinstance(value, np.ndarray) or isinstance(value, (list, tuple)):
        return as_tensor(value, name, dtype=torch.float64).numpy()
    raise TypeError(f"{name} must be a NumPy array or torch tensor, got {describe(value)}")
