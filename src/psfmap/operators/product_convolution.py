"""Product-convolution operators ``H f = Σ_i k_i ⋆ (w_i · f)``: the representation.

The local PSF emitted from pixel ``y`` is ``Σ_i w_i(y) k_i``. Convolutions are linear (zero
outside the field) and return the input's size, with kernels centred at ``(h // 2, w // 2)``.

This module holds what the operator *is*: its kernels, its weights (dense ``(I, H, W)`` maps,
or factored ``w_i = Rᵀ C_i S`` for PSF grids and their compressions), local PSFs, dtype/device
moves, the extended domain, compression and files. How it is *evaluated* lives beside it:

* :mod:`psfmap.operators.fourier_sum` — sum in Fourier space with cached kernel spectra
  (``I + 1`` FFTs of the padded image per call, any weights);
* :mod:`psfmap.operators.tiled` — each term on its weight's support only (compact weights);
* :mod:`psfmap.operators.cost` — which of the two is cheaper for this operator on this
  machine class (measured, see ``benchmarks/bench_engine_choice.py``). ``engine=`` or
  :meth:`ProductConvolution.with_engine` overrides it; both give the same result.

References
----------
Nagy & O'Leary, "Restoring images degraded by spatially variant blur", SIAM J. Sci. Comput. 1998.
Denis, Thiébaut, Soulez, Becker, Mourya, "Fast approximations of shift-variant blur", IJCV 2015.
Debarnot, Escande, Mangeat, Weiss, "Learning low-dimensional models of microscopes", IEEE TCI 2021.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from psfmap._container import load_container, save_container
from psfmap._validation import as_tensor, check_finite, check_ndim
from psfmap.operators.base import LinearOperator, as_image
from psfmap.operators.compression import low_rank
from psfmap.operators.convolution import Convolution, _ndim
from psfmap.operators.cost import ENGINES, choose_engine
from psfmap.operators.fft import same_fft_shape
from psfmap.operators.fourier_sum import FourierSumEngine
from psfmap.operators.tiled import TiledEngine
from psfmap.operators.weight_support import edge_pad, single_entries, spans, term_spans

__all__ = ["Convolution", "ProductConvolution", "load"]

Box = tuple[int, int, int, int]  # row start, row stop, column start, column stop

# edge-padded weights of an extended operator are kept when they fit in this many bytes;
# larger fields (e.g. 4096² with 8 terms) are padded term by term at each use instead
_PADDED_CACHE_BYTES = 256 * 2**20
# the names `strategy` (deprecated) used for the engines
_LEGACY_NAMES = {"tiles": "tiled", "fourier-sum": "fourier"}


def _check_engine(engine: Any) -> str | None:
    if engine is None or engine in ENGINES:
        return engine
    raise ValueError(f"engine must be one of {sorted(ENGINES)} or None (chosen by cost), "
                     f"got {engine!r}")


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
    engine : {"tiled", "fourier"} or None
        How to evaluate it. None (default): the cheaper one for this operator, from the cost
        model of :mod:`psfmap.operators.cost`; both give the same result to rounding. An
        override for experts and benchmarks; :meth:`with_engine` gives a copy with another.

    Attributes
    ----------
    kernels : Tensor (I, h, w)
    weights : Tensor (I, H, W)
        Materialised on first access for factored weights.
    image_shape, kernel_shape : (int, int)
    metadata : dict
    compression_error : float or None
        ‖M − M_r‖_F / ‖M‖_F of the PSF field when the operator is a compression.

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

    def __new__(cls, *args: Any, **kwargs: Any):
        # kernels (I, d, h, w) give the volume operator (psfmap.operators.volume)
        kernels = args[0] if args else kwargs.get("kernels")
        if cls is ProductConvolution and kernels is not None and _ndim(kernels) == 4:
            from psfmap.operators.volume import VolumeProductConvolution

            return VolumeProductConvolution(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, kernels: Any, weights: Any, metadata: Mapping[str, Any] | None = None,
                 *, engine: str | None = None):
        engine = _check_engine(engine)
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
        self._engine_override = engine

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
            terms = single_entries(core)
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
        if any(k > n for k, n in zip(self.kernel_shape, self.fft_shape)):
            # a kernel wider than the padded FFT grid cannot be placed on it (about 2H + 1 px)
            raise ValueError(
                f"kernels of {self.kernel_shape} px are more than twice the image "
                f"{height}x{width}; crop the PSFs to at most about twice the image's side"
            )
        self._supports: list[Box] | None = None
        self._engine_override: str | None = None
        self._auto_engine: str | None = None
        self._engines: dict[str, Any] = {}
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
            self._padded_weights = edge_pad(self._dense_weights, self._margin)
        return self._padded_weights

    @property
    def is_factored(self) -> bool:
        """Whether the weights are stored as ``Rᵀ C_i S`` (PSF grids and their compressions)."""
        return self._rows is not None

    def __repr__(self) -> str:
        return (
            f"ProductConvolution(I={self.n_kernels}, kernel_shape={self.kernel_shape}, "
            f"image_shape={self.image_shape}, dtype={self.dtype}, engine={self.engine!r})"
        )

    # ------------------------------------------------------------------ supports and costs
    @property
    def supports(self) -> list[Box]:
        """Bounding box ``(r0, r1, c0, c1)`` of every weight's support (``(0, 0, 0, 0)`` for a
        weight that is zero everywhere); computed once."""
        if self._supports is None:
            self._supports = self._weight_supports()
        return self._supports

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
            row_start, row_stop = spans(row_any)
            col_start, col_stop = spans(col_any)
        empty = (row_stop <= row_start) | (col_stop <= col_start)
        return [(0, 0, 0, 0) if e else (int(r0), int(r1), int(c0), int(c1))
                for r0, r1, c0, c1, e in zip(row_start.tolist(), row_stop.tolist(),
                                             col_start.tolist(), col_stop.tolist(),
                                             empty.tolist())]

    def _profile_spans(self, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Support span of every term's weight along rows (axis 0) or columns (axis 1)."""
        profiles = self._rows if axis == 0 else self._cols
        if self._all_single:  # one profile per term: its own span
            start, stop = spans(profiles != 0)
            index = self._terms[axis].to(start.device)
            return start[index], stop[index]
        used = self._factors[1].abs().sum(dim=2 - axis) > 0  # (I, P) or (I, Q)
        return term_spans(profiles, used)

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

    def _factored_weight(self, i: int, box: Box, dtype, device) -> torch.Tensor:
        """Weight ``i`` on ``box`` from the factored storage ``w_i = Rᵀ C_i S``."""
        r0, r1, c0, c1 = box
        rows, core, cols = self._factors_as(dtype, device)
        p, q, value, single = self._terms
        if bool(single[i]):
            p, q = int(p[i]), int(q[i])
            return (float(value[i]) * rows[p, r0:r1])[:, None] * cols[q, None, c0:c1]
        return rows[:, r0:r1].T @ (core[i] @ cols[:, c0:c1])

    def _weight(self, i: int, box: Box, dtype, device) -> torch.Tensor:
        r0, r1, c0, c1 = box
        if self._rows is not None:
            full = (r0, c0) == (0, 0) and (r1, c1) == tuple(self.image_shape)
            size = self.n_kernels * (r1 - r0) * (c1 - c0) * torch.finfo(dtype).bits // 8
            if full and size <= _PADDED_CACHE_BYTES:  # the Fourier engine's whole-field terms
                return self._cached("full-weights", dtype, device, lambda: torch.stack(
                    [self._factored_weight(k, box, dtype, device)
                     for k in range(self.n_kernels)]))[i]
            return self._factored_weight(i, box, dtype, device)
        dense = self._cached(
            "weights", dtype, device, lambda: self._dense_weights.to(device=device, dtype=dtype)
        )
        if self._margin:
            height, width = self.image_shape
            size = self.n_kernels * height * width * dense.element_size()
            if size <= _PADDED_CACHE_BYTES:  # small: pad once and keep
                padded = self._cached(
                    "padded", dtype, device, lambda: edge_pad(dense, self._margin)
                )
                return padded[i, r0:r1, c0:c1]
            return edge_pad(dense[i], self._margin)[r0:r1, c0:c1]  # large: pad per use
        return dense[i, r0:r1, c0:c1]

    # ------------------------------------------------------------------ engines
    @property
    def fft_shape(self) -> tuple[int, int]:
        """Padded FFT shape of the whole field for a linear (not circular) convolution."""
        return same_fft_shape(self.image_shape, self.kernel_shape)

    @property
    def engine(self) -> str:
        """The evaluation engine in use: ``"tiled"`` or ``"fourier"`` (see
        :func:`psfmap.operators.cost.choose_engine`; fixed by ``engine=``/:meth:`with_engine`)."""
        if self._engine_override is not None:
            return self._engine_override
        if self._auto_engine is None:
            self._auto_engine = choose_engine(self)
        return self._auto_engine

    def with_engine(self, engine: str | None) -> ProductConvolution:
        """The same operator (sharing its tensors and caches) evaluated by ``engine``:
        ``"tiled"``, ``"fourier"``, or None for the choice by cost."""
        other = copy.copy(self)
        other._engine_override = _check_engine(engine)
        return other

    @property
    def strategy(self) -> str:
        """Deprecated name of :attr:`engine` (``"tiles"`` or ``"fourier-sum"``)."""
        return {"tiled": "tiles", "fourier": "fourier-sum"}[self.engine]

    @strategy.setter
    def strategy(self, value: str) -> None:
        warnings.warn("ProductConvolution.strategy is deprecated: pass engine= or use "
                      "with_engine()", DeprecationWarning, stacklevel=2)
        self._engine_override = _check_engine(_LEGACY_NAMES.get(value, value))

    def _evaluator(self) -> Any:
        name = self.engine
        if name not in self._engines:
            self._engines[name] = (TiledEngine if name == "tiled" else FourierSumEngine)(self)
        return self._engines[name]

    def forward(self, x: Any) -> torch.Tensor:
        """Blur ``x`` of shape ``(..., H, W)``: ``Σ_i k_i ⋆ (w_i · x)``, same shape out."""
        x = as_image(x, "x", self.image_shape)
        out = self._evaluator().forward(x.reshape((-1,) + self.image_shape))
        return out.reshape(x.shape)

    def adjoint(self, y: Any) -> torch.Tensor:
        """Adjoint ``H* y = Σ_i w_i · (k̃_i ⋆ y)`` (``k̃`` the flipped kernel), same shape out."""
        y = as_image(y, "y", self.image_shape)
        out = self._evaluator().adjoint(y.reshape((-1,) + self.image_shape))
        return out.reshape(y.shape)

    def _needs_grad(self) -> bool:
        tensors = [self.kernels, self._dense_weights, self._rows, self._core, self._cols]
        return any(t is not None and t.requires_grad for t in tensors)

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
        other._engine_override = self._engine_override
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
        return low_rank(self, rank=rank, energy=energy)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write the operator to one self-describing ``.psfmap`` file (atomic)."""
        meta = {**self.metadata, **dict(metadata or {})}
        meta["image_shape"] = list(self.image_shape)
        meta["compression_error"] = self.compression_error
        if self._engine_override is not None:  # an expert's choice travels with the file
            meta["engine"] = self._engine_override
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


def _product_convolution_from_arrays(arrays, meta, path) -> ProductConvolution:
    if getattr(arrays.get("kernels"), "ndim", 3) == 4:  # a volume operator
        from psfmap.operators.volume import volume_from_arrays

        return volume_from_arrays(arrays, meta, path)
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
        if meta.get("engine") in ENGINES:
            operator._engine_override = meta["engine"]
    except KeyError as missing:
        raise ValueError(f"{str(path)!r} is missing the array {missing}") from None
    operator.compression_error = meta.get("compression_error")
    for key in ("compression_error", "weights", "image_shape", "engine"):
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


def load(path: str | os.PathLike) -> ProductConvolution | Convolution:
    """Load whichever operator a ``.psfmap`` file holds (product convolution or convolution)."""
    kind, arrays, meta = load_container(path, ("product_convolution", "convolution"))
    if kind == "convolution":
        return Convolution.load(path)
    return _product_convolution_from_arrays(arrays, meta, path)
