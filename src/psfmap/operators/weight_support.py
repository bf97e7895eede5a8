"""Support helpers for product-convolution weights: the non-zero spans of weight profiles,
single-entry factored terms, and edge replication for extended domains."""

from __future__ import annotations

import torch


def single_entries(core: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(p, q, value, single)`` per term: whether its core ``(P, Q)`` has exactly one
    non-zero entry, and which (the first non-zero one otherwise, unused)."""
    flat = core.detach().reshape(core.shape[0], -1)
    nonzero = flat != 0
    first = nonzero.to(torch.uint8).argmax(dim=1)
    value = flat.gather(1, first[:, None])[:, 0]
    columns = core.shape[2]
    return first // columns, first % columns, value, nonzero.sum(dim=1) == 1


def spans(nonzero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and one-past-last True of each row of ``(n, L)`` (start ≥ stop when none)."""
    length = nonzero.shape[1]
    as_int = nonzero.to(torch.uint8)
    start = torch.where(nonzero.any(dim=1), as_int.argmax(dim=1), length)
    stop = length - as_int.flip(1).argmax(dim=1)
    return start, torch.where(nonzero.any(dim=1), stop, 0)


def term_spans(profiles: torch.Tensor, used: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Span of ``Σ_p used[i, p] · profile_p``'s support for each term (union of the spans)."""
    start, stop = spans(profiles != 0)
    length = profiles.shape[1]
    term_start = torch.where(used, start[None], length).min(dim=1).values
    term_stop = torch.where(used, stop[None], 0).max(dim=1).values
    return term_start, term_stop


def edge_pad(weights: torch.Tensor, margin: int) -> torch.Tensor:
    """Replicate the edge values of ``(..., H, W)`` maps ``margin`` pixels outwards."""
    lead = weights.shape[:-2]
    flat = weights.reshape((-1, 1) + tuple(weights.shape[-2:]))
    padded = torch.nn.functional.pad(flat, (margin,) * 4, mode="replicate")
    return padded.reshape(lead + tuple(padded.shape[-2:]))
