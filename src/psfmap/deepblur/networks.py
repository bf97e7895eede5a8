r"""The two Deep-Blur networks, in plain torch.

* :class:`IdentificationNet` — a ResNet (He et al., CVPR 2016: basic residual blocks, one
  stride-2 stage per width) ending in adaptive average pooling and a linear layer:
  blurred image ``y`` → normalised coefficients ``γ̂ ∈ R^P``. Adaptive pooling makes it accept
  any image at least :attr:`IdentificationNet.field` pixels wide; pooling to a ``g × g`` grid
  (``pool=g``) keeps where in the field the blur was seen, which a space-variant family needs.
  Deep-Blur uses ResNet-18; this one is narrower (widths 16–128, ~0.3 M parameters) so that it
  trains on a CPU and ships in < 2 MB.
* :class:`UnrolledFISTA` — FISTA (Beck & Teboulle, SIAM J. Imaging Sci. 2009) for
  ``min_x ½‖A x − y‖² + R(x)`` unrolled for ``K = 15`` iterations, the proximal operator of ``R``
  replaced by a small residual CNN shared by all iterations (Debarnot & Weiss, Deep-Blur):

  .. math::

      x_{k+1} = \mathrm{prox}_θ\big(z_k − τ_k A^*(A z_k − y)\big),\quad
      z_{k+1} = x_{k+1} + \tfrac{t_k − 1}{t_{k+1}} (x_{k+1} − x_k),\quad
      t_{k+1} = \tfrac{1 + \sqrt{1 + 4 t_k^2}}{2}.

  The data term uses the operator's own ``forward``/``adjoint`` (psfmap ``Convolution`` or
  ``ProductConvolution``), so one network serves every operator of the family. ``x`` lives on
  the domain extended by the PSF half-width and only the centre of ``A x`` is compared with
  ``y`` (the non-circulant scheme of :func:`psfmap.richardson_lucy`), so light from outside the
  field does not ring at the edges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from psfmap._cpu import bfloat16_inference
from psfmap.blind.network import (
    BasicBlock,
    fold_batch_norm,
    fold_blocks,
    run_folded_blocks,
    weights_version,
)

__all__ = ["FusedIdentifier", "IdentificationNet", "ProximalCNN", "UnrolledFISTA", "image_scale"]


def image_scale(images: torch.Tensor) -> torch.Tensor:
    """A robust intensity scale per image ``(B, 1, 1)``: the 99.5 % quantile (or the max)."""
    flat = images.reshape(images.shape[0], -1)
    scale = upper_quantile(flat.float(), 0.995).to(images.dtype)
    scale = torch.where(scale > 0, scale, flat.amax(1))
    return scale.clamp_min(1e-12)[:, None, None]


def upper_quantile(rows: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(rows, q, dim=1)`` (linear interpolation) for ``q`` near 1, from the
    ``(1 − q) n`` largest values of each row (``topk``) instead of a full sort: 23 → 1.1 ms
    for a 512² image on 2 CPU cores (``benchmarks/RESULTS.md``), the same numbers."""
    n = rows.shape[1]
    position = q * (n - 1)
    low = math.floor(position)
    high = min(low + 1, n - 1)
    top = torch.topk(rows, n - low, dim=1).values  # descending: top[:, n - 1 - i] = sorted[i]
    below, above = top[:, n - 1 - low], top[:, n - 1 - high]
    return below + (position - low) * (above - below)


