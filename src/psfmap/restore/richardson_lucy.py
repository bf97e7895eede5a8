"""Richardson–Lucy deconvolution, with optional total-variation regularisation, for any operator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from psfmap._validation import MAX_ITERATIONS as MAX_ITERATIONS  # re-exported
from psfmap._validation import (
    ArrayKind,
    as_tensor,
    check_finite,
    check_iterations,
    check_positive,
    describe,
    fit_output,
    power_of_two_exponents,
    times_power_of_two,
)
from psfmap.restore._domain import (
    ROUNDOFF,
    CroppedOperator,
    check_compatible,
    check_flag,
    check_nonnegative,
    check_operator,
    is_compressed,
    match_operator,
    solver_context,
)
from psfmap.restore._rl_loop import COMPRESSED_FLOOR as COMPRESSED_FLOOR  # re-exported
from psfmap.restore._rl_loop import rl_iterate
from psfmap.restore.volume import is_volume_operator, richardson_lucy_volume


def richardson_lucy(
    image: Any,
    operator: Any,
    iterations: int = 20,
    tv: float = 0.0,
    background: Any = 0.0,
    *,
    tol: float | None = None,
    tv_epsilon: float = 1e-3,
    extend: bool = True,
    callback: Callable[[int, float], Any] | None = None,
    intensity_scale: float | None = None,
    accelerate: bool = False,
) -> Any:
    r"""Richardson–Lucy deconvolution with any linear blur operator, optionally TV-regularised.

    Iterates the multiplicative update (Richardson 1972, Lucy 1974; TV term of Dey et al. 2006,
    "Richardson–Lucy algorithm with total variation regularization for 3D confocal microscope
    deconvolution", Microsc. Res. Tech. 69:260–266)

    .. math::

        x^{k+1} = \frac{x^k}{H^*1 - \lambda\,\operatorname{div}\!\left(
                  \frac{\nabla x^k}{|\nabla x^k|_\varepsilon}\right)}
                  \; H^*\!\left(\frac{y}{H x^k + b}\right),

    a fixed-point scheme for the Poisson maximum likelihood ``min KL(y, Hx + b) + λ TV(x)``.
    The denominator is computed as ``H*1 · max(1 − λ div(∇x/|∇x|_ε), 0.1)``: identical to the
    formula above wherever ``H*1 = 1`` (PSFs summing to 1, away from the edge of the extended
    domain), always positive, and with the TV term in proportion to the data term where
    ``H*1 → 0``. The estimate stays non-negative.
    The CNN papers (Shajkofci & Liebling 2020) quote ``λ = 0.1`` and 20 iterations, but with a
    much weaker regulariser; with this TV term ``λ`` of 0.002–0.02 suits fluorescence images
    (``deconvolve(method="rl-tv")`` uses 0.01; see ``benchmarks/RESULTS.md``).

    Non-circulant scheme: ``x`` lives on the domain extended by the PSF half-width ``m``
    (``operator.extended(m)``) and only the centre of ``H_ext x`` is compared with ``y``, so
    light from sources outside the field is explained instead of ringing at the edges
    (Bertero & Boccacci 2005); the estimate is cropped back at the end. A PSF grid operator
    (``psfmap.operators.from_psf_grid``) gives the overlap-add deconvolution of the CNN papers
    with this same function.

    Any finite image gives a finite result: each frame is scaled internally by a power of two
    to a maximum in [0.5, 1) and back (exact in floating point, so ordinary images run the
    same iterates bit for bit, and RL with its background is equivariant to that scale), so
    float32 images near 3.4e38 do not overflow the FFT sums and subnormal images (1e-40) do
    not underflow. A peak sharpened beyond the largest value of the returned dtype is
    clipped to it with a ``RuntimeWarning`` (pass float64 to keep it).

    Parameters
    ----------
    image : ndarray or Tensor (..., H, W), or a nested list / array-like
        Blurred, non-negative image; leading axes (T, Z, ...) are frames restored together.
        Lists and array-likes are read as NumPy arrays (float32 for a list) and give NumPy.
    operator : linear operator
        A 3D operator (``Convolution``/``ProductConvolution`` with kernels ``(d, h, w)``)
        restores ``(..., D, H, W)`` as volumes
        (:func:`psfmap.restore.volume.richardson_lucy_volume`).
        Anything with ``forward(x)`` / ``adjoint(y)`` on (..., H, W) tensors, e.g.
        ``Convolution``, ``ProductConvolution`` (also compressed), a calibrated family member.
        It is moved to the image's dtype and device. It must map non-negative images to
        non-negative ones: local PSFs (``psf_at``) sampled on a 5 × 5 grid must have a positive
        sum and at most 10 % negative mass (compressions, ``compression_error > 0``, only a
        positive sum); otherwise ``ValueError``. Should the iterations still produce NaN, a
        ``ValueError`` names the operator: the result is never NaN.
    iterations : int
        Number of iterations, from 1 to ``MAX_ITERATIONS`` (100 000).
    tv : float
        TV weight ``λ`` (>= 0; 0 is plain RL). Dimensionless: ``div(∇x/|∇x|)`` lies in [-4, 4].
    background : float or array broadcastable to ``image``
        Known additive background ``b`` (>= 0), e.g. the camera offset.
    tol : float, optional
        Stop a frame when ``||x^{k+1} - x^k|| / ||x^k|| < tol``; all frames stop independently.
    tv_epsilon : float
        ``ε`` of ``|∇x|_ε = sqrt(|∇x|^2 + ε^2)``, relative to each frame's maximum.
    extend : bool
        Use the non-circulant extended domain (default). ``False`` reconstructs on the image
        domain only (zero boundary).
    callback : callable, optional
        ``callback(iteration, change)`` after every iteration (1-based; ``change`` is the
        largest relative change ``||x^{k+1} - x^k|| / ||x^k||`` over the running frames).
    intensity_scale : float, optional
        The intensity that ``tv_epsilon`` and the positivity floor are relative to. Default:
        each frame's maximum. Restoring a large image piece by piece, pass the whole image's
        maximum, so that every piece runs the iterations the whole would
        (``psfmap.deblur(tile=...)`` does). The level of the constant first estimate does
        not matter: the first update is the same for any level.
    accelerate : bool
        Biggs–Andrews vector extrapolation (:mod:`psfmap.restore._rl_loop`): each iteration
        costs the same, and fewer reach plain RL's error (``benchmarks/bench_volume.py
        accel``). Off by default, so that the default iterates are plain RL's; the same
        keyword restores volumes.

    Returns
    -------
    ndarray or Tensor (..., H, W)
        The restored image, same kind (NumPy/torch), floating dtype and device as ``image``.

    Examples
    --------
    >>> import torch
    >>> from psfmap.operators import Convolution
    >>> from psfmap.psf import gaussian
    >>> blur = Convolution(gaussian(15, 2.0))
    >>> x = torch.zeros(64, 64); x[20, 30] = 100.0
    >>> restored = richardson_lucy(blur(x), blur, iterations=30)
    """
    if is_volume_operator(operator):  # a 3D operator restores (..., D, H, W) as volumes
        return richardson_lucy_volume(image, operator, iterations, tv, background, tol=tol,
                                      tv_epsilon=tv_epsilon, extend=extend,
                                      accelerate=accelerate, callback=callback,
                                      intensity_scale=intensity_scale)
    kind = ArrayKind(image)
    y = _check_image(image)
    iterations = _check_iterations(iterations)
    tv = check_positive(tv, "tv", allow_zero=True)
    tv_epsilon = check_positive(tv_epsilon, "tv_epsilon")
    if tol is not None:
        tol = check_positive(tol, "tol", allow_zero=True)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {describe(callback)}")
    if intensity_scale is not None:
        intensity_scale = check_positive(intensity_scale, "intensity_scale")
    accelerate = check_flag(accelerate, "accelerate")
    check_operator(operator)
    image_shape = tuple(y.shape[-2:])
    margin = check_compatible(operator, image_shape)
    b = _check_background(background, y)

    operator = match_operator(operator, y.dtype, y.device)
    with solver_context(operator, y, b):
        check_nonnegative(operator, image_shape, dtype=y.dtype, device=y.device)
        system = CroppedOperator(operator, image_shape, margin if extend else 0)
        lead = y.shape[:-2]
        frames = y.reshape(-1, *image_shape)
        # every frame scaled by a power of two to a maximum in [0.5, 1): exact (bit for bit
        # the same iterates for ordinary images, RL being equivariant to scaling y and b
        # together), and no overflow in the FFT sums near the dtype's maximum nor underflow
        # of a subnormal image
        exponents = power_of_two_exponents(frames)
        scale = None
        if intensity_scale is not None:
            scale = times_power_of_two(
                torch.full_like(exponents, intensity_scale, dtype=torch.float64), -exponents
            ).to(y.dtype)
        restored = rl_iterate(
            times_power_of_two(frames, -exponents),
            system,
            iterations,
            tv,
            times_power_of_two(b.expand_as(y).reshape(-1, *image_shape), -exponents),
            image_shape=image_shape,
            tol=tol,
            tv_epsilon=tv_epsilon,
            callback=callback,
            intensity_scale=scale,
            relative_floor=COMPRESSED_FLOOR if is_compressed(operator) else 0.0,
            accelerate=accelerate,
            operator_name=f"operator {operator!r}",
        )
        restored = system.crop(restored)
        restored = times_power_of_two(restored, exponents).reshape(*lead, *image_shape)
    return kind.restore(fit_output(restored, kind, "the restored image"))


def _check_image(image: Any, name: str = "image") -> torch.Tensor:
    y = as_tensor(image, name)
    if y.ndim < 2:
        raise ValueError(f"{name} must have shape (..., H, W), got shape {tuple(y.shape)}")
    if y.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(y.shape)}); expected at least one pixel")
    check_finite(y, name)
    # FFT round-off leaves tiny negatives in simulated images: clip those, refuse real ones
    roundoff = ROUNDOFF * float(y.detach().abs().max())
    if bool((y < -roundoff).any()):
        raise ValueError(
            f"{name} has negative pixels (minimum {float(y.detach().min()):.4g}); expected a "
            "non-negative image (subtract the offset with care or pass it as background=)"
        )
    return torch.clamp(y, min=0) if bool((y < 0).any()) else y


def _check_iterations(iterations: Any, name: str = "iterations") -> int:
    return check_iterations(iterations, name)


def _check_background(background: Any, y: torch.Tensor) -> torch.Tensor:
    b = as_tensor(background, "background", dtype=y.dtype, device=y.device)
    check_finite(b, "background")
    if bool((b < 0).any()):
        raise ValueError("background must be >= 0, got negative values")
    try:  # NumPy's: torch.broadcast_shapes costs 0.3 s on its first call (a lazy import)
        fits = np.broadcast_shapes(tuple(b.shape), tuple(y.shape)) == tuple(y.shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"background of shape {tuple(b.shape)} does not broadcast to the image shape "
            f"{tuple(y.shape)}; expected a number or an array of the image's shape"
        )
    # a positive background above every pixel leaves no signal: RL would return zeros (a dark
    # frame of a stack is fine: it stays zero, as an all-zero frame does)
    if bool(((y <= b) & (b > 0)).all()):
        raise ValueError(
            f"background (up to {float(b.max()):.4g}) is at or above every pixel of the image; "
            "expected a level below the signal, e.g. the camera offset"
        )
    return b
