"""Richardson–Lucy on volumes, non-circulant in z, y and x, with 3D TV and acceleration.

The same scheme as the 2D solver (:mod:`psfmap.restore.richardson_lucy`) on ``(..., D, H, W)``
stacks with a 3D operator (:mod:`psfmap.operators.volume`): the object lives on the volume
extended by the PSF half-size on each axis, ``A = C ∘ H_ext`` compares only the centre with the
data (Bertero & Boccacci 2005), and the estimate is cropped at the end.

The iterations are the 2D solver's own loop (:func:`psfmap.restore._rl_loop.rl_iterate`):
the same floors (``COMPRESSED_FLOOR`` for a compressed operator), power-of-two scaling, TV,
``tol`` and Biggs–Andrews acceleration (``accelerate=True``), over three axes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch

from psfmap._memory import reuse_freed_memory, worth_reusing
from psfmap._validation import (
    ArrayKind,
    as_tensor,
    check_finite,
    check_iterations,
    check_positive,
    describe,
    fit_output,
    times_power_of_two,
)
from psfmap.restore._domain import (
    ROUNDOFF,
    check_flag,
    check_operator,
    is_compressed,
    match_operator,
    solver_context,
)
from psfmap.restore._rl_loop import COMPRESSED_FLOOR, rl_iterate

__all__ = ["as_volume_operator", "is_volume_operator", "richardson_lucy_volume"]

# a run's peak memory in extended volumes (measured: 2.2 GB for 43 x 1044 x 1044 float32,
# 3.9 GB for 84 x 1040 x 1040 with 4 kernels; benchmarks/RESULTS.md)
WORKING_SET = 11


def is_volume_operator(operator: Any) -> bool:
    """Whether ``operator`` acts on volumes (a 3D operator of :mod:`psfmap.operators.volume`)."""
    return getattr(operator, "ndim", None) == 3


def as_volume_operator(operator: Any, volume_shape: tuple[int, int, int],
                       name: str = "operator") -> Any:
    """A 3D operator; a 3D PSF ``(d, h, w)`` -> normalised ``Convolution``; a grid
    ``(gz, gy, gx, d, h, w)`` -> ``from_psf_grid``. A 2D PSF or operator is refused."""
    if isinstance(operator, torch.Tensor) or hasattr(operator, "__array__") \
            and not hasattr(operator, "forward"):
        from psfmap.operators import Convolution, from_psf_grid

        psf = check_finite(as_tensor(operator, name), name)
        if psf.ndim == 3:
            if bool((psf < 0).any()) or not float(psf.sum()) > 0:
                raise ValueError(f"{name} must be a non-negative 3D PSF with a positive sum")
            return Convolution(psf / psf.sum())
        if psf.ndim == 6:
            return from_psf_grid(psf, volume_shape)
        raise ValueError(f"{name} must be a 3D PSF (d, h, w) or a grid of 3D PSFs "
                         f"(gz, gy, gx, d, h, w) to restore a volume, got shape "
                         f"{tuple(psf.shape)}; a 2D PSF restores plane by plane")
    check_operator(operator, name)
    if not is_volume_operator(operator):
        raise ValueError(f"{name} {type(operator).__name__} is a 2D operator; restoring as a "
                         "volume needs a 3D operator (a (d, h, w) PSF or a grid of 3D PSFs)")
    return operator


class _CroppedVolume:
    """``A = C ∘ H_ext``: the operator on the volume extended by ``margins``, output cropped."""

    def __init__(self, operator: Any, shape: tuple[int, int, int],
                 margins: tuple[int, int, int]):
        self.shape, self.margins = shape, margins
        self.operator = operator.extended(margins) if any(margins) else operator
        self.domain = tuple(n + 2 * m for n, m in zip(shape, margins))

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        (d, h, w), (mz, my, mx) = self.shape, self.margins
        return x[..., mz:mz + d, my:my + h, mx:mx + w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.crop(self.operator.forward(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        mz, my, mx = self.margins
        return self.operator.adjoint(torch.nn.functional.pad(y, (mx, mx, my, my, mz, mz)))


def _check_volume(image: Any) -> torch.Tensor:
    y = as_tensor(image, "image")
    if y.ndim < 3:
        raise ValueError(f"image must be a volume (..., D, H, W) for a 3D operator, got shape "
                         f"{tuple(y.shape)}")
    if y.numel() == 0:
        raise ValueError(f"image is empty (shape {tuple(y.shape)}); expected at least one voxel")
    if not y.dtype.is_floating_point:
        y = y.to(torch.get_default_dtype())
    check_finite(y, "image")
    roundoff = ROUNDOFF * float(y.detach().abs().max())
    if bool((y < -roundoff).any()):
        raise ValueError(f"image has negative voxels (minimum {float(y.min()):.4g}); expected a "
                         "non-negative volume (pass the camera offset as background=)")
    return y.clamp(min=0)


def richardson_lucy_volume(
    image: Any,
    operator: Any,
    iterations: int = 20,
    tv: float = 0.0,
    background: float = 0.0,
    *,
    tol: float | None = None,
    tv_epsilon: float = 1e-3,
    extend: bool = True,
    accelerate: bool = False,
    callback: Callable[[int, float], Any] | None = None,
    intensity_scale: float | None = None,
) -> Any:
    r"""Richardson–Lucy (+TV, optionally accelerated) of a volume with a 3D operator.

    .. math::

        x^{k+1} = \frac{x^k}{A^*1\,\max(1 - \lambda\,\operatorname{div}(\nabla x^k /
                  |\nabla x^k|_\varepsilon), 0.1)}\; A^*\!\left(\frac{y}{A x^k + b}\right)

    with ``A = C ∘ H_ext`` (non-circulant in all three axes), the 3D TV term of Dey et al.
    (2006) and, with ``accelerate``, the Biggs–Andrews extrapolation: the loop of the 2D
    solver (:func:`psfmap.restore._rl_loop.rl_iterate`). Each volume is scaled by a power of
    two to a maximum in [0.5, 1) and back (exact). Large volumes on CPU run inside
    :func:`psfmap._memory.reuse_freed_memory` (freed FFT buffers reused instead of faulted in
    again: ~40 % faster on a 2-core virtual machine, for a higher peak memory) where the run's
    working set is at most a sixth of the available memory; ``PSFMAP_REUSE_MEMORY=0`` / ``1``
    forces it off / on. With a compressed operator
    (``compression_error > 0``) ``A x + b`` is kept at least ``COMPRESSED_FLOOR`` (0.1) of
    ``y``, as in 2D.

    Parameters
    ----------
    image : ndarray or Tensor (..., D, H, W)
        Non-negative stack(s); leading axes are independent volumes.
    operator : 3D operator, PSF (d, h, w) or PSF grid (gz, gy, gx, d, h, w)
        ``Convolution`` / ``ProductConvolution`` with 3D kernels, or arrays turned into them.
        Its PSFs may be no deeper than the stack.
    iterations : int
        1 to 100 000.
    tv : float
        3D TV weight ``λ`` (>= 0).
    background : float
        Known additive background ``b`` (>= 0).
    tol : float, optional
        Stop a volume once ``||x^{k+1} − x^k|| / ||x^k|| < tol``.
    tv_epsilon : float
        ``ε`` relative to each volume's maximum.
    extend : bool
        Non-circulant extended domain (default); False restores on the volume only.
    accelerate : bool
        Biggs–Andrews vector extrapolation (typically 2–3× fewer iterations for the same
        error; see ``benchmarks/bench_volume.py``).
    callback : callable, optional
        ``callback(iteration, change)`` after every iteration.
    intensity_scale : float, optional
        Replaces each volume's maximum as the intensity that ``tv_epsilon`` and the
        positivity floor are relative to (a chunk restored as its whole volume would be).

    Returns
    -------
    ndarray or Tensor (..., D, H, W)
        Same kind, floating dtype and device as ``image``.
    """
    kind = ArrayKind(image)
    y = _check_volume(image)
    iterations = check_iterations(iterations)
    tv = check_positive(tv, "tv", allow_zero=True)
    tv_epsilon = check_positive(tv_epsilon, "tv_epsilon")
    background = check_positive(background, "background", allow_zero=True)
    if tol is not None:
        tol = check_positive(tol, "tol", allow_zero=True)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {describe(callback)}")
    accelerate = check_flag(accelerate, "accelerate")
    if intensity_scale is not None:
        intensity_scale = check_positive(intensity_scale, "intensity_scale")
    shape = tuple(int(n) for n in y.shape[-3:])
    operator = as_volume_operator(operator, shape)
    op_shape = getattr(operator, "image_shape", None)
    if op_shape is not None and tuple(op_shape) != shape:
        raise ValueError(f"operator acts on volumes of shape {tuple(op_shape)}, got a stack of "
                         f"shape {shape}; build the operator for this volume")
    kernel = tuple(operator.kernel_shape)
    if kernel[0] > shape[0]:
        raise ValueError(f"the PSF is {kernel[0]} planes deep, deeper than the stack's "
                         f"{shape[0]} planes; crop the PSF in z to at most {shape[0]} planes")
    if kernel[1] > shape[1] or kernel[2] > shape[2]:
        raise ValueError(f"the PSF of shape {kernel} is wider than the stack {shape}; crop it")
    margins = tuple(k // 2 for k in kernel) if extend else (0, 0, 0)
    operator = match_operator(operator, y.dtype, y.device)
    with solver_context(operator, y):
        system = _CroppedVolume(operator, shape, margins)
        frames = y.reshape((-1,) + shape)
        # per-volume scale to a maximum in [0.5, 1) by a power of two (exact, in two steps
        # for subnormal volumes), as in 2D
        peak = frames.detach().amax(dim=(-3, -2, -1), keepdim=True)
        exponents = torch.frexp(peak).exponent.to(torch.int64)
        scaled_background = times_power_of_two(
            torch.full_like(peak, background), -exponents) if background else 0.0
        scale = None if intensity_scale is None else times_power_of_two(
            torch.full_like(peak, intensity_scale), -exponents)
        scaled = times_power_of_two(frames, -exponents)
        shape_in = tuple(y.shape)
        del frames, y  # the solver keeps only the scaled copy (large volumes)
        volume_bytes = scaled.shape[0] * math.prod(system.domain) * scaled.element_size()
        # the largest buffers are the extended volumes' complex spectra (twice a volume)
        reuse = (scaled.device.type == "cpu"
                 and worth_reusing(2 * volume_bytes, WORKING_SET * volume_bytes))
        with reuse_freed_memory() if reuse else contextlib.nullcontext():
            restored = rl_iterate(
                scaled, system, iterations, tv, scaled_background,
                image_shape=shape, tol=tol, tv_epsilon=tv_epsilon, callback=callback,
                relative_floor=COMPRESSED_FLOOR if is_compressed(operator) else 0.0,
                accelerate=accelerate, intensity_scale=scale,
                operator_name=f"operator {operator!r}")
        restored = system.crop(restored)
        restored = times_power_of_two(restored, exponents)
    restored = restored.reshape(shape_in)
    return kind.restore(fit_output(restored, kind, "the restored volume"))
