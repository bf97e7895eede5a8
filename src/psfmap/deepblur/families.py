r"""Families of operators ``A(γ)`` with an admissible set ``C`` of coefficients (Deep-Blur).

Two kinds, both giving psfmap operators so that the unrolled network's data term is the
operator's own ``forward``/``adjoint``:

* :class:`ZernikeBoxFamily` — a named parametric PSF family (``zernike7``: Noll 4–10 in
  [−0.15, 0.15] waves) on a box ``C``; ``A(γ)`` is the space-invariant
  :class:`~psfmap.operators.Convolution` by the family's PSF ``k(γ)``.
* :class:`CalibratedHullFamily` — a calibrated :class:`~psfmap.calibrate.OperatorFamily`
  ``H_Γ f = Σ_ij γ_ij u_i ⋆ (v_j · f)`` (Debarnot, Mangeat & Weiss, IEEE TCI 2021, eq. 6) with
  ``γ = vec(Γ)`` (P = I·J) in the convex hull of its calibrated ``Γ_k``; ``A(γ)`` is the
  space-variant :class:`~psfmap.operators.ProductConvolution`. The field of view is mapped
  onto the image, whatever its size.

Both provide the PSF field ``k(γ)`` (PSFs on a 4 × 4 grid of field positions) on which the
identification SNR ``10 log10(‖k(γ)‖² / ‖k(γ) − k(γ̂)‖²)`` is measured.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psfmap._validation import describe
from psfmap.calibrate.family import OperatorFamily
from psfmap.deepblur.admissible import hull_distance, sample_box, sample_convex
from psfmap.operators import Convolution
from psfmap.psf.families import PSFFamily, model_from_config

__all__ = ["CalibratedHullFamily", "ZernikeBoxFamily", "family_from_config", "field_snr"]

#: points of the field (fractions of the image side) where PSF fields are compared
FIELD_GRID = 4
#: tolerance, relative to the admissible set's size, within which γ counts as admissible
ADMISSIBLE_TOLERANCE = 1e-3


def gamma_array(gamma: Any, n_params: int, name: str = "gamma", what: str = "a vector"
                ) -> np.ndarray:
    """``gamma`` (sequence, array or tensor) as a float64 array; a TypeError naming ``name``
    when it holds something other than numbers."""
    if isinstance(gamma, torch.Tensor):
        gamma = gamma.detach().cpu().double().numpy()
    try:
        return np.asarray(gamma, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be {what} of {n_params} numbers, got "
                        f"{describe(gamma)}") from None


def _vector(gamma: Any, n_params: int, name: str = "gamma") -> np.ndarray:
    array = gamma_array(gamma, n_params, name)
    if array.ndim != 1 or array.size != n_params:
        raise ValueError(f"{name} must be a vector of length P = {n_params} (the family's "
                         f"number of coefficients), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; expected finite numbers")
    return array


class _Family:
    """What both kinds share: validation of γ against the admissible set."""

    name: str
    n_params: int
    #: the centre of the admissible set (the box's middle, the mean of the hull's vertices):
    #: the answer that carries no information, the baseline of the identification figures
    centre: np.ndarray

    def contains(self, gamma: Any) -> bool:
        """Whether ``gamma`` is in the admissible set (to :data:`ADMISSIBLE_TOLERANCE`)."""
        return self.distance(gamma) <= ADMISSIBLE_TOLERANCE * self.scale

    def check_gamma(self, gamma: Any, *, outside: str = "project") -> np.ndarray:
        """``gamma`` as a float64 vector, checked; a γ outside ``C`` is projected onto it with
        a ``UserWarning`` (``outside="project"``) or refused (``outside="raise"``)."""
        vector = _vector(gamma, self.n_params)
        if outside not in ("project", "raise"):
            raise ValueError(f"outside must be 'project' or 'raise', got {outside!r}")
        distance = self.distance(vector)
        if distance <= ADMISSIBLE_TOLERANCE * self.scale:
            return vector
        message = (f"gamma is outside the admissible set of the {self.name} family (distance "
                   f"{distance:.3g}, set size {self.scale:.3g})")
        if outside == "raise":
            raise ValueError(message + "; expected a point of the set")
        warnings.warn(message + "; projected onto it", UserWarning, stacklevel=3)
        return self.project(vector)

    def field_snr(self, gamma: Any, estimate: Any) -> float:
        """PSF-field SNR (dB) of ``estimate`` against ``gamma`` (see :func:`field_snr`)."""
        return field_snr(self.psf_field(gamma), self.psf_field(estimate))


class ZernikeBoxFamily(_Family):
    """A parametric PSF family on its box of parameters; ``A(γ) = Convolution(k(γ))``.

    Parameters
    ----------
    psf_family : PSFFamily
        E.g. ``psfmap.psf.model("zernike7")``.
    """

    kind = "box"
    #: the same blur everywhere in the field (``identify`` may read a part of it)
    space_invariant = True

    def __init__(self, psf_family: PSFFamily):
        if not isinstance(psf_family, PSFFamily):
            raise TypeError(f"psf_family must be a psfmap.psf.PSFFamily, got "
                            f"{type(psf_family).__name__}")
        self.psf_family = psf_family
        self.name = psf_family.name
        self.n_params = psf_family.n_params
        self.low = psf_family.low.copy()
        self.high = psf_family.high.copy()
        self.scale = float(np.linalg.norm(self.high - self.low))
        self.centre = (self.low + self.high) / 2
        self.kernel_shape = (psf_family.size, psf_family.size)
        # Noll terms even under ρ → −ρ (defocus, astigmatisms): k(−c_even, c_odd) = k(c) for a
        # real pupil, so γ and its twin are the same PSF (see :meth:`twin`)
        self._even = [i for i, label in enumerate(psf_family.names) if label in ("a4", "a5", "a6")]

    def __repr__(self) -> str:
        return f"ZernikeBoxFamily({self.name!r}, P={self.n_params})"

    def sample(self, n: int, seed: Any = None, *, spread: bool = True) -> np.ndarray:
        """``n`` coefficient vectors of the box, MaxiSumMin-spread (or uniform)."""
        if spread:
            return sample_box(self.low, self.high, n, seed)
        generator = torch.Generator().manual_seed(int(seed or 0))
        return self.psf_family.sample(n, generator, dtype=torch.float64).numpy()

    def distance(self, gamma: Any) -> float:
        vector = _vector(gamma, self.n_params)
        return float(np.linalg.norm(vector - np.clip(vector, self.low, self.high)))

    def project(self, gamma: Any) -> np.ndarray:
        return np.clip(_vector(gamma, self.n_params), self.low, self.high)

    def twin(self, gamma: torch.Tensor) -> torch.Tensor:
        """The coefficients with the even terms negated: the same PSF (``(..., P)`` tensor)."""
        out = gamma.clone()
        out[..., self._even] = -out[..., self._even]
        return out

    def normalize(self, gamma: torch.Tensor) -> torch.Tensor:
        """Coefficients to ``[-1, 1]`` over the box (the identification network's target)."""
        low = torch.as_tensor(self.low, dtype=gamma.dtype)
        high = torch.as_tensor(self.high, dtype=gamma.dtype)
        return 2 * (gamma - low) / (high - low) - 1

    def denormalize(self, unit: torch.Tensor) -> torch.Tensor:
        low = torch.as_tensor(self.low, dtype=unit.dtype)
        high = torch.as_tensor(self.high, dtype=unit.dtype)
        return low + (unit + 1) * (high - low) / 2

    def psfs(self, gammas: Any) -> torch.Tensor:
        """PSFs ``(B, h, w)`` of coefficient vectors ``(B, P)``."""
        return self.psf_family(torch.as_tensor(np.asarray(gammas, dtype=np.float64)))

    def operator(self, gamma: Any, image_shape: tuple[int, int] | None = None,
                 *, dtype: torch.dtype = torch.float32) -> Convolution:
        """``A(γ)``: the space-invariant convolution by ``k(γ)`` (any image size)."""
        vector = _vector(gamma, self.n_params)
        psf = self.psf_family(torch.from_numpy(vector)).to(dtype)
        return Convolution(psf, {**self.psf_family.optics, "source": f"deepblur:{self.name}",
                                 "gamma": vector.tolist()})

    def operators(self, gammas: np.ndarray, image_shape: tuple[int, int] | None = None,
                  *, dtype: torch.dtype = torch.float32) -> list:
        """``A(γ_b)`` for a batch ``(B, P)`` (PSFs evaluated in one batch)."""
        psfs = self.psfs(gammas).to(dtype)
        return [Convolution(psf) for psf in psfs]

    def psf_field(self, gamma: Any) -> np.ndarray:
        """``k(γ)``: the one PSF (space-invariant), ``(1, h, w)``."""
        vector = _vector(gamma, self.n_params)
        return self.psf_family(torch.from_numpy(vector)).double().numpy()[None]

    def psf_fields(self, gammas: torch.Tensor) -> torch.Tensor:
        """``k(γ_b)`` of a batch ``(B, P)`` as ``(B, 1, h, w)``, differentiable in ``γ``."""
        return self.psf_family(gammas)[:, None]

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "psf_model": self.psf_family.config()}


