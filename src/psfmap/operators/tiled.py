"""Tiled evaluation of a product convolution with compactly supported weights.

Each term ``k_i ⋆ (w_i · f)`` is computed on the bounding box of ``w_i`` only (a "full" linear
convolution with the kernel at the FFT origin) and added back at its offset; a margin of one
kernel around the output absorbs what falls outside the field. For a PSF grid, whose bilinear
weights touch at most four cells per pixel, the cost grows with the number of pixels rather
than with the number of kernels (Nagy & O'Leary, SIAM J. Sci. Comput. 1998). Tiles of the
same size are transformed together, in batches that stay in cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from psfmap.operators.fft import corner_spectra, fast_size

Box = tuple[int, int, int, int]  # row start, row stop, column start, column stop

# tiles are transformed in batches of about this many real samples: one batch of 2 MB
# stays in cache (a 4096² field's 16,129 tiles in one batch ran 10x slower and took GBs)
_TILE_CHUNK_ELEMENTS = 1 << 19
# the tiles' kernel spectra and weights are each kept when they fit in this many bytes, else
# rebuilt per batch (the weights take ~4 values per pixel: fields up to ~4000² in float32)
_SPECTRA_CACHE_BYTES = 256 * 2**20
_PLAN_CACHE_BYTES = 256 * 2**20


def tile_fft_shape(box: Box, kernel_shape: tuple[int, int]) -> tuple[int, int]:
    """FFT shape of the full linear convolution of a ``box`` with a kernel."""
    h, w = kernel_shape
    return fast_size(box[1] - box[0] + h - 1), fast_size(box[3] - box[2] + w - 1)


class TiledEngine:
    """Evaluates ``forward``/``adjoint`` of one operator term by term on the weights' supports.

    Parameters
    ----------
    operator : ProductConvolution
        The representation: ``kernels``, the weights' bounding boxes (``operator.supports``),
        weights on a box (``operator._weight``) and its cached casts.
    """

    name = "tiled"

    def __init__(self, operator: Any):
        self.operator = operator
        self._cache: dict[Any, Any] = {}

    def _cached(self, key: Any, dtype: torch.dtype, device: torch.device, build):
        cache_key = (key, dtype, str(device))
        if cache_key not in self._cache:
            self._cache[cache_key] = build()
        return self._cache[cache_key]

    def _groups(self) -> list[tuple[torch.Tensor, tuple[int, int], tuple[int, int]]]:
        """Tiles grouped by box size: ``(indices, (bh, bw), fft_shape)``; one FFT call per
        batch of each group."""
        if "groups" not in self._cache:
            op = self.operator
            groups: dict[tuple[int, int], list[int]] = {}
            for i, (r0, r1, c0, c1) in enumerate(op.supports):
                if r1 > r0:
                    groups.setdefault((r1 - r0, c1 - c0), []).append(i)
            self._cache["groups"] = [
                (torch.tensor(indices), size,
                 tile_fft_shape(op.supports[indices[0]], op.kernel_shape))
                for size, indices in groups.items()
            ]
        return self._cache["groups"]

    def _batches(self) -> Iterator[tuple[torch.Tensor, tuple[int, int], tuple[int, int], Any]]:
        """``(indices, (bh, bw), fft_shape, key)`` per batch of same-size tiles, about
        ``_TILE_CHUNK_ELEMENTS`` samples per image and FFT call; ``key`` names the batch."""
        for group, (indices, size, shape) in enumerate(self._groups()):
            per_batch = max(1, _TILE_CHUNK_ELEMENTS // (shape[0] * shape[1]))
            for start in range(0, len(indices), per_batch):
                yield indices[start : start + per_batch], size, shape, (group, start, per_batch)

    def _samples(self) -> tuple[int, int]:
        """Values held by all the tiles' spectra (complex) and weights (real), for the cache
        budgets; counted once per operator."""
        if "samples" not in self._cache:
            groups = self._groups()
            self._cache["samples"] = (
                sum(len(idx) * s[0] * (s[1] // 2 + 1) for idx, _, s in groups),
                sum(len(idx) * bh * bw for idx, (bh, bw), _ in groups),
            )
        return self._cache["samples"]

    def _batch_spectra(self, key, indices, shape, dtype, device) -> torch.Tensor:
        """Corner spectra of the kernels of one batch (cached for the whole group when small)."""
        op = self.operator
        group, start, per_batch = key
        if op.kernels.requires_grad:
            return corner_spectra(op.kernels[indices].to(device=device, dtype=dtype), shape)
        if self._samples()[0] * 2 * torch.finfo(dtype).bits // 8 > _SPECTRA_CACHE_BYTES:
            return corner_spectra(op._kernels_as(dtype, device)[indices], shape)
        spectra = self._cached(
            "group_spectra", dtype, device,
            lambda: [corner_spectra(op._kernels_as(dtype, device)[idx], s)
                     for idx, _, s in self._groups()],
        )
        return spectra[group][start : start + per_batch]

    def _batch_weights(self, indices: torch.Tensor, boxes: list[Box], dtype,
                       device) -> torch.Tensor:
        """Weights ``(n, bh, bw)`` of a batch of same-size tiles on their ``boxes``."""
        op = self.operator
        if not op._all_single:
            return torch.stack([op._weight(i, box, dtype, device)
                                for i, box in zip(indices.tolist(), boxes, strict=True)])
        # every term is an outer product of two profiles: gather them for the whole batch
        rows, _, cols = op._factors_as(dtype, device)
        p, q, value, _ = op._terms
        r0, r1, c0, c1 = torch.tensor(boxes, device=device).unbind(1)
        height, width = int(r1[0] - r0[0]), int(c1[0] - c0[0])
        row_index = r0[:, None] + torch.arange(height, device=device)
        col_index = c0[:, None] + torch.arange(width, device=device)
        row_weights = rows[p[indices].to(device)[:, None], row_index]
        col_weights = cols[q[indices].to(device)[:, None], col_index]
        scale = value[indices].to(device=device, dtype=dtype)
        return (scale[:, None] * row_weights)[:, :, None] * col_weights[:, None, :]

    def _batch_plan(self, key, indices, dtype, device) -> tuple[torch.Tensor, list]:
        """Weights ``(n, bh, bw)`` of a batch on its boxes and the boxes' top-left corners;
        kept for the next calls while all the weights fit in ``_PLAN_CACHE_BYTES``."""
        def build():
            boxes = [self.operator.supports[i] for i in indices.tolist()]
            corners = [(r0, c0) for r0, _, c0, _ in boxes]
            return self._batch_weights(indices, boxes, dtype, device), corners

        weight_bytes = self._samples()[1] * torch.finfo(dtype).bits // 8
        if self.operator._needs_grad() or weight_bytes > _PLAN_CACHE_BYTES:
            return build()
        return self._cached(("plan", key), dtype, device, build)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``Σ_i k_i ⋆ (w_i · x)`` for a stack ``x`` ``(B, H, W)``."""
        height, width = self.operator.image_shape
        kh, kw = self.operator.kernel_shape
        out = x.new_zeros((x.shape[0], height + 2 * kh, width + 2 * kw))
        for indices, (bh, bw), shape, key in self._batches():
            weights, corners = self._batch_plan(key, indices, x.dtype, x.device)
            patches = torch.stack([x[:, r0 : r0 + bh, c0 : c0 + bw] for r0, c0 in corners], dim=1)
            spectra = self._batch_spectra(key, indices, shape, x.dtype, x.device)
            blurred = torch.fft.irfft2(torch.fft.rfft2(patches * weights, s=shape) * spectra,
                                       s=shape)
            for k, (r0, c0) in enumerate(corners):
                top, left = r0 - kh // 2 + kh, c0 - kw // 2 + kw
                out[:, top : top + bh + kh - 1, left : left + bw + kw - 1] += blurred[
                    :, k, : bh + kh - 1, : bw + kw - 1
                ]
        return out[:, kh : kh + height, kw : kw + width]

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Σ_i w_i · (k̃_i ⋆ y)`` for a stack ``y`` ``(B, H, W)``."""
        height, width = self.operator.image_shape
        kh, kw = self.operator.kernel_shape
        padded = torch.nn.functional.pad(y, (kw, kw, kh, kh))
        out = y.new_zeros(y.shape)
        for indices, (bh, bw), shape, key in self._batches():
            weights, corners = self._batch_plan(key, indices, y.dtype, y.device)
            regions = []
            for r0, c0 in corners:
                top, left = r0 - kh // 2 + kh, c0 - kw // 2 + kw
                regions.append(padded[:, top : top + bh + kh - 1, left : left + bw + kw - 1])
            spectrum = torch.fft.rfft2(torch.stack(regions, dim=1), s=shape)
            spectra = self._batch_spectra(key, indices, shape, y.dtype, y.device)
            correlated = torch.fft.irfft2(spectrum * spectra.conj(), s=shape)[..., :bh, :bw]
            correlated = correlated * weights
            for k, (r0, c0) in enumerate(corners):
                out[:, r0 : r0 + bh, c0 : c0 + bw] += correlated[:, k]
        return out
