"""FFT sizes and kernel spectra for linear (zero-boundary) convolution."""

from __future__ import annotations

import torch
from scipy import fft as scipy_fft


def fast_size(n: int) -> int:
    """Smallest 2·3·5·7·11-smooth length ≥ ``n`` (fast for MKL and pocketfft)."""
    return int(scipy_fft.next_fast_len(int(n), real=True))


def same_fft_shape(image_shape: tuple[int, int], kernel_shape: tuple[int, int]) -> tuple[int, int]:
    """Padded FFT shape for a same-size *linear* convolution with a centred kernel.

    With the kernel centre rolled to index 0, the circular convolution equals the linear one on
    the ``H × W`` output as long as ``N ≥ H + max(c, h − 1 − c)`` with ``c = h // 2``.
    """
    sizes = []
    for n, k in zip(image_shape, kernel_shape):
        centre = k // 2
        sizes.append(fast_size(n + max(centre, k - 1 - centre)))
    return tuple(sizes)


def centred_spectra(kernels: torch.Tensor, fft_shape: tuple[int, int]) -> torch.Tensor:
    """``rfft2`` of kernels ``(I, h, w)`` zero-padded to ``fft_shape`` with centre at (0, 0)."""
    h, w = kernels.shape[-2:]
    padded = kernels.new_zeros(kernels.shape[:-2] + tuple(fft_shape))
    padded[..., :h, :w] = kernels
    padded = torch.roll(padded, shifts=(-(h // 2), -(w // 2)), dims=(-2, -1))
    return torch.fft.rfft2(padded)


def corner_spectra(kernels: torch.Tensor, fft_shape: tuple[int, int]) -> torch.Tensor:
    """``rfft2`` of kernels placed at the corner: circular = *full* linear convolution."""
    return torch.fft.rfft2(kernels, s=tuple(fft_shape))
