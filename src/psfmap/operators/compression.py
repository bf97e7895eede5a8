"""Low-rank compression of a product-convolution operator.

The operator is the PSF field ``M = Σ_i k_i w_iᵀ`` (``hw × HW``): column ``y`` is the local PSF
at pixel ``y``. Its best rank-``r`` approximation in Frobenius norm (Eckart–Young) gives new
kernels (eigen-PSFs) and weights (their coefficient maps) with ``r ≤ I`` terms. It is computed
exactly from two ``I × I`` Gram matrices, never forming ``M``:

    G_k = K Kᵀ = E_k Λ_k E_kᵀ,   G_w = W Wᵀ = E_w Λ_w E_wᵀ,   C = Λ_k^½ E_kᵀ E_w Λ_w^½ = U S Vᵀ
    kernels_r = U_rᵀ Λ_k^-½ E_kᵀ K,   weights_r = S_r V_rᵀ Λ_w^-½ E_wᵀ W

with the relative error ``‖M − M_r‖_F / ‖M‖_F = (Σ_{k>r} s_k² / Σ_k s_k²)^½``.

In practice the kernels' factors come from the smaller of ``K Kᵀ`` and ``Kᵀ K`` (``hw × hw``:
a 127 × 127 PSF grid has 16,129 kernels of 33² pixels), and the weights enter only through
``V_kᵀ G_w V_k`` (``ρ × ρ``, ``ρ ≤ min(I, hw)``, ``V_k = E_k``) instead of an ``I × I``
eigendecomposition; for a PSF grid ``G_w`` is sparse (a cell's weights overlap only its
neighbours'). Both give the same ``C`` up to an orthogonal change of basis.

Reference: Debarnot, Escande, Mangeat, Weiss, "Learning low-dimensional models of microscopes",
IEEE TCI 2021 (eigen-PSF decomposition); Denis et al., IJCV 2015.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from psfmap._validation import check_int, describe
from psfmap.operators.base import LinearOperator

_PIXEL_CHUNK = 1 << 20
# directions sketched before an exact eigendecomposition is needed (see low_rank)
_SKETCH = 32


def _gram_factors(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sqrt(Λ), E)`` of a PSD Gram matrix, dropping numerically null directions."""
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    keep = eigenvalues > eigenvalues.max().clamp_min(0) * 1e-12
    return eigenvalues[keep].sqrt(), eigenvectors[:, keep]


def _kernel_factors(kernels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sqrt(Λ_k), E_k)`` of ``K Kᵀ`` for kernels ``K (I, hw)``, through ``Kᵀ K`` when
    ``I > hw`` (same non-zero eigenvalues; ``E_k = K U Λ^-½``)."""
    if kernels.shape[0] <= kernels.shape[1]:
        return _gram_factors(kernels @ kernels.T)
    root, vectors = _gram_factors(kernels.T @ kernels)
    return root, (kernels @ vectors) / root[None, :]


def _top_kernel_factors(kernels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sqrt(Λ), E)`` of ``K Kᵀ`` on the ``size`` leading directions of ``K``'s range, found
    by a seeded randomized range finder with two power iterations (Halko, Martinsson & Tropp,
    SIAM Review 2011): ``Q = orth((K Kᵀ)² K Ω)``, then the exact eigenpairs of ``(QᵀK)(QᵀK)ᵀ``.

    The seed is fixed, so a compression is reproducible and leaves torch's global generator
    alone."""
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(kernels.shape[1], size, generator=generator, dtype=kernels.dtype)
    basis = torch.linalg.qr(kernels @ probe).Q
    for _ in range(2):
        basis = torch.linalg.qr(kernels @ torch.linalg.qr(kernels.T @ basis).Q).Q
    projected = basis.T @ kernels  # (size, hw)
    root, vectors = _gram_factors(projected @ projected.T)
    return root, basis @ vectors


def _weights_gram_matrix(operator: Any) -> torch.Tensor:
    """``G_w`` (``I × I``, float64, CPU): sparse for a PSF grid, whose cells' weights overlap
    only their neighbours', dense otherwise."""
    entries = _grid_gram_entries(operator)
    if entries is None:
        return _weights_gram(operator).cpu()
    i, j, value = entries
    n = operator.n_kernels
    return torch.sparse_coo_tensor(torch.stack([i, j]), value, (n, n),
                                   check_invariants=True).coalesce()


