"""Product-convolution operators: ``H f = Σ_i k_i ⋆ (w_i · f)``.

The local PSF emitted from pixel ``y`` is ``Σ_i w_i(y) k_i``. Convolutions are linear (zero
outside the field) and return the input's size, with kernels centred at ``(h // 2, w // 2)``.

Two evaluation strategies give the same result:

* **Fourier sum** (any weights): ``H f = F⁻¹ Σ_i K_i · F(w_i f)`` — ``I`` forward FFTs and one
  inverse FFT on the padded image; the adjoint ``H* g = Σ_i w_i · F⁻¹(conj K_i · F g)`` is one
  forward and ``I`` inverse FFTs. Kernel spectra are cached per dtype and device.
* **Tiles** (compactly supported weights, e.g. a PSF grid whose bilinear weights touch at most
  four cells per pixel): each term is convolved on the bounding box of its weight only, so the
  cost grows with the number of pixels rather than with the number of kernels.

The cheaper strategy is chosen from the FFT sizes when the operator is built.

References
----------
Nagy & O'Leary, "Restoring images degraded by spatially variant blur", SIAM J. Sci. Comput. 1998.
Denis, Thiébaut, Soulez, Becker, Mourya, "Fast approximations of shift-variant blur", IJCV 2015.
Debarnot, Escande, Mangeat, Weiss, "Learning low-dimensional models of microscopes", IEEE TCI 2021.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from psfmap._container import load_container, save_container
from psfmap._validation import as_tensor, check_finite, check_ndim, check_psf, describe
from psfmap.operators.base import LinearOperator
from psfmap.operators.fft import centred_spectra, corner_spectra, fast_size, same_fft_shape

Box = tuple[int, int, int, int]  # row start, row stop, column start, column stop

# edge-padded weights of an extended operator are kept when they fit in this many bytes;
# larger fields (e.g. 4096² with 8 terms) are padded term by term at each use instead
_PADDED_CACHE_BYTES = 256 * 2**20
# tiles are transformed in batches of about this many real samples: one batch of 2 MB
# stays in cache (a 4096² field's 16,129 tiles in one batch ran 10x slower and took GBs)
_TILE_CHUNK_ELEMENTS = 1 << 19
# the tiles' kernel spectra and weights are each kept when they fit in this many bytes, else
# rebuilt per batch (the weights take ~4 values per pixel: fields up to ~4000² in float32)
_SPECTRA_CACHE_BYTES = 256 * 2**20
_PLAN_CACHE_BYTES = 256 * 2**20


def _as_image(x: Any, name: str, image_shape: tuple[int, int] | None) -> torch.Tensor:
    tensor = x if isinstance(x, torch.Tensor) else as_tensor(x, name)
    if tensor.is_complex():
        raise TypeError(f"{name} must be real, got a {tensor.dtype} tensor")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        # the FFTs need float32 or float64: half precision is computed in float32, as a NumPy
        # float16 array is (as_tensor)
        tensor = tensor.float()
    if not tensor.dtype.is_floating_point:
        tensor = tensor.to(torch.get_default_dtype())
    if tensor.ndim < 2:
        raise ValueError(f"{name} must have shape (..., H, W), got {describe(x)}")
    if image_shape is not None and tuple(tensor.shape[-2:]) != tuple(image_shape):
        raise ValueError(
            f"{name} has image shape {tuple(tensor.shape[-2:])}, expected {tuple(image_shape)} "
            "(the operator's image_shape)"
        )
    return tensor


class ProductConvolution(LinearOperator):
    """Space-variant blur ``H f = Σ_i k_i ⋆ (w_i · f)``.

    Parameters
    ----------
    kernels : array or tensor, shape (I, h, w)
        Convolution kernels (local or eigen-PSFs), centred at ``(h // 2, w // 2)``.
    weights : array or tensor, shape (I, H, W)
        Weight maps the size of the image.
    metadata : dict, optional
        Optics and provenance saved with the operator (pixel size in µm, wavelength, ...).

    Examples
    --------
    >>> import torch
    >>> from psfmap.psf import gaussian
    >>> kernels = torch.stack([gaussian(15, 1.0), gaussian(15, 3.0)])
    >>> ramp = torch.linspace(0, 1, 64).expand(64, 64)
    >>> op = ProductConvolution(kernels, torch.stack([1 - ramp, ramp]))
    >>> op.forward(torch.rand(64, 64)).shape
    torch.Size([64, 64])
    """

    def __init__(self, kernels: Any, weights: Any, metadata: Mapping[str, Any] | None = None):
        kernels = check_finite(as_tensor(kernels, "kernels"), "kernels")
        check_ndim(kernels, "kernels", 3, "(I, h, w)")
        weights = as_tensor(weights, "weights", dtype=kernels.dtype, device=kernels.device)
        check_ndim(weights, "weights", 3, "(I, H, W)")
        check_finite(weights, "weights")
        if kernels.shape[0] != weights.shape[0]:
            raise ValueError(
                f"kernels and weights must have the same number I of terms, got "
                f"{kernels.shape[0]} kernels and {weights.shape[0]} weight maps"
            )
        self._setup(kernels, weights, None, metadata)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_factors(
        cls,
        kernels: Any,
        rows: Any,
        core: Any,
        cols: Any,
        metadata: Mapping[str, Any] | None = None,
    ) -> ProductConvolution:
        """Operator with factored weights ``w_i = Rᵀ C_i S``.

        ``rows`` R ``(P, H)`` and ``cols`` S ``(Q, W)`` are profiles shared by all terms and
        ``core`` C ``(I, P, Q)`` mixes them. A PSF grid is the case ``C_i = e_r e_cᵀ`` on the
        grid's hat profiles; compressing such an operator only mixes the cores, so its
        weights never need ``I H W`` numbers.
        """
        kernels = check_finite(as_tensor(kernels, "kernels"), "kernels")
        check_ndim(kernels, "kernels", 3, "(I, h, w)")
        tensors = []
        for value, name, axes in ((rows, "rows", 2), (core, "core", 3), (cols, "cols", 2)):
            tensor = as_tensor(value, name, dtype=kernels.dtype, device=kernels.device)
            check_ndim(tensor, name, axes, {2: "(P, H)" if name == "rows" else "(Q, W)",
                                            3: "(I, P, Q)"}[axes])
            tensors.append(check_finite(tensor, name))
        rows, core, cols = tensors
        if core.shape != (kernels.shape[0], rows.shape[0], cols.shape[0]):
            raise ValueError(
                f"core must have shape (I, P, Q) = ({kernels.shape[0]}, {rows.shape[0]}, "
                f"{cols.shape[0]}), got {tuple(core.shape)}"
            )
        return cls._factored(kernels, rows, core, cols, metadata)

    @classmethod
    def _factored(cls, kernels, rows, core, cols, metadata, terms=None) -> ProductConvolution:
        """Factored operator without checks; ``core`` may be None when ``terms`` (all single
        entries) define it: a g × g grid's core has g⁴ numbers, its terms 3 g²."""
        operator = cls.__new__(cls)
        operator._setup(kernels, None, (rows, core, cols), metadata, terms=terms)
        return operator

    def _setup(self, kernels, weights, factors, metadata, margin: int = 0, terms=None) -> None:
        if kernels.shape[0] == 0:
            raise ValueError("kernels must hold at least one kernel, got I = 0")
        self.kernels = kernels
        self._dense_weights = weights
        rows, core, cols = factors if factors is not None else (None, None, None)
        self._rows, self._core, self._cols = rows, core, cols
        # terms whose core has one non-zero entry are plain outer products of two profiles:
        # (p, q, value, single) per term
        if terms is None and core is not None:
            terms = _single_entries(core)
        self._terms = terms
        # dense weights of an extended operator stay at the original size and are
        # edge-padded by `_margin` on the fly, so extending never copies them
        self._margin = int(margin)
        self._padded_weights: torch.Tensor | None = None
        height = weights.shape[1] if weights is not None else rows.shape[1]
        width = weights.shape[2] if weights is not None else cols.shape[1]
        height, width = height + 2 * self._margin, width + 2 * self._margin
        if height < 1 or width < 1:
            raise ValueError(f"weights must cover a non-empty image, got {height}x{width}")
        self.image_shape = (int(height), int(width))
        self.kernel_shape = (int(kernels.shape[1]), int(kernels.shape[2]))
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.compression_error: float | None = None
        self.fft_shape = same_fft_shape(self.image_shape, self.kernel_shape)
        if any(k > n for k, n in zip(self.kernel_shape, self.fft_shape)):
            # a kernel wider than the padded FFT grid cannot be placed on it (about 2H + 1 px)
            raise ValueError(
                f"kernels of {self.kernel_shape} px are more than twice the image "
                f"{height}x{width}; crop the PSFs to at most about twice the image's side"
            )
        self._supports = self._weight_supports()
        self._tile_shapes = [self._tile_fft_shape(box) for box in self._supports]
        self.strategy = "tiles" if self._tiles_are_cheaper() else "fourier-sum"
        self._cache: dict[Any, Any] = {}

    # ------------------------------------------------------------------ properties
    @property
    def n_kernels(self) -> int:
        return int(self.kernels.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.kernels.dtype

    @property
    def device(self) -> torch.device:
        return self.kernels.device

    @property
    def _factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(rows, core, cols)`` of factored weights (the core is built on first use)."""
        if self._rows is None:
            return None
        if self._core is None:
            p, q, value, _ = self._terms
            core = value.new_zeros(len(p), self._rows.shape[0], self._cols.shape[0])
            core[torch.arange(len(p), device=p.device), p, q] = value
            self._core = core
        return self._rows, self._core, self._cols

    @property
    def _all_single(self) -> bool:
        return self._terms is not None and bool(self._terms[3].all())

    @property
    def weights(self) -> torch.Tensor:
        """Weight maps ``(I, H, W)`` (materialised on first access for factored weights)."""
        if self._factors is not None:
            if self._dense_weights is None:
                rows, core, cols = self._factors
                self._dense_weights = torch.einsum("ph,ipq,qw->ihw", rows, core, cols)
            return self._dense_weights
        if self._margin == 0:
            return self._dense_weights
        if self._padded_weights is None:
            self._padded_weights = _edge_pad(self._dense_weights, self._margin)
        return self._padded_weights

    @property
    def is_factored(self) -> bool:
        """Whether the weights are stored as ``Rᵀ C_i S`` (PSF grids and their compressions)."""
        return self._rows is not None

    def __repr__(self) -> str:
        return (
            f"ProductConvolution(I={self.n_kernels}, kernel_shape={self.kernel_shape}, "
            f"image_shape={self.image_shape}, dtype={self.dtype}, strategy={self.strategy!r})"
        )

    # ------------------------------------------------------------------ supports and costs
    def _weight_supports(self) -> list[Box]:
        if self._rows is not None:
            row_start, row_stop = self._profile_spans(0)
            col_start, col_stop = self._profile_spans(1)
        else:
            nonzero = self._dense_weights != 0
            row_any, col_any = nonzero.any(dim=2), nonzero.any(dim=1)
            if self._margin:  # edge padding repeats the first and last rows and columns
                m = self._margin
                row_any = torch.cat([row_any[:, :1].expand(-1, m), row_any,
                                     row_any[:, -1:].expand(-1, m)], dim=1)
                col_any = torch.cat([col_any[:, :1].expand(-1, m), col_any,
                                     col_any[:, -1:].expand(-1, m)], dim=1)
            row_start, row_stop = _spans(row_any)
            col_start, col_stop = _spans(col_any)
        empty = (row_stop <= row_start) | (col_stop <= col_start)
        return [(0, 0, 0, 0) if e else (int(r0), int(r1), int(c0), int(c1))
                for r0, r1, c0, c1, e in zip(row_start.tolist(), row_stop.tolist(),
                                             col_start.tolist(), col_stop.tolist(),
                                             empty.tolist())]

    def _profile_spans(self, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Support span of every term's weight along rows (axis 0) or columns (axis 1)."""
        profiles = self._rows if axis == 0 else self._cols
        if self._all_single:  # one profile per term: its own span
            start, stop = _spans(profiles != 0)
            index = self._terms[axis].to(start.device)
            return start[index], stop[index]
        used = self._factors[1].abs().sum(dim=2 - axis) > 0  # (I, P) or (I, Q)
        return _term_spans(profiles, used)

    def _tile_fft_shape(self, box: Box) -> tuple[int, int]:
        h, w = self.kernel_shape
        return fast_size(box[1] - box[0] + h - 1), fast_size(box[3] - box[2] + w - 1)

    def _tiles_are_cheaper(self) -> bool:
        fourier_sum = (self.n_kernels + 1) * self.fft_shape[0] * self.fft_shape[1]
        tiles = sum(
            2 * n1 * n2
            for box, (n1, n2) in zip(self._supports, self._tile_shapes)
            if box[1] > box[0]
        )
        return tiles < 0.8 * fourier_sum

    # ------------------------------------------------------------------ cached casts
    def _cached(self, key: str, dtype: torch.dtype, device: torch.device, build):
        cache_key = (key, dtype, str(device))
        if cache_key not in self._cache:
            self._cache[cache_key] = build()
        return self._cache[cache_key]

    def _factors_as(self, dtype, device) -> tuple:
        """``(rows, core, cols)`` in ``dtype`` on ``device``; core None for single entries."""
        return self._cached("factors", dtype, device, lambda: tuple(
            None if t is None else t.to(device=device, dtype=dtype)
            for t in (self._rows, None if self._all_single else self._factors[1], self._cols)
        ))

    def _kernels_as(self, dtype, device) -> torch.Tensor:
        return self._cached(
            "kernels", dtype, device, lambda: self.kernels.to(device=device, dtype=dtype)
        )

    def _weight(self, i: int, box: Box, dtype, device) -> torch.Tensor:
        r0, r1, c0, c1 = box
        if self._rows is not None:
            rows, core, cols = self._factors_as(dtype, device)
            p, q, value, single = self._terms
            if bool(single[i]):
                p, q = int(p[i]), int(q[i])
                return (float(value[i]) * rows[p, r0:r1])[:, None] * cols[q, None, c0:c1]
            return rows[:, r0:r1].T @ (core[i] @ cols[:, c0:c1])
        dense = self._cached(
            "weights", dtype, device, lambda: self._dense_weights.to(device=device, dtype=dtype)
        )
        if self._margin:
            height, width = self.image_shape
            size = self.n_kernels * height * width * dense.element_size()
            if size <= _PADDED_CACHE_BYTES:  # small: pad once and keep
                padded = self._cached(
                    "padded", dtype, device, lambda: _edge_pad(dense, self._margin)
                )
                return padded[i, r0:r1, c0:c1]
            return _edge_pad(dense[i], self._margin)[r0:r1, c0:c1]  # large: pad per use
        return dense[i, r0:r1, c0:c1]

    def _full_spectra(self, dtype, device) -> torch.Tensor:
        if self.kernels.requires_grad:
            return centred_spectra(self.kernels.to(device=device, dtype=dtype), self.fft_shape)
        return self._cached(
            "spectra",
            dtype,
            device,
            lambda: centred_spectra(self._kernels_as(dtype, device), self.fft_shape),
        )

    # ------------------------------------------------------------------ forward / adjoint
    def forward(self, x: Any) -> torch.Tensor:
        """Blur ``x`` of shape ``(..., H, W)``: ``Σ_i k_i ⋆ (w_i · x)``, same shape out."""
        x = _as_image(x, "x", self.image_shape)
        flat = x.reshape((-1,) + self.image_shape)
        if self.strategy == "tiles":
            out = self._forward_tiles(flat)
        elif torch.is_grad_enabled() and (flat.requires_grad or self._needs_grad()):
            out = self._forward_fourier_differentiable(flat)
        else:
            out = self._forward_fourier(flat)
        return out.reshape(x.shape)

    def adjoint(self, y: Any) -> torch.Tensor:
        """Adjoint ``H* y = Σ_i w_i · (k̃_i ⋆ y)`` (``k̃`` the flipped kernel), same shape out."""
        y = _as_image(y, "y", self.image_shape)
        flat = y.reshape((-1,) + self.image_shape)
        if self.strategy == "tiles":
            out = self._adjoint_tiles(flat)
        else:
            out = self._adjoint_fourier(flat)
        return out.reshape(y.shape)

    def _needs_grad(self) -> bool:
        tensors = [self.kernels, self._dense_weights, self._rows, self._core, self._cols]
        return any(t is not None and t.requires_grad for t in tensors)

    def _forward_fourier(self, x: torch.Tensor) -> torch.Tensor:
        height, width = self.image_shape
        spectra = self._full_spectra(x.dtype, x.device)
        # one zero-padded buffer reused for every term and call: only its H x W corner changes
        shape = (x.shape[0],) + tuple(self.fft_shape)
        buffer = self._cache.get("buffer")
        if buffer is None or buffer.shape != shape or buffer.dtype != x.dtype or (
            buffer.device != x.device
        ):
            buffer = self._cache["buffer"] = x.new_zeros(shape)
        full = (0, height, 0, width)
        total = None
        for i in range(self.n_kernels):
            torch.mul(x, self._weight(i, full, x.dtype, x.device), out=buffer[:, :height, :width])
            term = torch.fft.rfft2(buffer)
            if total is None:
                total = term.mul_(spectra[i])
            else:
                total.addcmul_(term, spectra[i])
        return torch.fft.irfft2(total, s=self.fft_shape)[:, :height, :width]

    def _forward_fourier_differentiable(self, x: torch.Tensor) -> torch.Tensor:
        height, width = self.image_shape
        spectra = self._full_spectra(x.dtype, x.device)
        weights = self.weights.to(device=x.device, dtype=x.dtype)
        terms = torch.fft.rfft2(weights[None] * x[:, None], s=self.fft_shape)
        total = (terms * spectra[None]).sum(dim=1)
        return torch.fft.irfft2(total, s=self.fft_shape)[:, :height, :width]

    def _adjoint_fourier(self, y: torch.Tensor) -> torch.Tensor:
        height, width = self.image_shape
        spectra = self._full_spectra(y.dtype, y.device)
        y_spectrum = torch.fft.rfft2(y, s=self.fft_shape)
        full = (0, height, 0, width)
        differentiable = torch.is_grad_enabled() and (y.requires_grad or self._needs_grad())
        product = None if differentiable else torch.empty_like(y_spectrum)
        out = None
        for i in range(self.n_kernels):
            weight = self._weight(i, full, y.dtype, y.device)
            if differentiable:
                correlated = torch.fft.irfft2(y_spectrum * spectra[i].conj(), s=self.fft_shape)
                term = correlated[:, :height, :width] * weight
                out = term if out is None else out + term
                continue
            torch.mul(y_spectrum, spectra[i].conj(), out=product)
            correlated = torch.fft.irfft2(product, s=self.fft_shape)[:, :height, :width]
            if out is None:
                out = correlated.mul(weight)
            else:
                out.addcmul_(correlated, weight)
        return out

    def _tile_groups(self) -> list[tuple[torch.Tensor, tuple[int, int], tuple[int, int]]]:
        """Tiles grouped by box size: ``(indices, (bh, bw), fft_shape)``; one FFT call per
        batch of each group."""
        if "groups" not in self._cache:
            groups: dict[tuple[int, int], list[int]] = {}
            for i, (r0, r1, c0, c1) in enumerate(self._supports):
                if r1 > r0:
                    groups.setdefault((r1 - r0, c1 - c0), []).append(i)
            self._cache["groups"] = [
                (torch.tensor(indices), size, self._tile_shapes[indices[0]])
                for size, indices in groups.items()
            ]
        return self._cache["groups"]

    def _tile_batches(self):
        """``(indices, (bh, bw), fft_shape, key)`` per batch of same-size tiles, about
        ``_TILE_CHUNK_ELEMENTS`` samples per image and FFT call; ``key`` names the batch."""
        for group, (indices, size, shape) in enumerate(self._tile_groups()):
            per_batch = max(1, _TILE_CHUNK_ELEMENTS // (shape[0] * shape[1]))
            for start in range(0, len(indices), per_batch):
                yield indices[start : start + per_batch], size, shape, (group, start, per_batch)

    def _tile_samples(self) -> tuple[int, int]:
        """Values held by all the tiles' spectra (complex) and weights (real), for the cache
        budgets; counted once per operator."""
        if "tile_samples" not in self._cache:
            groups = self._tile_groups()
            self._cache["tile_samples"] = (
                sum(len(idx) * s[0] * (s[1] // 2 + 1) for idx, _, s in groups),
                sum(len(idx) * bh * bw for idx, (bh, bw), _ in groups),
            )
        return self._cache["tile_samples"]

    def _batch_spectra(self, key, indices, shape, dtype, device) -> torch.Tensor:
        """Corner spectra of the kernels of one batch (cached for the whole group when small)."""
        group, start, per_batch = key
        if self.kernels.requires_grad:
            return corner_spectra(self.kernels[indices].to(device=device, dtype=dtype), shape)
        if self._tile_samples()[0] * 2 * torch.finfo(dtype).bits // 8 > _SPECTRA_CACHE_BYTES:
            return corner_spectra(self._kernels_as(dtype, device)[indices], shape)
        spectra = self._cached(
            "group_spectra", dtype, device,
            lambda: [corner_spectra(self._kernels_as(dtype, device)[idx], s)
                     for idx, _, s in self._tile_groups()],
        )
        return spectra[group][start : start + per_batch]

    def _batch_weights(self, indices: torch.Tensor, boxes: list[Box], dtype,
                       device) -> torch.Tensor:
        """Weights ``(n, bh, bw)`` of a batch of same-size tiles on their ``boxes``."""
        if not self._all_single:
            return torch.stack([self._weight(i, box, dtype, device)
                                for i, box in zip(indices.tolist(), boxes, strict=True)])
        rows, _, cols = self._factors_as(dtype, device)
        p, q, value, _ = self._terms
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
            boxes = [self._supports[i] for i in indices.tolist()]
            corners = [(r0, c0) for r0, _, c0, _ in boxes]
            return self._batch_weights(indices, boxes, dtype, device), corners

        weight_bytes = self._tile_samples()[1] * torch.finfo(dtype).bits // 8
        if self._needs_grad() or weight_bytes > _PLAN_CACHE_BYTES:
            return build()
        return self._cached(("plan", key), dtype, device, build)

    def _forward_tiles(self, x: torch.Tensor) -> torch.Tensor:
        # Each term is convolved on its weight's bounding box only ("full" linear convolution,
        # kernel at the FFT origin) and added back at an offset; a margin of one kernel size
        # around the output absorbs the parts that fall outside the field.
        height, width = self.image_shape
        kh, kw = self.kernel_shape
        out = x.new_zeros((x.shape[0], height + 2 * kh, width + 2 * kw))
        for indices, (bh, bw), shape, key in self._tile_batches():
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

    def _adjoint_tiles(self, y: torch.Tensor) -> torch.Tensor:
        height, width = self.image_shape
        kh, kw = self.kernel_shape
        padded = torch.nn.functional.pad(y, (kw, kw, kh, kh))
        out = y.new_zeros(y.shape)
        for indices, (bh, bw), shape, key in self._tile_batches():
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

    # ------------------------------------------------------------------ local PSFs
    def psf_at(self, row: int, col: int) -> torch.Tensor:
        """Local PSF ``Σ_i w_i(row, col) k_i`` emitted by a point source at pixel (row, col)."""
        height, width = self.image_shape
        if not (0 <= int(row) < height and 0 <= int(col) < width):
            raise ValueError(f"(row, col) = ({row}, {col}) is outside the image {height}x{width}")
        if self._all_single:
            p, q, value, _ = self._terms
            coefficients = value * self._rows[p, int(row)] * self._cols[q, int(col)]
        elif self._rows is not None:
            rows, core, cols = self._factors
            coefficients = torch.einsum("p,ipq,q->i", rows[:, int(row)], core, cols[:, int(col)])
        else:
            base_height, base_width = self._dense_weights.shape[1:]
            r = min(max(int(row) - self._margin, 0), base_height - 1)
            c = min(max(int(col) - self._margin, 0), base_width - 1)
            coefficients = self._dense_weights[:, r, c]
        return torch.einsum("i,ihw->hw", coefficients, self.kernels)

    # ------------------------------------------------------------------ conversions
    def to(self, dtype: torch.dtype | None = None, device: Any = None) -> ProductConvolution:
        """A copy with tensors in ``dtype`` on ``device``."""
        dtype = dtype or self.dtype
        device = device or self.device
        if self._rows is not None:
            rows, core, cols = (None if t is None else t.to(device=device, dtype=dtype)
                                for t in (self._rows, self._core, self._cols))
            terms = self._terms
            if terms is not None:
                p, q, value, single = terms
                terms = (p.to(device), q.to(device), value.to(device=device, dtype=dtype),
                         single.to(device))
            other = ProductConvolution._factored(
                self.kernels.to(device=device, dtype=dtype), rows, core, cols, self.metadata,
                terms,
            )
        else:
            other = ProductConvolution(
                self.kernels.to(device=device, dtype=dtype),
                self._dense_weights.to(device=device, dtype=dtype),
                self.metadata,
            )
            if self._margin:
                other = other._with_margin(self._margin, self.metadata)
        other.compression_error = self.compression_error
        return other

    def extended(self, margin: int) -> ProductConvolution:
        """The operator on the image padded by ``margin`` pixels on every side.

        Weights are extended by replicating their edge values, so a source just outside the
        field is blurred by the PSF of the nearest field point.
        """
        margin = int(margin)
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if margin == 0:
            return self
        metadata = {**self.metadata, "extended_margin": margin}
        if self._rows is not None:
            rows = torch.nn.functional.pad(self._rows[:, None], (margin, margin), mode="replicate")
            cols = torch.nn.functional.pad(self._cols[:, None], (margin, margin), mode="replicate")
            extended = ProductConvolution._factored(
                self.kernels, rows[:, 0], self._core, cols[:, 0], metadata, self._terms
            )
            extended.compression_error = self.compression_error
            return extended
        return self._with_margin(self._margin + margin, metadata)

    def _with_margin(self, margin: int, metadata: Mapping[str, Any]) -> ProductConvolution:
        """The same dense weights seen through a wider edge padding (no copy)."""
        operator = ProductConvolution.__new__(ProductConvolution)
        operator._setup(self.kernels, self._dense_weights, None, metadata, margin=margin)
        operator.compression_error = self.compression_error
        return operator

    def compress(self, rank: int | None = None, energy: float | None = None) -> ProductConvolution:
        """Equivalent operator with fewer kernels (optimal low-rank PSF field).

        See :func:`psfmap.operators.compression.compress`; the returned operator carries
        ``compression_error`` = ‖M − M_r‖_F / ‖M‖_F of the PSF field ``M = Σ_i k_i w_iᵀ``.
        """
        from psfmap.operators.compression import compress

        return compress(self, rank=rank, energy=energy)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write the operator to one self-describing ``.psfmap`` file (atomic)."""
        meta = {**self.metadata, **dict(metadata or {})}
        meta["image_shape"] = list(self.image_shape)
        meta["compression_error"] = self.compression_error
        arrays = {"kernels": self.kernels.detach().cpu().numpy()}
        if self._all_single:  # a PSF grid: its entries, not a (cells x gy x gx) core
            meta["weights"] = "factored-entries"
            p, q, value, _ = self._terms
            for name, tensor in (("rows", self._rows), ("cols", self._cols), ("entry_rows", p),
                                 ("entry_cols", q), ("entry_values", value)):
                arrays[name] = tensor.detach().cpu().numpy()
        elif self._rows is not None:
            meta["weights"] = "factored"
            for name, tensor in zip(("rows", "core", "cols"), self._factors):
                arrays[name] = tensor.detach().cpu().numpy()
        else:
            meta["weights"] = "dense"
            arrays["weights"] = self.weights.detach().cpu().numpy()
        return save_container(path, "product_convolution", arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProductConvolution:
        """Read an operator written by :meth:`save`."""
        _, arrays, meta = load_container(path, "product_convolution")
        return _product_convolution_from_arrays(arrays, meta, path)


def _single_entries(core: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(p, q, value, single)`` per term: whether its core ``(P, Q)`` has exactly one
    non-zero entry, and which (the first non-zero one otherwise, unused)."""
    flat = core.detach().reshape(core.shape[0], -1)
    nonzero = flat != 0
    first = nonzero.to(torch.uint8).argmax(dim=1)
    value = flat.gather(1, first[:, None])[:, 0]
    columns = core.shape[2]
    return first // columns, first % columns, value, nonzero.sum(dim=1) == 1


def _spans(nonzero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and one-past-last True of each row of ``(n, L)`` (start ≥ stop when none)."""
    length = nonzero.shape[1]
    as_int = nonzero.to(torch.uint8)
    start = torch.where(nonzero.any(dim=1), as_int.argmax(dim=1), length)
    stop = length - as_int.flip(1).argmax(dim=1)
    return start, torch.where(nonzero.any(dim=1), stop, 0)


def _term_spans(profiles: torch.Tensor, used: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Span of ``Σ_p used[i, p] · profile_p``'s support for each term (union of the spans)."""
    start, stop = _spans(profiles != 0)
    length = profiles.shape[1]
    term_start = torch.where(used, start[None], length).min(dim=1).values
    term_stop = torch.where(used, stop[None], 0).max(dim=1).values
    return term_start, term_stop


def _edge_pad(weights: torch.Tensor, margin: int) -> torch.Tensor:
    """Replicate the edge values of ``(..., H, W)`` maps ``margin`` pixels outwards."""
    lead = weights.shape[:-2]
    flat = weights.reshape((-1, 1) + tuple(weights.shape[-2:]))
    padded = torch.nn.functional.pad(flat, (margin,) * 4, mode="replicate")
    return padded.reshape(lead + tuple(padded.shape[-2:]))


def _product_convolution_from_arrays(arrays, meta, path) -> ProductConvolution:
    try:
        kernels = torch.from_numpy(arrays["kernels"])
        if meta.get("weights") == "factored":
            operator = ProductConvolution.from_factors(
                kernels, *(torch.from_numpy(arrays[name]) for name in ("rows", "core", "cols")),
                meta,
            )
        elif meta.get("weights") == "factored-entries":
            operator = _from_entries(kernels, arrays, meta, path)
        else:
            operator = ProductConvolution(kernels, torch.from_numpy(arrays["weights"]), meta)
    except KeyError as missing:
        raise ValueError(f"{str(path)!r} is missing the array {missing}") from None
    operator.compression_error = meta.get("compression_error")
    for key in ("compression_error", "weights", "image_shape"):
        operator.metadata.pop(key, None)
    return operator


def _from_entries(kernels, arrays, meta, path) -> ProductConvolution:
    """A factored operator whose every term is one entry ``(p, q, value)`` of its core."""
    rows = torch.from_numpy(arrays["rows"]).to(kernels.dtype)
    cols = torch.from_numpy(arrays["cols"]).to(kernels.dtype)
    p, q = (torch.from_numpy(arrays[name]).long() for name in ("entry_rows", "entry_cols"))
    value = torch.from_numpy(arrays["entry_values"]).to(kernels.dtype)
    n = kernels.shape[0]
    if not (kernels.ndim == 3 and rows.ndim == 2 and cols.ndim == 2
            and p.shape == q.shape == value.shape == (n,)
            and bool(((p >= 0) & (p < rows.shape[0]) & (q >= 0) & (q < cols.shape[0])).all())
            and all(bool(torch.isfinite(t).all()) for t in (kernels, rows, cols, value))):
        raise ValueError(f"{str(path)!r} holds inconsistent or non-finite grid weights")
    return ProductConvolution._factored(
        kernels, rows, None, cols, meta, (p, q, value, torch.ones(n, dtype=torch.bool)))


class Convolution(LinearOperator):
    """Space-invariant blur by one PSF, for images of any size (zero boundary, same size).

    Parameters
    ----------
    psf : array or tensor, shape (h, w)
        Non-negative PSF centred at ``(h // 2, w // 2)`` (used as given, not re-normalised).
    """

    image_shape = None

    def __init__(self, psf: Any, metadata: Mapping[str, Any] | None = None):
        psf = as_tensor(psf, "psf")
        check_ndim(psf, "psf", 2, "(h, w)")
        self.psf = check_psf(psf, "psf")
        self.kernel_shape = (int(psf.shape[0]), int(psf.shape[1]))
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.compression_error = 0.0
        self._cache: dict[Any, torch.Tensor] = {}

    @property
    def kernels(self) -> torch.Tensor:
        return self.psf[None]

    @property
    def n_kernels(self) -> int:
        return 1

    @property
    def dtype(self) -> torch.dtype:
        return self.psf.dtype

    def __repr__(self) -> str:
        return f"Convolution(kernel_shape={self.kernel_shape}, dtype={self.dtype})"

    def _spectrum(self, image_shape, dtype, device) -> tuple[torch.Tensor, tuple[int, int]]:
        fft_shape = same_fft_shape(image_shape, self.kernel_shape)
        key = (fft_shape, dtype, str(device))
        if self.psf.requires_grad:
            return centred_spectra(self.psf.to(device=device, dtype=dtype), fft_shape), fft_shape
        if key not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[key] = centred_spectra(self.psf.to(device=device, dtype=dtype), fft_shape)
        return self._cache[key], fft_shape

    def _apply(self, x: Any, name: str, conjugate: bool) -> torch.Tensor:
        x = _as_image(x, name, None)
        shape = tuple(x.shape[-2:])
        spectrum, fft_shape = self._spectrum(shape, x.dtype, x.device)
        if conjugate:
            spectrum = spectrum.conj()
        out = torch.fft.irfft2(torch.fft.rfft2(x, s=fft_shape) * spectrum, s=fft_shape)
        return out[..., : shape[0], : shape[1]]

    def forward(self, x: Any) -> torch.Tensor:
        """``psf ⋆ x`` on ``(..., H, W)``."""
        return self._apply(x, "x", conjugate=False)

    def adjoint(self, y: Any) -> torch.Tensor:
        """Correlation with the PSF (convolution with the flipped PSF)."""
        return self._apply(y, "y", conjugate=True)

    def psf_at(self, row: int, col: int) -> torch.Tensor:
        """The PSF, the same at every pixel."""
        return self.psf

    def extended(self, margin: int) -> Convolution:
        """Itself: a convolution acts on images of any size."""
        return self

    def compress(self, rank: int | None = None, energy: float | None = None) -> Convolution:
        """Itself (one kernel is already the lowest rank), after the checks of
        :func:`psfmap.operators.compress`."""
        from psfmap.operators.compression import compress

        return compress(self, rank, energy)

    def to(self, dtype: torch.dtype | None = None, device: Any = None) -> Convolution:
        """A copy with the PSF in ``dtype`` on ``device`` (each kept when omitted)."""
        return Convolution(
            self.psf.to(device=device or self.psf.device, dtype=dtype or self.dtype), self.metadata
        )

    def save(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write the PSF and metadata to one ``.psfmap`` file (atomic); return the path."""
        meta = {**self.metadata, **dict(metadata or {})}
        return save_container(path, "convolution", {"psf": self.psf.detach().cpu().numpy()}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Convolution:
        """Read a file written by :meth:`save` (``ValueError`` for another kind of file)."""
        _, arrays, meta = load_container(path, "convolution")
        if "psf" not in arrays:
            raise ValueError(f"{str(path)!r} is missing the array 'psf'")
        return cls(torch.from_numpy(arrays["psf"]), meta)


def load(path: str | os.PathLike) -> ProductConvolution | Convolution:
    """Load whichever operator a ``.psfmap`` file holds (product convolution or convolution)."""
    kind, arrays, meta = load_container(path, ("product_convolution", "convolution"))
    if kind == "convolution":
        return Convolution.load(path)
    return _product_convolution_from_arrays(arrays, meta, path)
