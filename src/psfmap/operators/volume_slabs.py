"""Slab and depth-only evaluation of a 3D product convolution with compact weights in z.

A depth grid's weight ``w_i`` is non-zero on a slab of ``L_i`` planes only (two cells wide).
Each term is then convolved on its slab padded by the kernel depth, ``(L_i + d − 1)`` planes
instead of the whole ``D + d − 1``: with 8 depth cells over 64 planes and a 21-plane PSF,
about a third of the FFT volume of the Fourier sum. Forward and adjoint give the Fourier sum's
result to rounding (``tests/operators/test_volume.py``).

Along z the convolution of a slab is linear with the kernel's centre rolled to index 0 on an
FFT length ``N ≥ L + d − 1``: output index ``t`` of the rolled result is plane
``z0 + t − c`` (``c = d // 2``). The adjoint correlates the data segment
``[z0 − c, z1 + d − 1 − c)`` and keeps indices ``[c, c + L)``.

When the weights vary in z only (a depth grid ``(gz, 1, 1, d, h, w)``), ``w_i(z)`` commutes
with the lateral Fourier transform: the "depth" evaluation takes one lateral ``rfft2`` of the
volume, per term a 1-D FFT along z of its slab times the kernel's 3D spectrum and the inverse
1-D FFT, and one lateral ``irfft2`` of the sum, so the number of depth cells costs only 1-D
transforms.
"""

from __future__ import annotations

from typing import Any

import torch

from psfmap.operators.fft import fast_size
from psfmap.operators.fft3d import (
    centred_spectra_3d,
    irfft2,
    irfft3,
    rfft2,
    rfft3,
    times_conj,
)

__all__ = ["slab_adjoint", "slab_forward", "z_spans"]

# the slab engine is used when its FFT volume is below this fraction of the Fourier sum's
WORTH_IT = 0.7
# the depth engine caches its kernels' full spectra up to this many bytes (all terms)
SPECTRA_CACHE_BYTES = 256 << 20
# and works on lateral-frequency rows in chunks whose z buffers hold about this many bytes
# per thread squared: 4 MB stay in cache on one thread; with two, 16 MB halve the number of
# parallel regions (4 MB chunks ran 2x slower on 2 threads of a loaded 2-core machine)
CHUNK_BYTES = 4 << 20


def z_spans(op: Any) -> list[tuple[int, int]]:
    """First and one-past-last plane of every weight's support (``(0, 0)`` when empty)."""
    if op._dense is not None:
        nonzero = (op._dense != 0).flatten(2).any(dim=2)  # (I, D)
    else:
        z_profiles = op._profiles[0] != 0  # (P, D)
        used = op._core.flatten(2).abs().sum(dim=2) > 0  # (I, P)
        nonzero = (used[:, :, None] & z_profiles[None]).any(dim=1)
    spans = []
    for row in nonzero:
        index = torch.nonzero(row).flatten()
        spans.append((int(index[0]), int(index[-1]) + 1) if len(index) else (0, 0))
    return spans


def slab_fft_depths(op: Any, spans: list[tuple[int, int]]) -> list[int]:
    d = op.kernel_shape[0]
    return [fast_size(stop - start + d - 1) if stop > start else 0 for start, stop in spans]


def worth_it(op: Any, spans: list[tuple[int, int]]) -> bool:
    """Whether the slabs' FFT volume is below ``WORTH_IT`` of the Fourier sum's."""
    depths = slab_fft_depths(op, spans)
    return sum(depths) < WORTH_IT * op.n_kernels * op.fft_shape[0]


def _spectrum(op: Any, i: int, depth: int, dtype, device) -> torch.Tensor:
    shape = (depth,) + tuple(op.fft_shape[1:])
    return op._cached(("slab", i, depth), dtype, device, lambda: centred_spectra_3d(
        op.kernels[i:i + 1].to(device=device, dtype=dtype), shape)[0])


