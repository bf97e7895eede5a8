"""Lazy simulation of a dask array: blur chunk by chunk with a halo, noise chunk by chunk.

``simulate(dask_array, ...)`` lands here once the PSF map is drawn. The clean image is the
PSF map's product convolution evaluated on every chunk grown by the PSF's half-width (the
operator restricted to the grown box, ``from_psf_grid(psfs, shape, region)``): a core pixel
only receives light from within that distance, so the chunked clean image equals the
one-piece one to float rounding. The camera noise of every chunk is drawn from its own seed
(``SeedSequence([seed, *chunk location])``): reproducible, though not the same draws as an
in-memory run, and with the photon scale of the whole image (its maximum).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from psfmap._chunks import map_with_halo
from psfmap.operators import from_psf_grid
from psfmap.simulate.noise import NoiseModel, poisson_gaussian


def check_lazy_sharp(sharp: Any) -> Any:
    """A dask array ``(H, W)`` of floats (integers become float32); its values are checked
    chunk by chunk when computed."""
    if sharp.ndim != 2 or 0 in sharp.shape:
        raise ValueError(f"sharp must be a non-empty dask array of shape (H, W), got shape "
                         f"{sharp.shape}")
    if sharp.dtype not in (np.float32, np.float64):
        sharp = sharp.astype(np.float32)
    return sharp


def simulate_chunked(image: Any, psf_map: Any, photons: float | None, noise_options: dict,
                     seed: int) -> tuple[Any, Any, NoiseModel | None]:
    """``(blurred, clean, noise)`` as lazy dask arrays of ``image``'s shape and chunks."""
    dtype = torch.float64 if image.dtype == np.float64 else torch.float32
    psfs = psf_map.psfs(dtype=dtype)
    shape = tuple(int(n) for n in image.shape)
    halo = max(int(psfs.shape[-2]), int(psfs.shape[-1])) // 2 + 1

    def blur(block: np.ndarray, region: tuple[int, int, int, int], lead: Any) -> np.ndarray:
        if not np.isfinite(block).all() or (block < 0).any():
            raise ValueError(f"sharp has negative or non-finite values in rows "
                             f"{region[0]}:{region[1]}, columns {region[2]}:{region[3]}; "
                             "expected a non-negative intensity image")
        operator = from_psf_grid(psfs, shape, region)
        with torch.no_grad():
            return operator.forward(torch.from_numpy(np.ascontiguousarray(block))) \
                .clamp_min(0).numpy()

    clean = map_with_halo(image, blur, halo, what="sharp")
    if photons is None:
        return clean, clean, None
    noise = NoiseModel(photons, **noise_options)
    peak = clean.max()

    def noisy(block: np.ndarray, peak: Any = None, block_info: dict | None = None) -> np.ndarray:
        location = block_info[None]["chunk-location"]
        chunk_seed = int(np.random.SeedSequence([seed, *location]).generate_state(1)[0])
        # a guard row at the whole image's maximum: the photon scale s = photons / max is
        # the whole image's, not the chunk's (the row is dropped after)
        guarded = np.concatenate([block, np.full((1, block.shape[1]), float(peak),
                                                 block.dtype)])
        return np.asarray(poisson_gaussian(guarded, photons, seed=chunk_seed,
                                           **noise_options))[:-1]

    blurred = clean.map_blocks(noisy, peak=peak, dtype=clean.dtype)
    return blurred, clean, noise
