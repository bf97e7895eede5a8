"""A 3D operator restricted to a box of its volume: the restriction of chunked restoration.

``restrict_volume(operator, (z0, z1, y0, y1, x0, x1))`` gives the operator that blurs a source
inside the box exactly as the whole-volume operator does: the same kernels ``k_i``, the
weights ``w_i`` cut to the box (for factored weights ``w_i = Σ C_i[a,b,c] Z_a ⊗ Y_b ⊗ X_c``,
the profiles cut, the core kept), the terms whose weight vanishes on the box dropped. A
space-invariant convolution is its own restriction. This is the 3D counterpart of
``from_psf_grid(..., region=...)`` and of the weight cut of :mod:`psfmap.restore.tiled`;
it lives beside :mod:`psfmap.operators.volume` (whose representation it reads, as
:mod:`psfmap.operators.volume_slabs` does).
"""

from __future__ import annotations

from typing import Any

import torch

from psfmap.operators.volume import VolumeConvolution, VolumeProductConvolution

__all__ = ["restrict_volume"]


def restrict_volume(operator: Any, region: Any) -> Any:
    """``operator`` (a 3D ``Convolution`` or ``ProductConvolution``) on the box ``region``.

    Parameters
    ----------
    operator : VolumeConvolution or VolumeProductConvolution
        The whole-volume operator.
    region : (z0, z1, y0, y1, x0, x1)
        The box, half-open on every axis, inside the operator's volume.

    Returns
    -------
    VolumeConvolution or VolumeProductConvolution
        For a product convolution, one acting on volumes of the box's shape, with
        ``metadata["region"]`` set; its weight at box voxel ``(z, y, x)`` equals the original
        weight at ``(z0 + z, y0 + y, x0 + x)``.
    """
    if isinstance(operator, VolumeConvolution):
        return operator
    if not isinstance(operator, VolumeProductConvolution):
        raise TypeError(f"operator must be a 3D Convolution or ProductConvolution, got "
                        f"{type(operator).__name__}")
    b = [int(v) for v in region]
    if len(b) != 6 or not all(0 <= b[k] < b[k + 1] <= n
                              for k, n in zip((0, 2, 4), operator.image_shape)):
        raise ValueError(f"region must be (z0, z1, y0, y1, x0, x1) inside the volume "
                         f"{operator.image_shape}, got {tuple(region)}")
    meta = {**operator.metadata, "region": b}
    if operator._dense is not None:
        weights = operator._dense[:, b[0]:b[1], b[2]:b[3], b[4]:b[5]]
        keep = weights.detach().abs().flatten(1).amax(dim=1) > 0
        keep[0] |= not bool(keep.any())  # at least one term (all-zero weights stay zero)
        other = VolumeProductConvolution(operator.kernels[keep], weights[keep], meta)
    else:
        profiles = tuple(p[:, b[k]:b[k + 1]] for p, k in zip(operator._profiles, (0, 2, 4)))
        reach = torch.einsum("iabc,a,b,c->i", operator._core.detach().abs(),
                             *(p.detach().abs().amax(dim=1) for p in profiles))
        keep = reach > 0
        keep[0] |= not bool(keep.any())
        other = VolumeProductConvolution.from_factors(operator.kernels[keep], profiles,
                                                      operator._core[keep], meta)
    other.compression_error = operator.compression_error
    other._engine_override = operator._engine_override
    return other
