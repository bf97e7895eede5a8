"""Checks and sampling helpers shared by the optics functions.

A *field* is a complex tensor ``(..., H, W)`` sampled on a square grid of pitch ``pixel_size``
(µm); physical arguments (distance, wavelength, focal length...) are Python numbers or real
tensors, kept as tensors so that gradients reach them. A tensor argument may carry one value
per leading index of the field (shape broadcastable to ``field.shape[:-2]``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from psfmap._validation import describe

# largest padded grid of one propagation, in complex samples of the whole batch (2 GiB of
# complex64): beyond it a distance needs more memory than a propagation should take
MAX_GRID_SAMPLES = 2**28


def check_field(field: Any, name: str = "field") -> torch.Tensor:
    """A complex tensor with at least two axes ``(..., H, W)``, finite."""
    if not isinstance(field, torch.Tensor) or not field.is_complex():
        raise TypeError(
            f"{name} must be a complex torch tensor (complex64 or complex128) of shape "
            f"(..., H, W), got {describe(field)}; build one with torch.complex(re, im) or "
            "tensor.to(torch.complex64)"
        )
    if field.ndim < 2 or field.shape[-1] < 2 or field.shape[-2] < 2:
        raise ValueError(f"{name} must have shape (..., H, W) with H, W >= 2, "
                         f"got shape {tuple(field.shape)}")
    if not bool((torch.isfinite(field.real) & torch.isfinite(field.imag)).all()):
        raise ValueError(f"{name} contains NaN or infinite values; expected finite numbers")
    return field


def real_dtype(field: torch.Tensor) -> torch.dtype:
    """float32 for complex64, float64 for complex128."""
    return torch.float64 if field.dtype == torch.complex128 else torch.float32


def physical(
    value: Any,
    name: str,
    like: torch.Tensor,
    *,
    positive: bool = True,
    allow_zero: bool = False,
) -> torch.Tensor:
    """A physical argument as a real tensor shaped ``(..., 1, 1)`` to broadcast over a field.

    Numbers and tensors are accepted; a tensor keeps its autograd graph. ``like`` is the field
    (its real dtype and device are used, its leading shape bounds the argument's shape).
    """
    dtype = like.dtype if not like.is_complex() else real_dtype(like)
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(f"{name} must be real, got a complex tensor")
        tensor = value.to(dtype=dtype, device=like.device)
    elif isinstance(value, (bool, str, bytes)) or value is None:
        raise TypeError(f"{name} must be a number or a real tensor, got {describe(value)}")
    else:
        try:
            tensor = torch.as_tensor(float(value), dtype=dtype, device=like.device)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a number or a real tensor, "
                            f"got {describe(value)}") from None
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must be finite, got {_show(tensor)}")
    if positive:
        bad = (tensor < 0) | ((tensor == 0) & (not allow_zero))
        if bool(bad.any()):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{name} must be {bound} (µm), got {_show(tensor)}")
    leading = like.shape[:-2]
    if tensor.ndim > len(leading):
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)}: expected a number or one value per "
            f"leading index of the field, whose leading shape is {tuple(leading)}"
        )
    try:
        torch.broadcast_shapes(tensor.shape, leading)
    except RuntimeError:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, which does not broadcast "
                         f"over the field's leading shape {tuple(leading)}") from None
    return tensor[..., None, None]


def _show(tensor: torch.Tensor) -> str:
    if tensor.numel() == 1:
        return f"{float(tensor.detach()):g}"
    return f"a tensor of shape {tuple(tensor.shape)}"


def scalar(value: Any) -> float:
    """The largest magnitude of a physical argument, as a float (for sampling decisions)."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().abs().max())
    return abs(float(value))


def frequencies(n: int, pixel_size: torch.Tensor, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """Spatial frequencies (cycles/µm) of an ``n``-point FFT, fftfreq order, ``(..., n)``.

    ``pixel_size`` is a ``(..., 1, 1)`` tensor: the result keeps its gradient.
    """
    index = torch.fft.fftfreq(n, d=1.0, dtype=dtype, device=device)
    return index / pixel_size[..., 0]  # (..., 1) / -> (..., n)


def centred_coordinates(n: int, pixel_size: torch.Tensor, dtype: torch.dtype,
                        device: torch.device) -> torch.Tensor:
    """Sample positions ``(k - n // 2) · pixel_size`` in µm, ``(..., n)`` (centre at n // 2)."""
    index = torch.arange(n, dtype=dtype, device=device) - n // 2
    return index * pixel_size[..., 0]


def pad_centred(field: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Zero-pad ``(..., H, W)`` to ``shape`` keeping sample ``(H // 2, W // 2)`` at the new
    centre ``(shape[0] // 2, shape[1] // 2)``."""
    height, width = field.shape[-2:]
    top, left = shape[0] // 2 - height // 2, shape[1] // 2 - width // 2
    pads = (left, shape[1] - width - left, top, shape[0] - height - top)
    return torch.nn.functional.pad(field, pads)


def crop_centred(field: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pad_centred`."""
    height, width = field.shape[-2:]
    top, left = height // 2 - shape[0] // 2, width // 2 - shape[1] // 2
    return field[..., top:top + shape[0], left:left + shape[1]]


def check_memory(shape: tuple[int, int], field: torch.Tensor, what: str) -> None:
    """Refuse a padded grid larger than :data:`MAX_GRID_SAMPLES` (``what`` says why)."""
    batch = math.prod(field.shape[:-2]) if field.ndim > 2 else 1
    samples = batch * shape[0] * shape[1]
    if samples > MAX_GRID_SAMPLES:
        gib = samples * field.element_size() / 2**30
        raise ValueError(
            f"{what} needs a grid of {shape[0]}x{shape[1]} samples per field "
            f"({gib:.1f} GiB for the batch), more than memory allows; use a shorter distance, "
            "a coarser pixel_size or a smaller field"
        )