class IdentificationNet(nn.Module):
    """Blurred image ``(B, H, W)`` → normalised coefficients ``(B, P)``.

    Parameters
    ----------
    n_params : int
        P, the number of coefficients.
    widths : sequence of int
        Channels of the stages; each stage halves the resolution.
    blocks : int
        Residual blocks per stage.
    pool : int
        Adaptive average pooling to ``pool × pool`` before the linear head (1: global).
    fine : int
        Residual blocks at full resolution (``widths[0]`` channels) between the stem and the
        first stride-2 stage, for PSF detail finer than the first stage keeps. Each starts as
        the identity (its last batch norm's scale is zero), so a network without them can be
        grown into one with them and keep its outputs (:meth:`load_grown`).
    """

    def __init__(self, n_params: int, widths: Sequence[int] = (16, 32, 64, 128),
                 blocks: int = 1, pool: int = 1, fine: int = 0):
        super().__init__()
        self.config = {"n_params": int(n_params), "widths": list(widths), "blocks": int(blocks),
                       "pool": int(pool)}
        if fine:  # only when used: older weights' configs stay as they were
            self.config["fine"] = int(fine)
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.fine = nn.Sequential(*[BasicBlock(widths[0], widths[0]) for _ in range(fine)])
        for block in self.fine:
            nn.init.zeros_(block.bn2.weight)
        layers: list[nn.Module] = []
        channels = widths[0]
        for width in widths:
            for index in range(blocks):
                layers.append(BasicBlock(channels, width, 2 if index == 0 else 1))
                channels = width
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.head = nn.Linear(channels * pool * pool, n_params)
        # the smallest image whose pooled grid is made of distinct features
        self.field = pool * 2 ** len(widths)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, H, W)`` (any intensity scale) → ``(B, P)``."""
        x = images / image_scale(images)
        x = self.body(self.fine(self.stem(x[:, None])))
        return self.head(torch.flatten(self.pool(x), 1))

    def load_grown(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Load the weights of the same network with fewer :attr:`fine` blocks (or none);
        the blocks it lacks stay as the identity. Returns the names of the weights left as
        they were; any other mismatch raises like :meth:`load_state_dict`."""
        own = self.state_dict()
        missing = [key for key in own if key not in state]
        wrong = [key for key in missing if not key.startswith("fine.")]
        wrong += [key for key in state if key not in own]
        if wrong:
            raise RuntimeError(f"state does not fit this identification network: "
                               f"{', '.join(wrong[:5])}")
        self.load_state_dict(state, strict=False)
        return missing

    def fused_for_inference(self) -> FusedIdentifier:
        """An inference-only copy computing :meth:`forward` in eval mode, faster; kept until a
        weight changes (building it costs 4 ms, a third of a 512² identification)."""
        key = weights_version(self)
        cached = self.__dict__.get("_fused")  # not a submodule: no weights of its own to save
        if cached is None or cached[0] != key:
            cached = (key, FusedIdentifier(self))
            self.__dict__["_fused"] = cached
        return cached[1]


class FusedIdentifier(nn.Module):
    """Inference-only copy of an :class:`IdentificationNet`: batch norms folded into the
    convolutions, activations in place, channels-last layout (71 → 37 ms at 512² on 2 CPU
    cores; batch norm alone runs slowly in that layout, hence the folding). Equal to the
    network in eval mode up to float32 rounding; it does not follow later changes of the
    network's weights (cheap to build again: a few dozen small tensors)."""

    def __init__(self, network: IdentificationNet):
        super().__init__()
        self.stem = fold_batch_norm(network.stem[0], network.stem[1])
        self.blocks = fold_blocks([*network.fine, *network.body])
        self.pool, self.head = network.pool, network.head
        self.eval()
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images / image_scale(images))[:, None].contiguous(
            memory_format=torch.channels_last)
        x = run_folded_blocks(torch.relu_(self.stem(x)), self.blocks)
        return self.head(torch.flatten(self.pool(x), 1))


