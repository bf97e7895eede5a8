"""FFT sizes and kernel spectra for linear (zero-boundary) convolution."""

from __future__ import annotations

import torch


def _is_smooth(n: int) -> bool:
    for prime in (2, 3, 5, 7):
        while n % prime == 0:
            n //= prime
    return n == 1


def fast_size(n: int) -> int:
    """Smallest even 2·3·5·7-smooth length ≥ ``n``.

    Real FFTs of odd lengths run about twice slower in torch (MKL and pocketfft alike), so the
    length is also even.
    """
    size = max(2, int(n))
    size += size % 2
    while not _is_smooth(size):
        size += 2
    return size


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
    shifts, dims = (-(h // 2), -(w // 2)), (-2, -1)
    if kernels.requires_grad or kernels.ndim != 3:
        padded = torch.nn.functional.pad(kernels, (0, fft_shape[1] - w, 0, fft_shape[0] - h))
        return torch.fft.rfft2(torch.roll(padded, shifts=shifts, dims=dims))
    spectra = torch.empty(
        (kernels.shape[0], fft_shape[0], fft_shape[1] // 2 + 1),
        dtype=torch.complex128 if kernels.dtype == torch.float64 else torch.complex64,
        device=kernels.device,
    )
    buffer = kernels.new_zeros(tuple(fft_shape))
    for i, kernel in enumerate(kernels):  # one padded kernel at a time bounds the peak memory
        buffer[:h, :w] = kernel
        spectra[i] = torch.fft.rfft2(torch.roll(buffer, shifts=shifts, dims=dims))
    return spectra


def corner_spectra(kernels: torch.Tensor, fft_shape: tuple[int, int]) -> torch.Tensor:
    """``rfft2`` of kernels placed at the corner: circular = *full* linear convolution."""
    return torch.fft.rfft2(kernels, s=tuple(fft_shape))
