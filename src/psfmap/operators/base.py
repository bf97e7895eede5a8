"""The operator contract shared by every blur model (deepinv ``physics`` style).

Every operator of psfmap is a :class:`LinearOperator`: it knows the images it acts on
(``image_shape``, ``None`` for any size), the support of its PSFs (``kernel_shape``), its
``dtype`` and ``device``; it blurs (``forward``) and applies its exact adjoint (``adjoint``) on
tensors ``(..., H, W)`` whose leading axes are independent frames; it converts (``to``), grows
its domain (``extended``) and writes itself to one file (``save``). The solvers, the
identification and the simulation use nothing else, so any new PSF source plugs in by
subclassing it.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from psfmap._validation import as_tensor, describe


class LinearOperator(abc.ABC):
    """A linear map between images with ``forward`` and its exact ``adjoint``.

    Subclasses must implement :meth:`forward` and :meth:`adjoint` on tensors ``(..., H, W)``
    (leading axes are frames, each blurred independently) and should override the other
    members of the contract. The defaults here raise a clear error where a kind of operator
    cannot do something: :meth:`save` raises ``NotImplementedError`` for operators that are
    views of another one (e.g. the solvers' cropped operator: save the operator it is built
    from), :meth:`extended` and :meth:`to` likewise.

    Attributes
    ----------
    image_shape : (int, int) or None
        ``(H, W)`` of the images the operator applies to; None when any size works.
    """

    image_shape: tuple[int, int] | None = None

    # ------------------------------------------------------------------ the contract
    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Blur ``x`` ``(..., H, W)``: ``y = H x``, leading axes independent."""

    @abc.abstractmethod
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The exact adjoint ``H* y``, such that ``<H x, y> = <x, H* y>`` for all ``x, y``."""

    #: ``(h, w)`` of the PSFs; None when the operator has no kernel of its own
    kernel_shape: tuple[int, int] | None = None
    #: floating-point type and device of the operator's tensors; None for an operator that
    #: holds none of its own and follows its input (subclasses with tensors override them)
    dtype: torch.dtype | None = None
    device: torch.device | None = None

    def to(self, dtype: torch.dtype | None = None, device: Any = None) -> LinearOperator:
        """A copy with tensors in ``dtype`` on ``device`` (each kept when omitted).

        Raises ``NotImplementedError`` for a kind that cannot be converted.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be converted with to()")

    def extended(self, margin: int) -> LinearOperator:
        """The same blur on the domain grown by ``margin`` pixels on every side (weights
        edge-replicated), used by the solvers to restore without boundary ringing.

        Raises ``NotImplementedError`` for a kind that cannot be extended.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be extended")

    def save(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write the operator to one self-describing ``.psfmap`` file (atomic); return the path.

        Raises ``NotImplementedError`` for operators that are views of another one (a cropped
        or composed operator): save the operator they are built from instead.
        """
        raise NotImplementedError(
            f"a {type(self).__name__} cannot be saved to a file; save the operator it is "
            "built from instead"
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def norm_squared(
        self,
        shape: tuple[int, int] | None = None,
        iterations: int = 30,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> float:
        """Power-iteration estimate of ``‖H‖² = λ_max(H* H)``.

        ``shape`` is the input shape; it is needed only for operators without a fixed image
        shape (convolutions) or whose input and output domains differ.
        """
        shape = tuple(shape or self.image_shape or ())
        if len(shape) != 2:
            raise ValueError("norm_squared needs shape=(H, W) for an operator of any image size")
        generator = torch.Generator().manual_seed(seed)
        x = torch.rand(shape, generator=generator, dtype=dtype).to(device)
        x /= torch.linalg.vector_norm(x)
        value = 0.0
        with torch.no_grad():  # not inference_mode: forward caches tensors autograd may reuse
            for _ in range(iterations):
                z = self.adjoint(self.forward(x))
                value = float(torch.linalg.vector_norm(z))
                if value == 0.0:
                    return 0.0
                x = z / value
        return value


def as_real_float(x: Any, name: str) -> torch.Tensor:
    """``x`` as a real floating tensor (half precision computed in float32, as the FFTs need
    float32 or float64; integers in the default dtype); complex input is a ``TypeError``."""
    tensor = x if isinstance(x, torch.Tensor) else as_tensor(x, name)
    if tensor.is_complex():
        raise TypeError(f"{name} must be real, got a {tensor.dtype} tensor")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    if not tensor.dtype.is_floating_point:
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


def as_image(x: Any, name: str, image_shape: tuple[int, int] | None) -> torch.Tensor:
    """``x`` as a real floating tensor ``(..., H, W)`` (:func:`as_real_float`), checked
    against the operator's ``image_shape``."""
    tensor = as_real_float(x, name)
    if tensor.ndim < 2:
        raise ValueError(f"{name} must have shape (..., H, W), got {describe(x)}")
    if image_shape is not None and tuple(tensor.shape[-2:]) != tuple(image_shape):
        raise ValueError(
            f"{name} has image shape {tuple(tensor.shape[-2:])}, expected {tuple(image_shape)} "
            "(the operator's image_shape)"
        )
    return tensor