def slab_forward(op: Any, x: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """``Σ_i k_i ⋆ (w_i · x)`` term by term on each weight's z slab; ``x`` (B, D, H, W)."""
    depth, height, width = op.image_shape
    d = op.kernel_shape[0]
    c = d // 2
    out = x.new_zeros(x.shape)
    for i, ((z0, z1), n) in enumerate(zip(spans, slab_fft_depths(op, spans))):
        if z1 <= z0:
            continue
        weight = op._weight(i, x.dtype, x.device)[z0:z1]
        shape = (n,) + tuple(op.fft_shape[1:])
        spectrum = _spectrum(op, i, n, x.dtype, x.device)
        blurred = irfft3(rfft3(x[:, z0:z1] * weight, shape) * spectrum, shape)
        # rolled index t is plane z0 + t - c; keep the planes inside the volume
        local = torch.roll(blurred[..., :height, :width], shifts=c, dims=-3)
        first, last = max(z0 - c, 0), min(z1 + d - 1 - c, depth)
        out[:, first:last] += local[:, first - (z0 - c):last - (z0 - c)]
    return out


def slab_adjoint(op: Any, y: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """``Σ_i w_i · (k̃_i ⋆ y)`` on each weight's z slab; ``y`` (B, D, H, W)."""
    depth, height, width = op.image_shape
    d = op.kernel_shape[0]
    c = d // 2
    out = y.new_zeros(y.shape)
    for i, ((z0, z1), n) in enumerate(zip(spans, slab_fft_depths(op, spans))):
        if z1 <= z0:
            continue
        start, stop = z0 - c, z1 + d - 1 - c  # the data planes the slab's correlation reads
        segment = y[:, max(start, 0):min(stop, depth)]
        segment = torch.nn.functional.pad(
            segment, (0, 0, 0, 0, max(start, 0) - start, stop - min(stop, depth)))
        shape = (n,) + tuple(op.fft_shape[1:])
        spectrum = _spectrum(op, i, n, y.dtype, y.device)
        correlated = irfft3(times_conj(rfft3(segment, shape), spectrum, _in_place(op, y)),
                            shape)
        weight = op._weight(i, y.dtype, y.device)[z0:z1]
        out[:, z0:z1] += correlated[:, c:c + z1 - z0, :height, :width] * weight
    return out


# ---------------------------------------------------------------------------- depth-only
def depth_only(op: Any) -> bool:
    """Whether every weight is constant across the field (a depth-only grid and its
    compressions): then ``w_i(z)`` commutes with the lateral Fourier transform."""
    if op._profiles is None:
        return False
    _, rows, cols = op._profiles
    return all(p.shape[0] == 1 and bool((p == p[0, 0]).all()) for p in (rows, cols))


def _depth_weights(op: Any, dtype, device) -> torch.Tensor:
    """``(I, D)`` weights of a depth-only operator (real, one value per plane)."""
    def build() -> torch.Tensor:
        z, rows, cols = op._profiles
        scale = rows[0, 0] * cols[0, 0]
        return (op._core[:, :, 0, 0] @ z * scale).to(device=device, dtype=dtype)

    return op._cached("depth-weights", dtype, device, build)


def _depth_spectrum(op: Any, i: int, depth: int, dtype, device,
                    rows: slice = slice(None)) -> torch.Tensor:
    """Kernel ``i``'s spectrum on ``(depth, NH, NW)`` (lateral-frequency ``rows`` of it),
    rolled laterally only (plane 0 of the kernel at index 0 in z): a product's inverse along
    z then needs no roll.

    Cached whole while all terms' spectra fit in ``SPECTRA_CACHE_BYTES``; beyond, only the
    kernels' lateral transforms (``d`` planes each) are cached and the transform along z is
    redone at each use (one more 1-D FFT per term, a fraction of the memory)."""
    lateral = tuple(op.fft_shape[1:])
    complex_size = 2 * torch.empty((), dtype=dtype).element_size()
    planes = sum(slab_fft_depths(op, op.z_spans))
    if op.kernels.requires_grad:  # no cache: the spectra must carry the kernels' gradient
        return centred_spectra_3d(op.kernels[i:i + 1].to(device=device, dtype=dtype),
                                  (depth,) + lateral, centre_depth=False)[0][:, rows]
    if planes * lateral[0] * (lateral[1] // 2 + 1) * complex_size <= SPECTRA_CACHE_BYTES:
        return op._cached(("depth", i, depth), dtype, device, lambda: centred_spectra_3d(
            op.kernels[i:i + 1].to(device=device, dtype=dtype), (depth,) + lateral,
            centre_depth=False)[0])[:, rows]

    def lateral_spectra() -> torch.Tensor:
        kernels = op.kernels.detach().to(device=device, dtype=dtype)
        h, w = kernels.shape[-2:]
        padded = torch.nn.functional.pad(kernels, (0, lateral[1] - w, 0, lateral[0] - h))
        return torch.fft.rfft2(torch.roll(padded, shifts=(-(h // 2), -(w // 2)),
                                          dims=(-2, -1)))

    spectra = op._cached("depth-lateral", dtype, device, lateral_spectra)
    return torch.fft.fft(spectra[i][:, rows], n=depth, dim=-3)


def _in_place(op: Any, *tensors: torch.Tensor) -> bool:
    """Whether buffers may be overwritten (no autograd graph through them)."""
    if not torch.is_grad_enabled():
        return True
    return not any(t.requires_grad for t in (*tensors, op.kernels))


def _row_chunks(op: Any, batch: int, depth: int, dtype) -> list[slice]:
    """Lateral-frequency rows in chunks whose z buffers hold about ``CHUNK_BYTES`` times the
    number of threads squared."""
    rows, columns = op.fft_shape[1], op.fft_shape[2] // 2 + 1
    per_row = batch * depth * columns * 2 * torch.empty((), dtype=dtype).element_size()
    size = max(1, CHUNK_BYTES * torch.get_num_threads() ** 2 // max(per_row, 1))
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


def depth_forward(op: Any, x: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """Forward of a depth-only operator: one lateral ``rfft2`` of the volume; then, chunk by
    chunk of lateral-frequency rows (the z transforms of different rows are independent),
    per term a 1-D FFT along z of its weighted slab times the kernel's spectrum and the
    inverse, added to the chunk's output, written over the volume's spectrum; one lateral
    ``irfft2``. Chunks keep the buffers small (in cache, no second volume in memory).

    With the kernel's first plane at index 0 in z, index ``t`` of term ``i``'s inverse is
    plane ``z0 + t − c`` (``c = d // 2``): the planes inside the volume are added directly."""
    if not _in_place(op, x):
        return _depth_forward_graph(op, x, spans)
    depth, height, width = op.image_shape
    d = op.kernel_shape[0]
    c = d // 2
    lateral = tuple(op.fft_shape[1:])
    weights = _depth_weights(op, x.dtype, x.device)
    depths = slab_fft_depths(op, spans)
    spectrum = rfft2(x, lateral)  # (B, D, NH, NW/2+1), overwritten by the output
    for rows in _row_chunks(op, x.shape[0], max(depths), x.dtype):
        source = spectrum[:, :, rows].clone()
        target = spectrum[:, :, rows].zero_()
        for i, ((z0, z1), n) in enumerate(zip(spans, depths)):
            if z1 <= z0:
                continue
            padded = source.new_zeros(source.shape[:1] + (n,) + source.shape[2:])
            torch.mul(source[:, z0:z1], weights[i, z0:z1, None, None],
                      out=padded[:, :z1 - z0])
            kernel = _depth_spectrum(op, i, n, x.dtype, x.device, rows)
            blurred = torch.fft.ifft(torch.fft.fft(padded, dim=-3).mul_(kernel), dim=-3)
            first, last = max(z0 - c, 0), min(z1 + d - 1 - c, depth)
            target[:, first:last] += blurred[:, first - (z0 - c):last - (z0 - c)]
    return irfft2(spectrum, lateral)[..., :height, :width]


def depth_adjoint(op: Any, y: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """Adjoint of :func:`depth_forward`: per term, the data planes ``[z0 − c, z1 + d − 1 − c)``
    correlated along z with the kernel (index ``j`` of the inverse is plane ``z0 + j``),
    weighted and added to the slab; chunked over lateral-frequency rows as the forward."""
    if not _in_place(op, y):
        return _depth_adjoint_graph(op, y, spans)
    depth, height, width = op.image_shape
    d = op.kernel_shape[0]
    c = d // 2
    lateral = tuple(op.fft_shape[1:])
    weights = _depth_weights(op, y.dtype, y.device)
    depths = slab_fft_depths(op, spans)
    spectrum = rfft2(y, lateral)
    for rows in _row_chunks(op, y.shape[0], max(depths), y.dtype):
        source = spectrum[:, :, rows].clone()
        target = spectrum[:, :, rows].zero_()
        for i, ((z0, z1), n) in enumerate(zip(spans, depths)):
            if z1 <= z0:
                continue
            start, stop = z0 - c, z1 + d - 1 - c  # plane start + j at index j
            low, high = max(start, 0), min(stop, depth)
            padded = source.new_zeros(source.shape[:1] + (n,) + source.shape[2:])
            padded[:, low - start:high - start] = source[:, low:high]
            kernel = _depth_spectrum(op, i, n, y.dtype, y.device, rows)
            product = times_conj(torch.fft.fft(padded, dim=-3), kernel, in_place=True)
            correlated = torch.fft.ifft(product, dim=-3)[:, :z1 - z0]
            target[:, z0:z1] += correlated.mul_(weights[i, z0:z1, None, None])
    return irfft2(spectrum, lateral)[..., :height, :width]


def _depth_forward_graph(op: Any, x: torch.Tensor, spans: list[tuple[int, int]]
                         ) -> torch.Tensor:
    """:func:`depth_forward` without in-place operations (autograd through it)."""
    depth, height, width = op.image_shape
    d = op.kernel_shape[0]
    c = d // 2
    lateral = tuple(op.fft_shape[1:])
    weights = _depth_weights(op, x.dtype, x.device)
    spectrum_x = rfft2(x, lateral)
    out = torch.zeros_like(spectrum_x)
    for i, ((z0, z1), n) in enumerate(zip(spans, slab_fft_depths(op, spans))):
        if z1 <= z0:
            continue
        segment = spectrum_x[:, z0:z1] * weights[i, z0:z1, None, None]
        kernel = _depth_spectrum(op, i, n, x.dtype, x.device)
        blurred = torch.fft.ifft(torch.fft.fft(segment, n=n, dim=-3) * kernel, dim=-3)
        first, last = max(z0 - c, 0), min(z1 + d - 1 - c, depth)
        out = out.index_add(1, torch.arange(first, last, device=x.device),
                            blurred[:, first - (z0 - c):last - (z0 - c)])
    return irfft2(out, lateral)[..., :height, :width]


def _depth_adjoint_graph(op: Any, y: torch.Tensor, spans: list[tuple[int, int]]
                         ) -> torch.Tensor:
    """:func:`depth_adjoint` without in-place operations (autograd through it)."""
    depth, height, width = op.image_shape
    d = op.kernel_shape[0]
    c = d // 2
    lateral = tuple(op.fft_shape[1:])
    weights = _depth_weights(op, y.dtype, y.device)
    spectrum_y = rfft2(y, lateral)
    out = torch.zeros_like(spectrum_y)
    for i, ((z0, z1), n) in enumerate(zip(spans, slab_fft_depths(op, spans))):
        if z1 <= z0:
            continue
        start, stop = z0 - c, z1 + d - 1 - c
        segment = spectrum_y[:, max(start, 0):min(stop, depth)]
        before = max(start, 0) - start
        segment = torch.nn.functional.pad(segment, (0, 0, 0, 0, before, 0))
        kernel = _depth_spectrum(op, i, n, y.dtype, y.device)
        spectrum = torch.fft.fft(segment, n=n, dim=-3) * kernel.conj()
        correlated = torch.fft.ifft(spectrum, dim=-3)[:, :z1 - z0]
        out = out.index_add(1, torch.arange(z0, z1, device=y.device),
                            correlated * weights[i, z0:z1, None, None])
    return irfft2(out, lateral)[..., :height, :width]