class ProximalCNN(nn.Module):
    """The learned proximal step: ``x + β · CNN(x)``, a 4-layer residual CNN (dilated middle).

    With ``unshuffle = s > 1`` the CNN works at ``1/s`` resolution: the image is split into its
    ``s²`` sub-sampled phases (``pixel_unshuffle``, ``s²`` channels), and the CNN's ``s²``
    output channels are put back in place (``pixel_shuffle``), so the residual still has full
    resolution. This costs ``s²`` times fewer pixels per convolution for a receptive field
    ``s`` times wider (Shi et al., CVPR 2016, "Real-time single image and video
    super-resolution using an efficient sub-pixel convolutional neural network"). The
    convolutions run in channels-last layout, which oneDNN runs 2-3× faster for so few
    channels on a CPU, and at inference in bfloat16 on a CPU that has bfloat16 instructions
    (:func:`psfmap._cpu.bfloat16_inference`; ``PSFMAP_BFLOAT16=0`` keeps float32).
    """

    def __init__(self, channels: int = 16, unshuffle: int = 1):
        super().__init__()
        self.unshuffle = int(unshuffle)
        phases = self.unshuffle ** 2
        # in-place activations: a new buffer per activation cost up to 16 % of a 512² deblur
        self.net = nn.Sequential(
            nn.Conv2d(phases, channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=2, dilation=2), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, phases, 3, padding=1))
        self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        s = self.unshuffle
        height, width = x.shape[-2:]
        features = x[:, None]
        if s > 1:  # pad to a multiple of s (edge values), split into phases
            features = nn.functional.pad(features, (0, -width % s, 0, -height % s),
                                         mode="replicate")
            features = nn.functional.pixel_unshuffle(features, s)
        features = features.contiguous(memory_format=torch.channels_last)
        if bfloat16_inference(features):
            # half the memory traffic; the residual is added in float32, so the output moves
            # by ~2e-4 relative and the held-out SSIM by < 1e-4 (benchmarks/RESULTS.md)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                features = self.net(features)
            features = features.float()
        else:
            features = self.net(features)
        if s > 1:
            features = nn.functional.pixel_shuffle(features, s)[..., :height, :width]
        return x + gain * features[:, 0]


class UnrolledFISTA(nn.Module):
    """FISTA unrolled for ``iterations`` steps with a learned proximal CNN (module docstring).

    Parameters
    ----------
    iterations : int
        K, the number of unrolled iterations (Deep-Blur: 15).
    channels : int
        Width of the proximal CNN.
    unshuffle : int
        The proximal CNN's resolution divisor (:class:`ProximalCNN`; 1: full resolution).
    """

    def __init__(self, iterations: int = 15, channels: int = 16, unshuffle: int = 1):
        super().__init__()
        self.config = {"iterations": int(iterations), "channels": int(channels),
                       "unshuffle": int(unshuffle)}
        self.prox = ProximalCNN(channels, unshuffle)
        # τ_k = softplus(·) starts at 1 (‖A‖ ≈ 1 for PSFs summing to 1); β_k starts small
        self.steps = nn.Parameter(torch.full((iterations,), math.log(math.e - 1)))
        self.gains = nn.Parameter(torch.full((iterations,), 0.1))

    def forward(self, images: torch.Tensor, operators: Sequence[Any] | Any) -> torch.Tensor:
        """Restore ``images (B, H, W)`` blurred by ``operators`` (one, or one per image)."""
        batch, height, width = images.shape
        if not isinstance(operators, (list, tuple)):
            operators = [operators] * batch
        if len(operators) != batch:
            raise ValueError(f"operators must be one operator or one per image ({batch}), got "
                             f"{len(operators)}")
        scale = image_scale(images)
        y = images / scale
        margins = [max(op.kernel_shape) // 2 for op in operators]
        margin = max(margins)
        extended = [op.extended(margin) for op in operators]

        def forward_op(x: torch.Tensor) -> torch.Tensor:
            out = [op.forward(x[b]) for b, op in enumerate(extended)]
            return torch.stack(out)[:, margin : margin + height, margin : margin + width]

        def adjoint_op(r: torch.Tensor) -> torch.Tensor:
            padded = nn.functional.pad(r, (margin, margin, margin, margin))
            return torch.stack([op.adjoint(padded[b]) for b, op in enumerate(extended)])

        x = nn.functional.pad(y, (margin, margin, margin, margin), mode="replicate")
        z, t = x, 1.0
        for k in range(len(self.steps)):
            gradient = adjoint_op(forward_op(z) - y)
            x_next = self.prox(z - nn.functional.softplus(self.steps[k]) * gradient,
                               self.gains[k])
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            z = x_next + ((t - 1) / t_next) * (x_next - x)
            x, t = x_next, t_next
        return x[:, margin : margin + height, margin : margin + width] * scale
