"""The non-circulant scheme shared by the solvers: reconstruct on an extended domain, crop.

A blurred image of size H × W also holds light from sources up to a PSF half-width ``m`` outside
the field. Modelling the object on the extended domain (H + 2m) × (W + 2m) and observing only the
centre,

    A = C ∘ H_ext,   A* = H_ext* ∘ C*,

where ``H_ext = operator.extended(m)`` (the same operator on the padded domain, weights
edge-replicated) and ``C`` keeps rows ``m .. m + H - 1`` and columns ``m .. m + W - 1`` (``C*``
pads with zeros), lets the solver explain the light entering from outside instead of forcing it
onto the border pixels, which is what causes edge ringing with circular or zero boundaries
(Bertero & Boccacci 2005, "A simple method for the reduction of boundary effects in the
Richardson–Lucy approach to image deconvolution", A&A 437:369–374).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from psfmap._validation import as_tensor, check_psf, describe
from psfmap.operators.base import LinearOperator


def check_operator(operator: Any, name: str = "operator") -> Any:
    """Accept anything with ``forward`` and ``adjoint`` methods."""
    methods = (getattr(operator, "forward", None), getattr(operator, "adjoint", None))
    if not all(callable(method) for method in methods):
        raise TypeError(
            f"{name} must be a linear operator with forward() and adjoint() methods "
            f"(e.g. psfmap.operators.Convolution), got {describe(operator)}"
        )
    return operator


def as_operator(
    operator: Any, image_shape: tuple[int, int], name: str = "operator",
    dtype: torch.dtype | None = None,
) -> Any:
    """An operator; a PSF (h, w) -> Convolution; a PSF grid (gy, gx, h, w) -> from_psf_grid;
    a PSFMap made for this image size -> its operator, rendered in ``dtype`` (the image's:
    float64 PSFs for a float64 image)."""
    from psfmap.operators.psf_map import PSFMap

    if isinstance(operator, PSFMap):
        operator.check_covers(image_shape, name)
        return operator.operator(tuple(image_shape), dtype=dtype)
    if isinstance(operator, (np.ndarray, torch.Tensor)):
        from psfmap.operators import Convolution, from_psf_grid

        psf = as_tensor(operator, name)
        if psf.ndim == 2:
            # checked before normalising: dividing by a negative sum would hide the sign
            return Convolution(check_psf(psf, name) / psf.sum())
        if psf.ndim == 4:
            return from_psf_grid(psf, tuple(image_shape))
        raise ValueError(
            f"{name} given as an array must be a PSF (h, w) or a PSF grid (gy, gx, h, w), "
            f"got shape {tuple(psf.shape)}"
        )
    return check_operator(operator, name)


def _shape(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value)
    except TypeError:
        return None


def check_compatible(operator: Any, image_shape: tuple[int, int], name: str = "operator") -> int:
    """Check the operator fits the image; return the margin (PSF half-width) of the extension."""
    op_shape = _shape(getattr(operator, "image_shape", None))
    if op_shape is not None and op_shape != tuple(image_shape):
        raise ValueError(
            f"{name} acts on images of shape {op_shape}, got an image of shape "
            f"{tuple(image_shape)}; build the operator for this image size"
        )
    kernel_shape = _shape(getattr(operator, "kernel_shape", None))
    if kernel_shape is None:
        return 0
    if kernel_shape[0] > image_shape[0] or kernel_shape[1] > image_shape[1]:
        raise ValueError(
            f"{name} has a PSF of shape {kernel_shape}, larger than the image "
            f"{tuple(image_shape)}; expected a PSF no larger than the image (crop the PSF)"
        )
    return max(kernel_shape[0] // 2, kernel_shape[1] // 2)


def match_operator(operator: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """The operator in the image's dtype and on its device (unchanged when it cannot move)."""
    op_dtype = getattr(operator, "dtype", None)
    op_device = getattr(operator, "device", None)
    kernels = getattr(operator, "kernels", None)
    if op_device is None and isinstance(kernels, torch.Tensor):
        op_device = kernels.device
    if (op_dtype is None or op_dtype == dtype) and (op_device is None or op_device == device):
        return operator
    if not callable(getattr(operator, "to", None)):
        return operator
    return operator.to(dtype=dtype, device=device)


class CroppedOperator(LinearOperator):
    """``A = C ∘ H_ext``: the operator on the domain extended by ``margin`` px, output cropped.

    Maps (..., H + 2m, W + 2m) -> (..., H, W); ``adjoint`` is exact (zero-padding then the
    extended operator's adjoint). With ``margin = 0`` it is the operator itself.
    """

    def __init__(self, operator: Any, image_shape: tuple[int, int], margin: int):
        self.margin = int(margin)
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        self.operator = operator
        if self.margin > 0:
            extend = getattr(operator, "extended", None)
            try:
                self.operator = extend(self.margin) if callable(extend) else None
            except NotImplementedError:
                self.operator = None
            if self.operator is None:  # no extension available: image domain only
                self.operator, self.margin = operator, 0
        m = self.margin
        self.domain_shape = (self.image_shape[0] + 2 * m, self.image_shape[1] + 2 * m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.operator.forward(x)
        return self.crop(y)

    __call__ = forward

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.operator.adjoint(self.pad(y))

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """Extended domain -> image domain (rows/columns ``m .. m + H - 1``)."""
        m = self.margin
        if m == 0:
            return x
        height, width = self.image_shape
        return x[..., m : m + height, m : m + width]

    def pad(self, y: torch.Tensor) -> torch.Tensor:
        """Image domain -> extended domain, zeros outside (the adjoint of :meth:`crop`)."""
        m = self.margin
        if m == 0:
            return y
        return torch.nn.functional.pad(y, (m, m, m, m))

    def norm_squared(self, iterations: int = 30, seed: int = 0) -> float:
        """Power-iteration estimate of ``||A||^2`` for the composed operator itself."""
        dtype = getattr(self.operator, "dtype", None) or torch.get_default_dtype()
        kernels = getattr(self.operator, "kernels", None)
        device = kernels.device if isinstance(kernels, torch.Tensor) else None
        return LinearOperator.norm_squared(
            self, self.domain_shape, iterations=iterations, seed=seed, dtype=dtype, device=device
        )


def needs_gradient(operator: Any, *tensors: torch.Tensor) -> bool:
    """Whether autograd must track the solver (an input or the operator's kernels need grad)."""
    if not torch.is_grad_enabled():
        return False
    parameters = [getattr(operator, name, None) for name in ("kernels", "psf")]
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in (*tensors, *parameters))


def solver_context(operator: Any, *tensors: torch.Tensor):
    """``torch.no_grad()`` unless a gradient is needed.

    Not ``torch.inference_mode()``: operators cache kernel spectra on first use, and a tensor
    cached in inference mode can never be used by autograd afterwards ("Inference tensors
    cannot be saved for backward"), which would break a later differentiable use of the
    caller's operator.
    """
    import contextlib

    return contextlib.nullcontext() if needs_gradient(operator, *tensors) else torch.no_grad()
