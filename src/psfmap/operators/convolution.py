"""Space-invariant blur: one PSF everywhere, images of any size."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from psfmap._container import load_container, save_container
from psfmap._validation import as_tensor, check_ndim, check_psf
from psfmap.operators.base import LinearOperator, as_image
from psfmap.operators.compression import check_compression
from psfmap.operators.fft import centred_spectra, same_fft_shape


def _ndim(value: Any) -> int | None:
    """Number of axes of an array-like without converting it (None when unknown)."""
    ndim = getattr(value, "ndim", None)
    if ndim is None and isinstance(value, (list, tuple)):
        import numpy as np

        try:
            ndim = np.ndim(value)
        except ValueError:  # ragged
            return None
    return ndim


class Convolution(LinearOperator):
    """Space-invariant blur by one PSF, for images of any size (zero boundary, same size).

    ``H f = k ⋆ f`` computed as ``F⁻¹(K · F f)`` on the image zero-padded to a fast FFT size
    (linear convolution, equal to ``scipy.signal.fftconvolve(f, k, mode='same')``).

    Parameters
    ----------
    psf : array or tensor, shape (h, w)
        Non-negative PSF centred at ``(h // 2, w // 2)`` (used as given, not re-normalised).
    metadata : dict, optional
        Optics and provenance saved with the operator.
    """

    image_shape = None

    def __new__(cls, psf: Any = None, metadata: Mapping[str, Any] | None = None):
        # a 3D PSF (d, h, w) gives the volume operator (psfmap.operators.volume)
        if cls is Convolution and psf is not None and _ndim(psf) == 3:
            from psfmap.operators.volume import VolumeConvolution

            return VolumeConvolution(psf, metadata)
        return super().__new__(cls)

    def __init__(self, psf: Any, metadata: Mapping[str, Any] | None = None):
        psf = as_tensor(psf, "psf")
        check_ndim(psf, "psf", 2, "(h, w), or (d, h, w) for volumes")
        self.psf = check_psf(psf, "psf")
        self.kernel_shape = (int(psf.shape[0]), int(psf.shape[1]))
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.compression_error = 0.0
        self._cache: dict[Any, torch.Tensor] = {}

    @property
    def kernels(self) -> torch.Tensor:
        """The PSF as one kernel ``(1, h, w)``."""
        return self.psf[None]

    @property
    def n_kernels(self) -> int:
        return 1

    @property
    def dtype(self) -> torch.dtype:
        return self.psf.dtype

    @property
    def device(self) -> torch.device:
        return self.psf.device

    def __repr__(self) -> str:
        return f"Convolution(kernel_shape={self.kernel_shape}, dtype={self.dtype})"

    def _spectrum(self, image_shape, dtype, device) -> tuple[torch.Tensor, tuple[int, int]]:
        fft_shape = same_fft_shape(image_shape, self.kernel_shape)
        key = (fft_shape, dtype, str(device))
        if self.psf.requires_grad:
            return centred_spectra(self.psf.to(device=device, dtype=dtype), fft_shape), fft_shape
        if key not in self._cache:
            if len(self._cache) > 8:  # images of many sizes: keep the memory bounded
                self._cache.clear()
            self._cache[key] = centred_spectra(self.psf.to(device=device, dtype=dtype), fft_shape)
        return self._cache[key], fft_shape

    def _apply(self, x: Any, name: str, conjugate: bool) -> torch.Tensor:
        x = as_image(x, name, None)
        shape = tuple(x.shape[-2:])
        spectrum, fft_shape = self._spectrum(shape, x.dtype, x.device)
        if conjugate:
            spectrum = spectrum.conj()
        out = torch.fft.irfft2(torch.fft.rfft2(x, s=fft_shape) * spectrum, s=fft_shape)
        return out[..., : shape[0], : shape[1]]

    def forward(self, x: Any) -> torch.Tensor:
        """``psf ⋆ x`` on ``(..., H, W)``."""
        return self._apply(x, "x", conjugate=False)

    def adjoint(self, y: Any) -> torch.Tensor:
        """Correlation with the PSF (convolution with the flipped PSF)."""
        return self._apply(y, "y", conjugate=True)

    def psf_at(self, row: int, col: int) -> torch.Tensor:
        """The PSF, the same at every pixel."""
        return self.psf

    def extended(self, margin: int) -> Convolution:
        """Itself: a convolution acts on images of any size."""
        return self

    def compress(self, rank: int | None = None, energy: float | None = None) -> Convolution:
        """Itself (one kernel is already the lowest rank), after the checks of
        :func:`psfmap.operators.compress`."""
        check_compression(rank, energy)
        return self

    def to(self, dtype: torch.dtype | None = None, device: Any = None) -> Convolution:
        """A copy with the PSF in ``dtype`` on ``device`` (each kept when omitted)."""
        return Convolution(
            self.psf.to(device=device or self.psf.device, dtype=dtype or self.dtype), self.metadata
        )

    def save(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write the PSF and metadata to one ``.psfmap`` file (atomic); return the path."""
        meta = {**self.metadata, **dict(metadata or {})}
        return save_container(path, "convolution", {"psf": self.psf.detach().cpu().numpy()}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Convolution:
        """Read a file written by :meth:`save` (``ValueError`` for another kind of file)."""
        _, arrays, meta = load_container(path, "convolution")
        if "psf" not in arrays:
            raise ValueError(f"{str(path)!r} is missing the array 'psf'")
        return Convolution(torch.from_numpy(arrays["psf"]), meta)  # 3D PSF: VolumeConvolution
