"""Fourier-sum evaluation of a product convolution (any weights).

    H f  = F⁻¹ Σ_i K_i · F(w_i f)              I forward FFTs + 1 inverse FFT
    H* g = Σ_i w_i · F⁻¹(conj K_i · F g)       1 forward FFT + I inverse FFTs

on the image zero-padded to ``operator.fft_shape`` (linear, not circular, convolution), with
the kernel spectra ``K_i`` computed once per dtype and device and kept. The sum is taken in
Fourier space, so a forward costs I + 1 FFTs rather than 2I (Denis et al., IJCV 2015).
"""

from __future__ import annotations

from typing import Any

import torch

from psfmap.operators.fft import centred_spectra


class FourierSumEngine:
    """Evaluates ``forward``/``adjoint`` of one operator by summing in Fourier space.

    Parameters
    ----------
    operator : ProductConvolution
        The representation: ``kernels``, ``fft_shape``, weights on a box
        (``operator._weight``) and its cached casts (``operator._cached``).
    """

    name = "fourier"

    def __init__(self, operator: Any):
        self.operator = operator
        self._buffer: torch.Tensor | None = None

    def _spectra(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        op = self.operator
        if op.kernels.requires_grad:  # no cache: the graph must reach the kernels
            return centred_spectra(op.kernels.to(device=device, dtype=dtype), op.fft_shape)
        return op._cached(
            "spectra", dtype, device,
            lambda: centred_spectra(op._kernels_as(dtype, device), op.fft_shape),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``Σ_i k_i ⋆ (w_i · x)`` for a stack ``x`` ``(B, H, W)``."""
        if torch.is_grad_enabled() and (x.requires_grad or self.operator._needs_grad()):
            return self._forward_differentiable(x)
        op = self.operator
        height, width = op.image_shape
        spectra = self._spectra(x.dtype, x.device)
        # one zero-padded buffer reused for every term and call: only its H x W corner changes
        shape = (x.shape[0],) + tuple(op.fft_shape)
        buffer = self._buffer
        if buffer is None or buffer.shape != shape or buffer.dtype != x.dtype or (
            buffer.device != x.device
        ):
            buffer = self._buffer = x.new_zeros(shape)
        full = (0, height, 0, width)
        total = None
        for i in range(op.n_kernels):
            torch.mul(x, op._weight(i, full, x.dtype, x.device), out=buffer[:, :height, :width])
            term = torch.fft.rfft2(buffer)
            if total is None:
                total = term.mul_(spectra[i])
            else:
                total.addcmul_(term, spectra[i])
        return torch.fft.irfft2(total, s=op.fft_shape)[:, :height, :width]

    def _forward_differentiable(self, x: torch.Tensor) -> torch.Tensor:
        # no in-place buffer: autograd must see every step
        op = self.operator
        height, width = op.image_shape
        spectra = self._spectra(x.dtype, x.device)
        weights = op.weights.to(device=x.device, dtype=x.dtype)
        terms = torch.fft.rfft2(weights[None] * x[:, None], s=op.fft_shape)
        total = (terms * spectra[None]).sum(dim=1)
        return torch.fft.irfft2(total, s=op.fft_shape)[:, :height, :width]

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Σ_i w_i · (k̃_i ⋆ y)`` for a stack ``y`` ``(B, H, W)``."""
        op = self.operator
        height, width = op.image_shape
        spectra = self._spectra(y.dtype, y.device)
        y_spectrum = torch.fft.rfft2(y, s=op.fft_shape)
        full = (0, height, 0, width)
        differentiable = torch.is_grad_enabled() and (y.requires_grad or op._needs_grad())
        product = None if differentiable else torch.empty_like(y_spectrum)
        out = None
        for i in range(op.n_kernels):
            weight = op._weight(i, full, y.dtype, y.device)
            if differentiable:
                correlated = torch.fft.irfft2(y_spectrum * spectra[i].conj(), s=op.fft_shape)
                term = correlated[:, :height, :width] * weight
                out = term if out is None else out + term
                continue
            torch.mul(y_spectrum, spectra[i].conj(), out=product)
            correlated = torch.fft.irfft2(product, s=op.fft_shape)[:, :height, :width]
            if out is None:
                out = correlated.mul(weight)
            else:
                out.addcmul_(correlated, weight)
        return out
