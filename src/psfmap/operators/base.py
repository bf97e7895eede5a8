"""The linear-operator interface shared by every blur model (deepinv ``physics`` style)."""

from __future__ import annotations

import torch


class LinearOperator:
    """A linear map between images with ``forward`` and its exact ``adjoint``.

    Subclasses implement :meth:`forward` and :meth:`adjoint` on tensors ``(..., H, W)``.
    """

    image_shape: tuple[int, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Blur ``x`` ``(..., H, W)``: ``y = H x``, leading axes independent."""
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The exact adjoint ``H* y``, such that ``<H x, y> = <x, H* y>`` for all ``x, y``."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def extended(self, margin: int) -> LinearOperator:  # pragma: no cover - abstract
        """The same blur on the domain grown by ``margin`` pixels on every side (weights
        edge-replicated), used by the solvers to restore without boundary ringing."""
        raise NotImplementedError

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