def _times(gram: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    return torch.sparse.mm(gram, vectors) if gram.is_sparse else gram @ vectors


def _grid_gram_entries(operator: Any):
    """Non-zero entries ``(i, j, <w_i, w_j>)`` of ``G_w`` when every term is one distinct
    entry of the core, ``w_i = v_i r_p s_qᵀ``: ``<w_i, w_j> = v_i v_j G_r[p_i, p_j]
    G_s[q_i, q_j]`` is non-zero only for overlapping profiles. None otherwise."""
    if not operator._all_single:
        return None
    p, q, value, _ = (t.cpu() for t in operator._terms)
    rows, cols = operator._rows.double().cpu(), operator._cols.double().cpu()
    lookup = torch.full((rows.shape[0], cols.shape[0]), -1, dtype=torch.long)
    lookup[p, q] = torch.arange(len(p))
    if int((lookup >= 0).sum()) != len(p):  # two terms share an entry
        return None
    gram_rows, gram_cols = rows @ rows.T, cols @ cols.T
    a, b = torch.nonzero(gram_rows, as_tuple=True)
    c, d = torch.nonzero(gram_cols, as_tuple=True)
    i = lookup[a[:, None], c[None, :]].flatten()
    j = lookup[b[:, None], d[None, :]].flatten()
    product = (gram_rows[a, b][:, None] * gram_cols[c, d][None, :]).flatten()
    keep = (i >= 0) & (j >= 0)
    i, j = i[keep], j[keep]
    value = value.double()
    return i, j, product[keep] * value[i] * value[j]


def _weights_gram(operator: Any) -> torch.Tensor:
    if operator.is_factored:
        # <Rᵀ C_i S, Rᵀ C_j S> = Σ_pq C_i[p, q] (G_r C_j G_s)[p, q], G_r = R Rᵀ, G_s = S Sᵀ
        rows, core, cols = (t.double() for t in operator._factors)
        mixed = torch.einsum("ab,jbc,cd->jad", rows @ rows.T, core, cols @ cols.T)
        return torch.einsum("ipq,jpq->ij", core, mixed)
    flat = operator.weights.reshape(operator.n_kernels, -1)
    gram = flat.new_zeros(operator.n_kernels, operator.n_kernels, dtype=torch.float64)
    for start in range(0, flat.shape[1], _PIXEL_CHUNK):
        block = flat[:, start : start + _PIXEL_CHUNK].double()
        gram += block @ block.T
    return gram


def _combine_weights(operator: Any, mixing: torch.Tensor) -> torch.Tensor:
    """``mixing (r, I) @ W`` for dense weights, in row chunks (no float64 copy of W)."""
    height, width = operator.image_shape
    mixing = mixing.to(dtype=operator.dtype, device=operator.device)
    out = torch.empty(mixing.shape[0], height, width, dtype=operator.dtype,
                      device=operator.device)
    rows_per_chunk = max(1, _PIXEL_CHUNK // width)
    for start in range(0, height, rows_per_chunk):
        stop = min(height, start + rows_per_chunk)
        out[:, start:stop] = torch.einsum("ri,ihw->rhw", mixing, operator.weights[:, start:stop])
    return out


def _factors(gram_w: torch.Tensor, root_k: torch.Tensor,
             vectors_k: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(root_k, E_k, U, S, Vᵀ, root_w, E_w)`` of the core ``C`` (see the module's notes)
    from the kernels' factors ``(Λ_k^½, E_k)``, exact or restricted to leading directions."""
    # B = E_kᵀ W: its Gram E_kᵀ G_w E_k = E_b Λ_b E_bᵀ, and C = Λ_k^½ E_b Λ_b^½
    root_w, vectors_b = _gram_factors(vectors_k.T @ _times(gram_w, vectors_k))
    vectors_w = vectors_k @ vectors_b  # (I, ρ): E_k E_b, in place of E_w
    core = (root_k[:, None] * vectors_b) * root_w[None, :]
    left, singular, right_t = torch.linalg.svd(core)
    return root_k, vectors_k, left, singular, right_t, root_w, vectors_w


def _rank_for(singular: torch.Tensor, total: float, energy: float | None,
              rank: int | None) -> int:
    """Fewest leading terms holding ``energy`` of ``total`` (all when None), capped by ``rank``."""
    chosen = len(singular)
    if energy is not None and total > 0:
        cumulative = torch.cumsum(singular**2, 0) / total
        chosen = int(torch.searchsorted(cumulative, torch.tensor(float(energy) - 1e-12)) + 1)
    if rank is not None:
        chosen = min(chosen, rank)
    return max(1, min(chosen, len(singular)))


def check_compression(rank: Any, energy: Any) -> tuple[int | None, float | None]:
    """Check ``rank`` (int ≥ 1 or None) and ``energy`` (in (0, 1] or None)."""
    if rank is not None:
        rank = check_int(rank, "rank")
    if energy is not None:
        try:
            value = float(energy)
        except (TypeError, ValueError):
            raise ValueError(f"energy must be in (0, 1], got {energy!r}") from None
        if not (0 < value <= 1 and math.isfinite(value)):
            raise ValueError(f"energy must be in (0, 1], got {energy!r}")
        energy = value
    return rank, energy


def compress(operator: Any, rank: int | None = None, energy: float | None = None) -> Any:
    """Optimal rank-``r`` product convolution approximating ``operator``.

    Parameters
    ----------
    operator : ProductConvolution or Convolution
        The operator to compress (this calls its ``compress`` method).
    rank : int, optional
        Number of kernels to keep (1 ≤ rank).
    energy : float, optional
        Keep the fewest kernels whose squared singular values reach this fraction of the total
        (e.g. 0.999). When both are given the smaller rank wins; when neither is, 0.999.

    Returns
    -------
    ProductConvolution
        With ``compression_error`` set and ``metadata['compressed_from'] = I``; a
        ``Convolution`` (one kernel) is returned as it is.
    """
    if not (isinstance(operator, LinearOperator) and callable(getattr(operator, "compress", None))
            and hasattr(operator, "kernels")):
        raise TypeError(f"operator must be a ProductConvolution or a Convolution, got "
                        f"{describe(operator)}")
    return operator.compress(rank=rank, energy=energy)


def low_rank(operator: Any, rank: int | None = None, energy: float | None = None) -> Any:
    """The compression itself (see :func:`compress`) of a product convolution; the result is
    built with ``type(operator)``, so this module needs no import of the operator's class."""
    rank, energy = check_compression(rank, energy)
    cls = type(operator)
    if rank is None and energy is None:
        energy = 0.999
    with torch.no_grad():
        kernels = operator.kernels.detach().reshape(operator.n_kernels, -1).double().cpu()
        gram_w = _weights_gram_matrix(operator)
        factors = None
        if energy is not None and energy < 1 and min(kernels.shape) > 2 * _SKETCH:
            # a few leading directions usually hold the energy asked for: found by a sketch
            # they cost milliseconds where the two full I x I eigendecompositions cost 0.2 s;
            # ‖M‖_F² = trace(Kᵀ G_w K) exactly, so the error reported stays exact
            total = float((kernels * _times(gram_w, kernels)).sum())
            factors = _factors(gram_w, *_top_kernel_factors(kernels, _SKETCH))
            chosen = _rank_for(factors[3], total, energy, rank)
            if chosen > _SKETCH // 2:  # not enough in the sketch: do it exactly
                factors = None
        if factors is None:
            factors = _factors(gram_w, *_kernel_factors(kernels))
            total = float((factors[3] ** 2).sum())
            chosen = _rank_for(factors[3], total, energy, rank)
        root_k, vectors_k, left, singular, right_t, root_w, vectors_w = factors
        kept = float((singular[:chosen] ** 2).sum())
        # M_r is the orthogonal projection of M on r directions: ‖M − M_r‖² = ‖M‖² − ‖M_r‖²
        error = math.sqrt(max(0.0, total - kept) / total) if total > 0 else 0.0

        kernel_mixing = (left[:, :chosen].T / root_k[None, :]) @ vectors_k.T
        weight_mixing = (singular[:chosen, None] * right_t[:chosen] / root_w[None, :]) @ vectors_w.T
        new_kernels = (kernel_mixing @ kernels).reshape((chosen,) + operator.kernel_shape)
        # orient each eigen-PSF to have a positive sum (a sign convention, no change to H)
        signs = torch.where(new_kernels.sum(dim=(1, 2)) < 0, -1.0, 1.0).to(torch.float64)
        new_kernels = new_kernels * signs[:, None, None]
        weight_mixing = weight_mixing * signs[:, None]
        metadata = {**operator.metadata, "compressed_from": operator.n_kernels}
        new_kernels = new_kernels.to(operator.dtype).to(operator.device)
        if operator._all_single:  # C_i = v_i e_p e_qᵀ: scatter the mixing into the cores
            p, q, value, _ = operator._terms
            rows, cols = operator._rows, operator._cols
            n_cols = cols.shape[0]
            new_core = rows.new_zeros(chosen, rows.shape[0] * n_cols)
            mixed = weight_mixing.to(value.device) * value.double()
            new_core.index_add_(1, p * n_cols + q, mixed.to(rows))
            new_core = new_core.reshape(chosen, rows.shape[0], n_cols)
            compressed = cls.from_factors(new_kernels, rows, new_core, cols,
                                                         metadata)
        elif operator.is_factored:  # only the cores mix: w'_k = Rᵀ (Σ_i m_ki C_i) S
            rows, core, cols = operator._factors
            new_core = torch.einsum("ki,ipq->kpq", weight_mixing.to(core), core)
            compressed = cls.from_factors(new_kernels, rows, new_core, cols,
                                                         metadata)
        else:
            compressed = cls(
                new_kernels, _combine_weights(operator, weight_mixing), metadata
            )
    compressed.metadata.pop("grid", None)
    compressed.compression_error = error
    return compressed
