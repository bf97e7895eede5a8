"""Real 3D FFTs for volume operators, with the inverse routed around a torch CPU crash.

With torch 2.13 on CPU, ``torch.fft.irfftn`` over three axes corrupts the heap and kills the
process for many volume shapes (reported for (33…40, 1024, 1024), (40, 1000, 1000),
(20, 2048, 2048); issue 20), while ``rfftn``, batched ``irfft2`` and an inverse done as a
complex ``ifft`` over the leading axes followed by a ``irfft`` over the last one all pass.
:func:`irfft3` is that last form: mathematically the same transform (``irfftn`` is a complex
inverse over the leading axes and a complex-to-real inverse over the last), at the same cost.

On CPU, outside autograd and for transforms of 2**24 points or more, the transforms go through
``scipy.fft`` (pocketfft, threaded with ``workers``) instead, which has no ``irfftn`` crash:
measured on 2 cores, a forward + inverse pair of 48 × 1080 × 1080 takes 0.31–0.37 s against
torch's 0.42–0.45 s, 48 × 720 × 720 0.14–0.16 s against 0.18–0.22 s, while at 96 × 280 × 280
they tie and a whole RL of 64 × 256 × 256 ran 20 % slower through scipy
(``benchmarks/RESULTS.md``). Smaller transforms, GPU tensors and anything autograd must
differentiate stay with torch.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import scipy.fft
import torch

from psfmap.operators.fft import fast_size

AXES = (-3, -2, -1)
SCIPY_MIN_SIZE = 1 << 24  # points of a transform below which torch's FFT is as fast or faster


def _through_scipy(transform: Any, x: torch.Tensor, shape: tuple[int, ...], axes: tuple[int, ...],
                   size: int) -> torch.Tensor | None:
    """``scipy.fft``'s ``transform`` of ``x`` to ``shape`` over ``axes`` (threads: torch's),
    or ``None`` where torch's transform should run: on another device, below
    ``SCIPY_MIN_SIZE`` points (``size``), for other dtypes, or under autograd."""
    if (x.device.type != "cpu" or size < SCIPY_MIN_SIZE
            or x.dtype not in (torch.float32, torch.float64, torch.complex64, torch.complex128)
            or (x.requires_grad and torch.is_grad_enabled())):
        return None
    array = x.detach().resolve_conj().resolve_neg().numpy()
    return torch.from_numpy(transform(array, s=tuple(shape), axes=axes,
                                      workers=max(1, torch.get_num_threads())))


def same_fft_shape_3d(image_shape: tuple[int, ...], kernel_shape: tuple[int, ...]
                      ) -> tuple[int, int, int]:
    """Padded FFT shape for a same-size *linear* 3D convolution with a centred kernel
    (``N ≥ D + max(c, d − 1 − c)``, ``c = d // 2``, on each axis; even smooth sizes)."""
    return tuple(fast_size(n + max(k // 2, k - 1 - k // 2))
                 for n, k in zip(image_shape, kernel_shape))


def rfft3(x: torch.Tensor, fft_shape: tuple[int, int, int]) -> torch.Tensor:
    """``rfftn`` of ``(..., D, H, W)`` zero-padded to ``fft_shape`` over the last three axes."""
    spectrum = _through_scipy(scipy.fft.rfftn, x, fft_shape, AXES, math.prod(fft_shape))
    return torch.fft.rfftn(x, s=tuple(fft_shape), dim=AXES) if spectrum is None else spectrum


def irfft3(spectrum: torch.Tensor, fft_shape: tuple[int, int, int]) -> torch.Tensor:
    """The inverse of :func:`rfft3`, as ``ifft2`` over the two leading axes then ``irfft`` over
    the last: never ``irfftn`` over three axes (it crashes torch 2.13 on CPU, see the module
    docstring); through scipy's ``irfftn`` (which does not crash) where :func:`rfft3` would
    use scipy."""
    volume = _through_scipy(scipy.fft.irfftn, spectrum, fft_shape, AXES, math.prod(fft_shape))
    if volume is not None:
        return volume
    partial = torch.fft.ifft2(spectrum, dim=(-3, -2))
    return torch.fft.irfft(partial, n=int(fft_shape[-1]), dim=-1)


def rfft2(x: torch.Tensor, lateral: tuple[int, int]) -> torch.Tensor:
    """Batched lateral ``rfft2`` of ``(..., H, W)`` zero-padded to ``lateral``."""
    spectrum = _through_scipy(scipy.fft.rfft2, x, lateral, (-2, -1),
                              math.prod(x.shape[:-2]) * math.prod(lateral))
    return torch.fft.rfft2(x, s=tuple(lateral)) if spectrum is None else spectrum


def irfft2(spectrum: torch.Tensor, lateral: tuple[int, int]) -> torch.Tensor:
    """The inverse of :func:`rfft2`."""
    planes = _through_scipy(scipy.fft.irfft2, spectrum, lateral, (-2, -1),
                            math.prod(spectrum.shape[:-2]) * math.prod(lateral))
    return torch.fft.irfft2(spectrum, s=tuple(lateral)) if planes is None else planes


def times_conj(a: torch.Tensor, b: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """``a · conj(b)``; ``in_place`` overwrites ``a`` (no autograd graph through it).

    In place as ``conj(conj(a) · b)``: three plain passes, several times faster on CPU than a
    product with the lazy conjugate view ``b.conj()``."""
    if in_place:
        return a.conj_physical_().mul_(b).conj_physical_()
    return a * b.conj()


def centred_spectra_3d(kernels: torch.Tensor, fft_shape: tuple[int, int, int],
                       centre_depth: bool = True) -> torch.Tensor:
    """``rfft3`` of kernels ``(I, d, h, w)`` zero-padded to ``fft_shape``, centre rolled to the
    origin (so that the product is a same-size linear convolution after cropping).

    ``centre_depth=False`` rolls the lateral axes only: the kernel's first plane stays at index
    0 in z, so that index ``t`` of a product's inverse along z is plane ``t − d // 2`` relative
    to the input's first plane (no roll of the result needed)."""
    d, h, w = kernels.shape[-3:]
    shifts = (-(d // 2) if centre_depth else 0, -(h // 2), -(w // 2))
    if kernels.requires_grad:
        padded = torch.nn.functional.pad(
            kernels, (0, fft_shape[2] - w, 0, fft_shape[1] - h, 0, fft_shape[0] - d))
        return torch.fft.rfftn(torch.roll(padded, shifts=shifts, dims=AXES), dim=AXES)
    spectra = torch.empty(
        (kernels.shape[0], fft_shape[0], fft_shape[1], fft_shape[2] // 2 + 1),
        dtype=torch.complex128 if kernels.dtype == torch.float64 else torch.complex64,
        device=kernels.device,
    )
    buffer = kernels.new_zeros(tuple(fft_shape))
    # the roll done by placing the kernel's pieces: part [c:] of each axis at the start, part
    # [:c] wrapped to the end (no second padded volume per kernel)
    pieces = [[(slice(-s, n), slice(0, n + s)), (slice(0, -s), slice(size + s, size))]
              if s else [(slice(0, n), slice(0, n))]
              for s, n, size in zip(shifts, (d, h, w), fft_shape)]
    for i, kernel in enumerate(kernels):  # one padded kernel at a time bounds the peak memory
        for (kz, bz), (ky, by), (kx, bx) in itertools.product(*pieces):
            buffer[bz, by, bx] = kernel[kz, ky, kx]
        spectra[i] = torch.fft.rfftn(buffer, dim=AXES)
    return spectra
