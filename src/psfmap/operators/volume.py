"""Volume operators: 3D convolution and 3D product convolution ``H f = Σ_i k_i ⋆ (w_i · f)``.

The same contract as the 2D operators, on volumes ``(..., D, H, W)`` (leading axes are
independent stacks): kernels ``(I, d, h, w)`` centred at ``(d // 2, h // 2, w // 2)``, weights
``(I, D, H, W)``; convolutions are linear (zero outside the volume), the output has the input's
size. With the kernels the 3D PSFs of sources at several depths and the weights a partition of
unity in ``z``, this is the depth-variant "strata" model of Preza & Conchello (2004); weights
varying in ``x, y`` too make it field- and depth-variant.

Evaluation is the Fourier sum with cached kernel spectra: forward = ``I`` forward real 3D FFTs
and **one** inverse, adjoint = one forward and ``I`` inverses (inverses through
:func:`psfmap.operators.fft3d.irfft3`, never ``irfftn``).

Weights are dense ``(I, D, H, W)`` or factored (a PSF grid and its compressions):

    w_i(z, y, x) = Σ_{a,b,c} C_i[a, b, c] · Z_a(z) · Y_b(y) · X_c(x)

with hat profiles ``Z (gz, D)``, ``Y (gy, H)``, ``X (gx, W)`` and a core ``C (I, gz, gy, gx)``
(one-hot for a grid, mixed by compression), so a grid never stores ``I D H W`` numbers.

References
----------
Preza & Conchello, "Depth-variant maximum-likelihood restoration for three-dimensional
fluorescence microscopy", JOSA A 21 (2004).
Nagy & O'Leary, SIAM J. Sci. Comput. 1998 (product convolution / PSF interpolation).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psfmap._container import load_container, save_container
from psfmap._validation import as_tensor, check_finite, check_psf, describe
from psfmap.operators import volume_slabs
from psfmap.operators.base import LinearOperator, as_real_float
from psfmap.operators.fft3d import (
    centred_spectra_3d,
    irfft3,
    rfft3,
    same_fft_shape_3d,
    times_conj,
)

__all__ = ["VolumeConvolution", "VolumeProductConvolution", "as_volume", "from_psf_grid_3d"]

# dense weights materialised from factors are kept when they fit in this many bytes;
# larger volumes rebuild each term's weight at each use (cheap next to its FFT)
_DENSE_CACHE_BYTES = 512 * 2**20
Triple = tuple[int, int, int]


def as_volume(x: Any, name: str, image_shape: Triple | None) -> torch.Tensor:
    """``x`` as a real floating tensor ``(..., D, H, W)`` checked against ``image_shape``."""
    tensor = as_real_float(x, name)
    if tensor.ndim < 3:
        raise ValueError(f"{name} must be a volume (..., D, H, W) for a 3D operator, got "
                         f"{describe(x)}; a 2D image needs a 2D operator")
    if image_shape is not None and tuple(tensor.shape[-3:]) != tuple(image_shape):
        raise ValueError(f"{name} has volume shape {tuple(tensor.shape[-3:])}, expected "
                         f"{tuple(image_shape)} (the operator's image_shape)")
    return tensor


def _margins(margin: Any) -> Triple:
    if isinstance(margin, (int, np.integer)):
        margin = (int(margin),) * 3
    try:
        values = tuple(int(m) for m in margin)
    except TypeError:
        raise ValueError(f"margin must be an int or (mz, my, mx), got {margin!r}") from None
    if len(values) != 3 or min(values) < 0:
        raise ValueError(f"margin must be an int or (mz, my, mx) of values >= 0, got {margin!r}")
    return values


class VolumeConvolution(LinearOperator):
    """Space-invariant 3D blur by one PSF ``(d, h, w)``, for volumes of any size.

    ``H f = F⁻¹(K · F f)`` on the volume zero-padded to a fast FFT size: the linear
    convolution, equal to ``scipy.signal.fftconvolve(f, k, mode='same')``. Built by
    ``Convolution(psf)`` when ``psf`` has three axes.
    """

    image_shape = None
    ndim = 3

    def __init__(self, psf: Any, metadata: Mapping[str, Any] | None = None):
        psf = as_tensor(psf, "psf")
        if psf.ndim != 3:
            raise ValueError(f"psf must be a 3D PSF (d, h, w), got shape {tuple(psf.shape)}")
        self.psf = check_psf(psf, "psf")
        self.kernel_shape: Triple = tuple(int(n) for n in psf.shape)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.compression_error = 0.0
        self._cache: dict[Any, torch.Tensor] = {}

    kernels = property(lambda self: self.psf[None], doc="The PSF as one kernel (1, d, h, w).")
    n_kernels = property(lambda self: 1)
    dtype = property(lambda self: self.psf.dtype)
    device = property(lambda self: self.psf.device)

    def __repr__(self) -> str:
        return f"VolumeConvolution(kernel_shape={self.kernel_shape}, dtype={self.dtype})"

    def _spectrum(self, shape, dtype, device) -> tuple[torch.Tensor, Triple]:
        fft_shape = same_fft_shape_3d(shape, self.kernel_shape)
        if self.psf.requires_grad:
            return centred_spectra_3d(self.psf[None].to(device=device, dtype=dtype),
                                      fft_shape)[0], fft_shape
        key = (fft_shape, dtype, str(device))
        if key not in self._cache:
            if len(self._cache) > 4:  # volumes of many sizes: keep the memory bounded
                self._cache.clear()
            self._cache[key] = centred_spectra_3d(
                self.psf[None].to(device=device, dtype=dtype), fft_shape)[0]
        return self._cache[key], fft_shape

    def _apply(self, x: Any, name: str, conjugate: bool) -> torch.Tensor:
        x = as_volume(x, name, None)
        shape = tuple(x.shape[-3:])
        spectrum, fft_shape = self._spectrum(shape, x.dtype, x.device)
        # in place when no autograd graph runs through the product
        in_place = not torch.is_grad_enabled() or not (x.requires_grad or spectrum.requires_grad)
        product = rfft3(x, fft_shape)
        if conjugate:
            product = times_conj(product, spectrum, in_place)
        else:
            product = product.mul_(spectrum) if in_place else product * spectrum
        out = irfft3(product, fft_shape)
        return out[..., : shape[0], : shape[1], : shape[2]]

    def forward(self, x: Any) -> torch.Tensor:
        """``psf ⋆ x`` on ``(..., D, H, W)``."""
        return self._apply(x, "x", conjugate=False)

    def adjoint(self, y: Any) -> torch.Tensor:
        """Correlation with the PSF (convolution with the flipped PSF)."""
        return self._apply(y, "y", conjugate=True)

    def psf_at(self, z: int, y: int, x: int) -> torch.Tensor:
        """The PSF, the same at every voxel."""
        return self.psf

    def extended(self, margin: Any) -> VolumeConvolution:
        """Itself: a convolution acts on volumes of any size."""
        _margins(margin)
        return self

    def compress(self, rank: int | None = None, energy: float | None = None
                 ) -> VolumeConvolution:
        """Itself (one kernel is already the lowest rank)."""
        from psfmap.operators.compression import check_compression

        check_compression(rank, energy)
        return self

    def to(self, dtype: torch.dtype | None = None, device: Any = None) -> VolumeConvolution:
        """A copy with the PSF in ``dtype`` on ``device`` (each kept when omitted)."""
        return VolumeConvolution(self.psf.to(device=device or self.device,
                                             dtype=dtype or self.dtype), self.metadata)

    def save(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write the PSF and metadata to one ``.psfmap`` file (atomic); return the path."""
        meta = {**self.metadata, **dict(metadata or {})}
        return save_container(path, "convolution", {"psf": self.psf.detach().cpu().numpy()}, meta)