class CalibratedHullFamily(_Family):
    """A calibrated operator family on the convex hull of its ``Γ_k``; ``γ = vec(Γ)``.

    Parameters
    ----------
    operator_family : OperatorFamily
        From :func:`psfmap.calibrate` (or :meth:`OperatorFamily.load`).
    name : str
        A label for messages and files.
    """

    kind = "calibrated_hull"
    #: the blur varies across the field: ``identify`` reads all of it
    space_invariant = False

    def __init__(self, operator_family: OperatorFamily, name: str = "calibrated",
                 source: str | None = None):
        if not isinstance(operator_family, OperatorFamily):
            raise TypeError(f"operator_family must be a psfmap.calibrate.OperatorFamily, got "
                            f"{type(operator_family).__name__}")
        self.operator_family = operator_family
        self.name = name
        self.source = source
        self.vertices = operator_family.gammas.reshape(operator_family.n_conditions, -1).numpy()
        self.n_params = int(self.vertices.shape[1])
        self.kernel_shape = operator_family.kernel_shape
        self.centre = self.vertices.mean(0)
        centred = self.vertices - self.centre
        self.scale = float(np.sqrt((centred**2).sum(1).max())) or 1.0
        spread = self.vertices.std(0)
        self._std = np.where(spread > 1e-12 * self.scale, spread, self.scale)
        self._by_shape: dict[tuple[int, int], OperatorFamily] = {}
        self._unit_fields: torch.Tensor | None = None

    def __repr__(self) -> str:
        fam = self.operator_family
        return (f"CalibratedHullFamily({self.name!r}, P={self.n_params} (I={fam.n_eigen_psfs}, "
                f"J={fam.n_spatial}), K={fam.n_conditions} vertices)")

    def sample(self, n: int, seed: Any = None, *, spread: bool = True) -> np.ndarray:
        """``n`` points of the hull, MaxiSumMin-spread (or Dirichlet)."""
        from psfmap.deepblur.admissible import dirichlet_points

        if spread:
            return sample_convex(self.vertices, n, seed)
        return dirichlet_points(self.vertices, n, seed=seed)

    def distance(self, gamma: Any) -> float:
        return float(hull_distance(_vector(gamma, self.n_params)[None], self.vertices)[0])

    def project(self, gamma: Any) -> np.ndarray:
        """The closest point of the hull (NNLS on barycentric weights, renormalised)."""
        from scipy.optimize import nnls

        vector = _vector(gamma, self.n_params)
        penalty = 1e4
        matrix = np.vstack([self.vertices.T / self.scale,
                            penalty * np.ones((1, len(self.vertices)))])
        alpha, _ = nnls(matrix, np.concatenate([vector / self.scale, [penalty]]))
        return (alpha / alpha.sum()) @ self.vertices

    def twin(self, gamma: torch.Tensor) -> torch.Tensor:
        """Itself: the space variation makes γ identifiable (no twin)."""
        return gamma

    def normalize(self, gamma: torch.Tensor) -> torch.Tensor:
        return (gamma - torch.as_tensor(self.centre, dtype=gamma.dtype)) / torch.as_tensor(
            self._std, dtype=gamma.dtype)

    def denormalize(self, unit: torch.Tensor) -> torch.Tensor:
        return unit * torch.as_tensor(self._std, dtype=unit.dtype) + torch.as_tensor(
            self.centre, dtype=unit.dtype)

    def _family_for(self, image_shape: tuple[int, int]) -> OperatorFamily:
        """The family with its field of view mapped onto an image of ``image_shape``."""
        image_shape = (int(image_shape[0]), int(image_shape[1]))
        if image_shape not in self._by_shape:
            fam = self.operator_family
            grid = fam.coarse_spatial_basis
            if grid.shape[1] > image_shape[0] or grid.shape[2] > image_shape[1]:
                raise ValueError(f"image is {image_shape}, smaller than the family's coarse "
                                 f"grid {grid.shape[1:]}; expected a larger image")
            if len(self._by_shape) > 8:
                self._by_shape.clear()
            self._by_shape[image_shape] = OperatorFamily(
                fam.eigen_psfs.double(), grid, fam.gammas, image_shape, fam.metadata)
        return self._by_shape[image_shape]

    def operator(self, gamma: Any, image_shape: tuple[int, int] | None = None,
                 *, dtype: torch.dtype = torch.float32):
        """``A(γ) = H_Γ`` on images of ``image_shape`` (the calibrated size by default)."""
        vector = _vector(gamma, self.n_params)
        family = self._family_for(image_shape or self.operator_family.image_shape)
        return family.operator(vector, dtype=dtype)

    def operators(self, gammas: np.ndarray, image_shape: tuple[int, int] | None = None,
                  *, dtype: torch.dtype = torch.float32) -> list:
        return [self.operator(g, image_shape, dtype=dtype) for g in np.asarray(gammas)]

    def psf_field(self, gamma: Any) -> np.ndarray:
        """PSFs ``(16, h, w)`` at the centres of a 4 × 4 grid over the calibrated field."""
        vector = _vector(gamma, self.n_params)
        fam = self.operator_family
        height, width = fam.image_shape
        rows = (np.arange(FIELD_GRID) + 0.5) * (height - 1) / FIELD_GRID
        cols = (np.arange(FIELD_GRID) + 0.5) * (width - 1) / FIELD_GRID
        positions = np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)
        return fam.psfs_at(vector.reshape(fam.projected_shape), positions)

    def psf_fields(self, gammas: torch.Tensor) -> torch.Tensor:
        """:meth:`psf_field` of a batch ``(B, P)`` as ``(B, 16, h, w)``, differentiable in
        ``γ``: the field is linear in ``γ``, so it is ``γ`` times the fields of the unit
        vectors (computed once)."""
        if self._unit_fields is None:
            self._unit_fields = torch.from_numpy(
                np.stack([self.psf_field(row) for row in np.eye(self.n_params)]))
        basis = self._unit_fields.to(gammas.dtype)
        return torch.einsum("bp,pfhw->bfhw", gammas, basis)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "family_file": self.source}


def field_snr(reference: np.ndarray, estimate: np.ndarray) -> float:
    r"""``10 log10(‖k(γ)‖² / ‖k(γ) − k(γ̂)‖²)`` over a PSF field (dB; ``inf`` when equal)."""
    reference = np.asarray(reference, dtype=np.float64)
    error = float(((reference - np.asarray(estimate, dtype=np.float64)) ** 2).sum())
    if error == 0.0:
        return float("inf")
    return float(10 * np.log10((reference**2).sum() / error))


def family_from_config(config: Mapping[str, Any], directory: Path | None = None) -> _Family:
    """Rebuild a family from its ``config()`` (a family file is looked up in ``directory``)."""
    kind = config.get("kind")
    if kind == "box":
        return ZernikeBoxFamily(model_from_config(config["psf_model"]))
    if kind == "calibrated_hull":
        path = Path(config["family_file"])
        if not path.is_absolute() and directory is not None:
            path = directory / path
        return CalibratedHullFamily(OperatorFamily.load(path), config.get("name", "calibrated"),
                                    source=config["family_file"])
    raise ValueError(f"unknown deepblur family kind {kind!r}; expected 'box' or 'calibrated_hull'")
