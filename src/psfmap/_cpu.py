"""What the CPU runs fast: a choice of arithmetic made once per process, overridable.

Convolution networks at inference run in bfloat16 where the CPU has bfloat16 instructions
(``AVX512_BF16`` or ``AMX``): oneDNN then needs half the memory traffic and the proximal CNN of
the Deep-Blur deblurrer runs 1.6–1.8× faster (``benchmarks/RESULTS.md``). Elsewhere bfloat16
would be emulated, slower than float32, so it is not used.
"""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def _native_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (torch's own probe; False if it has none)."""
    probes = [getattr(torch.cpu, name, None) for name in
              ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(probe()) for probe in probes if probe is not None)


def bfloat16_inference(tensor: torch.Tensor) -> bool:
    """Whether a network's inference on ``tensor`` should run in bfloat16 (``torch.autocast``).

    Only float32 CPU tensors with autograd off (training keeps float32 gradients).
    ``PSFMAP_BFLOAT16`` = ``1`` / ``0`` forces it on / off; otherwise (``auto``) when the CPU
    has bfloat16 instructions.
    """
    if tensor.device.type != "cpu" or tensor.dtype != torch.float32 or torch.is_grad_enabled():
        return False
    choice = os.environ.get("PSFMAP_BFLOAT16", "auto").strip().lower()
    if choice in ("0", "1"):
        return choice == "1"
    if choice != "auto":
        raise ValueError(f"PSFMAP_BFLOAT16 must be 0, 1 or auto, got {choice!r}")
    return _native_bfloat16()