def _hat_profiles(n_cells: int, length: int) -> np.ndarray:
    """``(n_cells, length)`` linear partition of unity centred at ``(k + ½) length / n``
    (the profiles of :func:`psfmap.operators.grid.hat_profiles`, rebuilt here so that the
    volume operators import nothing from the 2D representation)."""
    if n_cells == 1:
        return np.ones((1, length))
    centres = (np.arange(n_cells) + 0.5) * length / n_cells
    positions = np.arange(length, dtype=np.float64)
    return np.stack([np.interp(positions, centres, np.eye(n_cells)[k]) for k in range(n_cells)])


class VolumeProductConvolution(LinearOperator):
    """Depth- and field-variant 3D blur ``H f = Σ_i k_i ⋆ (w_i · f)`` on ``(..., D, H, W)``.

    Built by ``ProductConvolution(kernels, weights)`` when the kernels have four axes, or by
    :func:`psfmap.operators.from_psf_grid` from a ``(gz, gy, gx, d, h, w)`` grid.

    Parameters
    ----------
    kernels : array or tensor, shape (I, d, h, w)
    weights : array or tensor, shape (I, D, H, W)
    metadata : dict, optional
    engine : {"fourier", "slabs", "depth"} or None
        ``"fourier"``: the Fourier sum over the whole volume; ``"slabs"``: each term on its
        weight's z slab (:mod:`psfmap.operators.volume_slabs`), cheaper for depth grids;
        ``"depth"``: for weights that vary in z only, one lateral FFT pair per call and 1-D
        FFTs along z per term. None (default): "depth" where it applies, else the slabs when
        their FFT volume is below 70 % of the Fourier sum's.
    """

    ndim = 3

    def __init__(self, kernels: Any, weights: Any, metadata: Mapping[str, Any] | None = None,
                 *, engine: str | None = None):
        if engine not in (None, "fourier", "slabs"):
            raise ValueError(f"engine must be 'fourier', 'slabs' or None for a 3D operator, got "
                             f"{engine!r}")
        kernels = self._check_kernels(kernels)
        weights = as_tensor(weights, "weights", dtype=kernels.dtype, device=kernels.device)
        if weights.ndim != 4:
            raise ValueError(f"weights must have shape (I, D, H, W) for 3D kernels, got shape "
                             f"{tuple(weights.shape)}")
        check_finite(weights, "weights")
        if weights.shape[0] != kernels.shape[0]:
            raise ValueError(f"kernels and weights must have the same number I of terms, got "
                             f"{kernels.shape[0]} kernels and {weights.shape[0]} weight maps")
        self._setup(kernels, weights, None, metadata)
        self._engine_override = engine

    @staticmethod
    def _check_kernels(kernels: Any) -> torch.Tensor:
        kernels = check_finite(as_tensor(kernels, "kernels"), "kernels")
        if kernels.ndim != 4 or kernels.shape[0] == 0:
            raise ValueError(f"kernels must have shape (I, d, h, w) with I >= 1, got shape "
                             f"{tuple(kernels.shape)}")
        return kernels

    @classmethod
    def from_factors(cls, kernels: Any, profiles: tuple[Any, Any, Any], core: Any,
                     metadata: Mapping[str, Any] | None = None) -> VolumeProductConvolution:
        """Operator with factored weights ``w_i = Σ C_i[a,b,c] Z_a ⊗ Y_b ⊗ X_c``.

        ``profiles`` = ``(Z (P, D), Y (Q, H), X (R, W))``, ``core`` ``(I, P, Q, R)``.
        """
        kernels = cls._check_kernels(kernels)
        tensors = [check_finite(as_tensor(p, name, dtype=kernels.dtype, device=kernels.device),
                                name) for p, name in zip(profiles, ("Z", "Y", "X"))]
        core = check_finite(as_tensor(core, "core", dtype=kernels.dtype, device=kernels.device),
                            "core")
        expected = (kernels.shape[0],) + tuple(t.shape[0] for t in tensors)
        if any(t.ndim != 2 for t in tensors) or tuple(core.shape) != expected:
            raise ValueError(f"profiles must be 2-D (P, D), (Q, H), (R, W) and core (I, P, Q, R) "
                             f"= {expected}, got core {tuple(core.shape)}")
        operator = cls.__new__(cls)
        operator._setup(kernels, None, (tuple(tensors), core), metadata)
        return operator

    def _setup(self, kernels, weights, factors, metadata) -> None:
        self.kernels = kernels
        self._dense = weights
        self._profiles, self._core = factors if factors is not None else (None, None)
        if weights is not None:
            shape = tuple(int(n) for n in weights.shape[1:])
        else:
            shape = tuple(int(p.shape[1]) for p in self._profiles)
        if min(shape) < 1:
            raise ValueError(f"weights must cover a non-empty volume, got {shape}")
        self.image_shape: Triple = shape
        self.kernel_shape: Triple = tuple(int(n) for n in kernels.shape[1:])
        if any(k > n for k, n in zip(self.kernel_shape, self.fft_shape)):
            raise ValueError(f"kernels of {self.kernel_shape} voxels are more than twice the "
                             f"volume {shape}; crop the PSFs")
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.compression_error: float | None = None
        self._cache: dict[Any, Any] = {}
        self._engine_override: str | None = None
        self._spans: list[tuple[int, int]] | None = None

    # ------------------------------------------------------------------ properties
    n_kernels = property(lambda self: int(self.kernels.shape[0]))
    dtype = property(lambda self: self.kernels.dtype)
    device = property(lambda self: self.kernels.device)
    is_factored = property(lambda self: self._profiles is not None,
                           doc="Whether the weights are stored as profiles and a core.")

    @property
    def engine(self) -> str:
        """``"depth"``, ``"slabs"`` or ``"fourier"`` (see the ``engine`` parameter)."""
        if self._engine_override is not None:
            return self._engine_override
        if volume_slabs.depth_only(self):
            return "depth"
        return "slabs" if volume_slabs.worth_it(self, self.z_spans) else "fourier"

    @property
    def z_spans(self) -> list[tuple[int, int]]:
        """``(first, stop)`` plane of every weight's support in z (computed once)."""
        if self._spans is None:
            self._spans = volume_slabs.z_spans(self)
        return self._spans

    def with_engine(self, engine: str | None) -> VolumeProductConvolution:
        """The same operator (sharing its tensors and caches) evaluated by ``engine``."""
        if engine not in (None, "fourier", "slabs", "depth"):
            raise ValueError(f"engine must be 'fourier', 'slabs', 'depth' or None, got "
                             f"{engine!r}")
        if engine == "depth" and not volume_slabs.depth_only(self):
            raise ValueError("engine 'depth' needs weights that vary in z only (a depth grid "
                             "(gz, 1, 1, d, h, w) or its compression)")
        other = copy.copy(self)
        other._engine_override = engine
        return other

    @property
    def fft_shape(self) -> Triple:
        """Padded FFT shape of the volume for a linear (not circular) convolution."""
        return same_fft_shape_3d(self.image_shape, self.kernel_shape)

    @property
    def weights(self) -> torch.Tensor:
        """Weight maps ``(I, D, H, W)`` (materialised from the factors on access)."""
        if self._dense is not None:
            return self._dense
        z, y, x = self._profiles
        return torch.einsum("iabc,az,by,cx->izyx", self._core, z, y, x)

    def __repr__(self) -> str:
        return (f"VolumeProductConvolution(I={self.n_kernels}, kernel_shape={self.kernel_shape}, "
                f"image_shape={self.image_shape}, dtype={self.dtype})")

    # ------------------------------------------------------------------ evaluation
    def _cached(self, key, dtype, device, build):
        cache_key = (key, dtype, str(device))
        if cache_key not in self._cache:
            self._cache[cache_key] = build()
        return self._cache[cache_key]

    def _spectra(self, dtype, device) -> torch.Tensor:
        if self.kernels.requires_grad:
            return centred_spectra_3d(self.kernels.to(device=device, dtype=dtype), self.fft_shape)
        return self._cached("spectra", dtype, device, lambda: centred_spectra_3d(
            self.kernels.to(device=device, dtype=dtype), self.fft_shape))

    def _weight(self, i: int, dtype, device) -> torch.Tensor:
        """Weight ``i`` ``(D, H, W)`` in ``dtype`` on ``device``."""
        if self._dense is not None:
            return self._cached("dense", dtype, device,
                                lambda: self._dense.to(device=device, dtype=dtype))[i]
        size = self.n_kernels * int(np.prod(self.image_shape)) * torch.empty(
            (), dtype=dtype).element_size()
        if size <= _DENSE_CACHE_BYTES:
            return self._cached("dense", dtype, device,
                                lambda: self.weights.to(device=device, dtype=dtype))[i]
        z, y, x = (p.to(device=device, dtype=dtype) for p in self._profiles)
        core = self._core[i].to(device=device, dtype=dtype)
        return torch.einsum("abc,az,by,cx->zyx", core, z, y, x)

    def forward(self, x: Any) -> torch.Tensor:
        """Blur ``x`` ``(..., D, H, W)``: ``Σ_i k_i ⋆ (w_i · x)``, same shape out."""
        x = as_volume(x, "x", self.image_shape)
        if self.engine in ("slabs", "depth"):
            flat = x.reshape((-1,) + self.image_shape)
            apply = volume_slabs.slab_forward if self.engine == "slabs" \
                else volume_slabs.depth_forward
            return apply(self, flat, self.z_spans).reshape(x.shape)
        spectra = self._spectra(x.dtype, x.device)
        total = None
        for i in range(self.n_kernels):  # the sum lives in Fourier space: one inverse FFT
            term = rfft3(x * self._weight(i, x.dtype, x.device), self.fft_shape) * spectra[i]
            if total is None:
                total = term
            else:  # in place unless autograd needs both
                total = total + term if total.requires_grad or term.requires_grad \
                    else total.add_(term)
        out = irfft3(total, self.fft_shape)
        d, h, w = self.image_shape
        return out[..., :d, :h, :w]

    def adjoint(self, y: Any) -> torch.Tensor:
        """Adjoint ``H* y = Σ_i w_i · (k̃_i ⋆ y)``, same shape out."""
        y = as_volume(y, "y", self.image_shape)
        if self.engine in ("slabs", "depth"):
            flat = y.reshape((-1,) + self.image_shape)
            apply = volume_slabs.slab_adjoint if self.engine == "slabs" \
                else volume_slabs.depth_adjoint
            return apply(self, flat, self.z_spans).reshape(y.shape)
        spectra = self._spectra(y.dtype, y.device)
        spectrum = rfft3(y, self.fft_shape)
        in_place = not torch.is_grad_enabled() or not (y.requires_grad
                                                       or spectra.requires_grad)
        d, h, w = self.image_shape
        out = None
        for i in range(self.n_kernels):
            blurred = irfft3(times_conj(spectrum.clone(), spectra[i], in_place),
                             self.fft_shape)[..., :d, :h, :w]
            term = blurred * self._weight(i, y.dtype, y.device)
            out = term if out is None else out + term
        return out

    # ------------------------------------------------------------------ local PSFs
    def _coefficients(self, z: int, y: int, x: int) -> torch.Tensor:
        if self._dense is not None:
            return self._dense[:, z, y, x]
        pz, py, px = self._profiles
        return torch.einsum("iabc,a,b,c->i", self._core, pz[:, z], py[:, y], px[:, x])

    def psf_at(self, z: int, y: int, x: int) -> torch.Tensor:
        """Local 3D PSF ``Σ_i w_i(z, y, x) k_i`` of a point source at voxel ``(z, y, x)``."""
        position = (int(z), int(y), int(x))
        if not all(0 <= p < n for p, n in zip(position, self.image_shape)):
            raise ValueError(f"(z, y, x) = {position} is outside the volume {self.image_shape}")
        return torch.einsum("i,idhw->dhw", self._coefficients(*position), self.kernels)

    # ------------------------------------------------------------------ conversions
    def to(self, dtype: torch.dtype | None = None, device: Any = None
           ) -> VolumeProductConvolution:
        """A copy with tensors in ``dtype`` on ``device``."""
        dtype, device = dtype or self.dtype, device or self.device
        kernels = self.kernels.to(device=device, dtype=dtype)
        if self._dense is not None:
            other = VolumeProductConvolution(kernels, self._dense.to(device=device, dtype=dtype),
                                             self.metadata)
        else:
            profiles = tuple(p.to(device=device, dtype=dtype) for p in self._profiles)
            other = VolumeProductConvolution.from_factors(
                kernels, profiles, self._core.to(device=device, dtype=dtype), self.metadata)
        other.compression_error = self.compression_error
        return other

    def extended(self, margin: Any) -> VolumeProductConvolution:
        """The operator on the volume padded by ``margin`` voxels (an int or ``(mz, my, mx)``)
        on every side, weights edge-replicated (a source just outside the volume is blurred by
        the PSF of the nearest voxel)."""
        mz, my, mx = _margins(margin)
        if (mz, my, mx) == (0, 0, 0):
            return self
        metadata = {**self.metadata, "extended_margin": [mz, my, mx]}
        if self._dense is not None:
            padded = torch.nn.functional.pad(self._dense[None], (mx, mx, my, my, mz, mz),
                                             mode="replicate")[0]
            other = VolumeProductConvolution(self.kernels, padded, metadata)
        else:
            profiles = tuple(
                torch.nn.functional.pad(p[:, None], (m, m), mode="replicate")[:, 0]
                for p, m in zip(self._profiles, (mz, my, mx)))
            other = VolumeProductConvolution.from_factors(self.kernels, profiles, self._core,
                                                          metadata)
        other.compression_error = self.compression_error
        return other

    def compress(self, rank: int | None = None, energy: float | None = None
                 ) -> VolumeProductConvolution:
        """Equivalent operator with fewer kernels: the optimal low-rank PSF field.

        ``M = K Wᵀ`` (kernels ``K (dhw, I)``, weights ``W (DHW, I)``). With ``G = WᵀW = E Λ Eᵀ``,
        ``M = (K E Λ^½)(W E Λ^-½)ᵀ`` and the second factor has orthonormal columns, so the SVD
        ``K E Λ^½ = U S Vᵀ`` gives ``M_r = (U_r S_r)(W E Λ^-½ V_r)ᵀ``. New weights are
        combinations of the old ones (a factored operator stays factored); ``compression_error``
        is ``(Σ_{k>r} s_k² / Σ s_k²)^½``. ``energy`` as :func:`psfmap.operators.compress`.
        """
        from psfmap.operators.compression import check_compression

        rank, energy = check_compression(rank, energy)
        if rank is None and energy is None:
            energy = 0.999
        with torch.no_grad():
            gram = self._weights_gram().double()
            values, vectors = torch.linalg.eigh(gram)
            keep = values > values.max().clamp_min(0) * 1e-12
            root, vectors = values[keep].sqrt(), vectors[:, keep]
            flat = self.kernels.detach().double().reshape(self.n_kernels, -1).T
            u, s, vh = torch.linalg.svd(flat @ vectors * root, full_matrices=False)
            energies = torch.cumsum(s**2, 0) / (s**2).sum()
            r = len(s)
            if energy is not None:
                r = min(r, int(torch.searchsorted(energies, energy - 1e-12)) + 1)
            if rank is not None:
                r = min(r, rank)
            mixing = (vectors / root) @ vh[:r].T  # (I, r): new w_j = Σ_i mixing[i, j] w_i
            kernels = (u[:, :r] * s[:r]).T.reshape((r,) + self.kernel_shape)
            error = float(torch.sqrt(torch.clamp(1 - energies[r - 1], min=0)))
        kernels = kernels.to(self.dtype)
        mixing = mixing.to(self.dtype)
        meta = {**self.metadata, "compressed_from": self.n_kernels}
        if self._dense is not None:
            weights = torch.einsum("ir,izyx->rzyx", mixing, self._dense)
            other = VolumeProductConvolution(kernels, weights, meta)
        else:
            core = torch.einsum("ir,iabc->rabc", mixing, self._core)
            other = VolumeProductConvolution.from_factors(kernels, self._profiles, core, meta)
        other.compression_error = error
        return other

    def _weights_gram(self) -> torch.Tensor:
        """``G_ij = <w_i, w_j>`` (from the profiles' Grams when factored)."""
        if self._dense is not None:
            flat = self._dense.detach().double().reshape(self.n_kernels, -1)
            return flat @ flat.T
        grams = [p.detach().double() @ p.detach().double().T for p in self._profiles]
        core = self._core.detach().double()
        return torch.einsum("iabc,aA,bB,cC,jABC->ij", core, *grams, core)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write the operator to one self-describing ``.psfmap`` file (atomic)."""
        meta = {**self.metadata, **dict(metadata or {})}
        meta.update(image_shape=list(self.image_shape), compression_error=self.compression_error)
        arrays = {"kernels": self.kernels.detach().cpu().numpy()}
        if self._dense is not None:
            meta["weights"] = "dense"
            arrays["weights"] = self._dense.detach().cpu().numpy()
        else:
            meta["weights"] = "factored-3d"
            for name, tensor in zip(("profile_z", "profile_y", "profile_x"), self._profiles):
                arrays[name] = tensor.detach().cpu().numpy()
            arrays["core"] = self._core.detach().cpu().numpy()
        return save_container(path, "product_convolution", arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> VolumeProductConvolution:
        """Read an operator written by :meth:`save`."""
        _, arrays, meta = load_container(path, "product_convolution")
        return volume_from_arrays(arrays, meta, path)


def volume_from_arrays(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any],
                       path: Any) -> VolumeProductConvolution:
    """Rebuild a saved 3D product convolution (``ValueError`` naming a missing array)."""
    meta = dict(meta)
    try:
        kernels = torch.from_numpy(arrays["kernels"])
        if meta.get("weights") == "factored-3d":
            profiles = tuple(torch.from_numpy(arrays[name])
                             for name in ("profile_z", "profile_y", "profile_x"))
            operator = VolumeProductConvolution.from_factors(
                kernels, profiles, torch.from_numpy(arrays["core"]), meta)
        else:
            operator = VolumeProductConvolution(kernels, torch.from_numpy(arrays["weights"]), meta)
    except KeyError as missing:
        raise ValueError(f"{str(path)!r} is missing the array {missing}") from None
    operator.compression_error = meta.get("compression_error")
    for key in ("compression_error", "weights", "image_shape", "engine"):
        operator.metadata.pop(key, None)
    return operator


def from_psf_grid_3d(psfs: Any, image_shape: Any) -> VolumeProductConvolution:
    """Depth- and field-variant operator from a ``(gz, gy, gx, d, h, w)`` grid of 3D PSFs.

    Cell ``(a, b, c)`` has its centre at ``((a + ½) D / gz, (b + ½) H / gy, (c + ½) W / gx)``;
    the weights are trilinear hats between centres, constant beyond the outer ones, summing to
    1 at every voxel, and stored factored (three profiles and a one-hot core). A depth-only
    grid is ``(gz, 1, 1, d, h, w)``.
    """
    psfs = as_tensor(psfs, "psfs")
    if psfs.ndim != 6:
        raise ValueError(f"psfs must be a grid of 3D PSFs (gz, gy, gx, d, h, w), got shape "
                         f"{tuple(psfs.shape)}")
    check_psf(psfs, "psfs")
    shape = _volume_shape(image_shape)
    grid, kernel_shape = tuple(psfs.shape[:3]), tuple(psfs.shape[3:])
    if any(g > n for g, n in zip(grid, shape)):
        raise ValueError(f"a {grid} PSF grid needs a volume of at least that many voxels per "
                         f"axis, got image_shape {shape}")
    if kernel_shape[0] > 2 * shape[0] + 1:
        raise ValueError(f"the PSFs are {kernel_shape[0]} planes deep, more than twice the "
                         f"{shape[0]} planes of the volume; crop the PSFs in z")
    profiles = tuple(torch.from_numpy(_hat_profiles(g, n)).to(psfs.dtype).to(psfs.device)
                     for g, n in zip(grid, shape))
    n_cells = int(np.prod(grid))
    core = torch.eye(n_cells, dtype=psfs.dtype, device=psfs.device).reshape((n_cells,) + grid)
    metadata = {"grid": [int(g) for g in grid]}
    return VolumeProductConvolution.from_factors(
        psfs.reshape((n_cells,) + kernel_shape), profiles, core, metadata)


def _volume_shape(image_shape: Any) -> Triple:
    if isinstance(image_shape, str) or not hasattr(image_shape, "__len__") \
            or len(image_shape) < 3:
        raise ValueError(f"image_shape must be (D, H, W) for a grid of 3D PSFs, got "
                         f"{image_shape!r}")
    try:
        shape = tuple(int(n) for n in tuple(image_shape)[-3:])
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must be three positive ints (D, H, W), got "
                         f"{image_shape!r}") from None
    if min(shape) < 1:
        raise ValueError(f"image_shape must be three positive ints (D, H, W), got {shape}")
    return shape
