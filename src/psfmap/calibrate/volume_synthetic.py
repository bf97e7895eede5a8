"""Synthetic bead z-stacks with a known depth- and field-variant 3-D PSF (for validation).

The truth is a :func:`psfmap.operators.from_psf_grid` operator over a ``gz × 1 × gx`` grid of
widefield PSFs through focus (:func:`psfmap.psf.through_focus`): cell ``(a, c)`` holds the PSF
of a source at depth ``d_a`` below the coverslip (plane ``z`` lies ``z · z_step`` µm deep) in a
sample of index ``n_s`` seen through an immersion of index ``n_i`` (Gibson–Lanni depth
aberration: spherical aberration and a focal shift that grow with depth), plus astigmatism
``a_5 = astigmatism · (2 x / W − 1)`` varying across the field.

Beads cannot reveal the axial focal shift (a source's true against its apparent depth), so
every PSF of the truth is expressed about its apparent centre: its planes are placed so that
the centring of :func:`psfmap.calibrate.volume_patches.centre_offsets` finds it at the box
centre. Each PSF is computed on, and normalised within, its box, so that the truth is
exactly representable by kernels of that box or larger.

Beads sit at sub-voxel positions on a jittered lateral grid, at uniformly random depths; each
is the truth's local PSF ``psf_at`` of its nearest voxel, shifted by the fractional offset
with the Fourier shift theorem, times ``photons``, over a constant ``background``, with
Poisson noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from psfmap.calibrate.volume_patches import centre_offsets, fourier_recentre
from psfmap.operators.volume import VolumeProductConvolution, from_psf_grid_3d

__all__ = ["SyntheticBeadVolume", "centred_through_focus", "gaussian_psf_3d", "point_volume",
           "synthetic_bead_volume"]

OPTICS = {"na": 1.0, "wavelength": 0.52, "immersion_index": 1.515, "sample_index": 1.33}


@dataclass
class SyntheticBeadVolume:
    """A synthetic bead z-stack and its truth.

    Attributes
    ----------
    stack : ndarray (D, H, W) float32
        Photon counts.
    operator : VolumeProductConvolution
        The true depth- and field-variant operator.
    positions : ndarray (N, 3)
        Sub-voxel bead centres ``(z, y, x)``.
    z_step, pixel_size : float
        Voxel size in µm.
    optics : dict
        ``na``, ``wavelength``, ``immersion_index``, ``sample_index``.
    """

    stack: np.ndarray
    operator: VolumeProductConvolution
    positions: np.ndarray
    z_step: float
    pixel_size: float
    optics: dict = field(default_factory=dict)


def centred_through_focus(size: int, planes: int, *, depth: float, z_step: float,
                          pixel_size: float, coefficients: Any = (0.0,),
                          psf_sigma: float = 1.0, psf_sigma_z: float = 1.5,
                          iterations: int = 3, **optics: Any) -> torch.Tensor:
    """Widefield PSF ``(planes, size, size)`` (float64, sums to 1) of a source ``depth`` µm
    deep, its planes placed about the apparent axial centre (module docstring)."""
    from psfmap.psf.through_focus import through_focus

    optics = {**OPTICS, **optics}
    centre = 0.0
    span = planes // 2
    for _ in range(iterations):
        # a window three times deeper finds a peak that the focal shift moved out of the box
        wide = 3 * planes if _ == 0 else planes
        z = centre + (np.arange(wide) - wide // 2) * z_step
        psf = through_focus(size, z, coefficients, depth=depth, pixel_size=pixel_size,
                            dtype=torch.float64, **optics)
        offsets, _, _ = centre_offsets(psf.numpy()[None], psf_sigma, psf_sigma_z,
                                       (wide // 2 - 1, 2, 2))
        centre += float(offsets[0, 0]) * z_step
    z = centre + (np.arange(planes) - span) * z_step
    psf = through_focus(size, z, coefficients, depth=depth, pixel_size=pixel_size,
                        dtype=torch.float64, **optics)
    return psf / psf.sum()


def gaussian_psf_3d(shape: tuple[int, int, int], sigmas: tuple[float, float, float]
                    ) -> torch.Tensor:
    """Centred anisotropic Gaussian ``(d, h, w)`` with standard deviations ``(σ_z, σ_y, σ_x)``
    in voxels (float64, sums to 1)."""
    axes = [torch.arange(n, dtype=torch.float64) - n // 2 for n in shape]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    psf = torch.exp(-0.5 * ((zz / sigmas[0]) ** 2 + (yy / sigmas[1]) ** 2
                            + (xx / sigmas[2]) ** 2))
    return psf / psf.sum()


def _truth(shape, grid, psf_shape, z_step, pixel_size, astigmatism, psf_sigma, psf_sigma_z,
           model, optics) -> VolumeProductConvolution:
    gz, gx = grid
    psfs = torch.empty((gz, 1, gx) + tuple(psf_shape), dtype=torch.float64)
    for a in range(gz):
        depth_um = (a + 0.5) * shape[0] / gz * z_step
        for c in range(gx):
            u = 2 * (c + 0.5) / gx - 1 if gx > 1 else 0.0
            if model == "gaussian":  # widths grow with depth, elongated along x or y
                t = (a + 0.5) / gz
                psfs[a, 0, c] = gaussian_psf_3d(psf_shape, (
                    psf_sigma_z * (1 + 0.6 * t), psf_sigma * (1 + 0.3 * t - astigmatism * u),
                    psf_sigma * (1 + 0.3 * t + astigmatism * u)))
                continue
            psfs[a, 0, c] = centred_through_focus(
                psf_shape[1], psf_shape[0], depth=depth_um, z_step=z_step,
                pixel_size=pixel_size, coefficients={5: astigmatism * u}, psf_sigma=psf_sigma,
                psf_sigma_z=psf_sigma_z, **optics)
    return from_psf_grid_3d(psfs, shape)


def synthetic_bead_volume(
    shape: tuple[int, int, int] = (48, 160, 160),
    *,
    z_step: float = 0.5,
    pixel_size: float = 0.13,
    grid: tuple[int, int] = (5, 3),
    psf_shape: tuple[int, int, int] = (13, 15, 15),
    margin: tuple[int, int, int] | None = None,
    spacing: int = 24,
    astigmatism: float = 0.05,
    photons: float = 1e6,
    background: float = 5.0,
    psf_sigma: float = 1.0,
    psf_sigma_z: float = 1.5,
    seed: int = 0,
    model: str = "widefield",
    **optics: Any,
) -> SyntheticBeadVolume:
    """Render a bead z-stack through a known depth- and field-variant PSF.

    Parameters
    ----------
    shape : (D, H, W)
        Stack shape; plane ``z`` lies ``z · z_step`` µm below the coverslip.
    grid : (gz, gx)
        Depths and field columns of the true PSF grid.
    psf_shape : (d, h, w)
        Box of the true PSFs (odd sides).
    margin : (mz, my, mx), optional
        Beads keep this far from the faces (default: half a box plus 6 voxels, room for the
        larger patches of a calibration).
    spacing : int
        Lateral pitch (px) of the jittered bead grid.
    astigmatism : float
        Field astigmatism (Noll 5, RMS waves) at the left and right edges.
    photons, background : float
        Expected photons per bead and per voxel of background.
    psf_sigma, psf_sigma_z : float
        Scales used by the centring of the truth's PSFs (pass the calibration's); with
        ``model="gaussian"``, the PSF widths at the surface.
    model : {"widefield", "gaussian"}
        Widefield PSFs through focus (the default), or anisotropic Gaussians whose widths
        grow with depth and whose ellipticity follows ``astigmatism`` across the field (a
        cheap truth for quick checks).
    optics :
        ``na``, ``wavelength``, ``immersion_index``, ``sample_index`` (default NA 1.0 oil
        objective, 0.52 µm, into water).
    """
    if model not in ("widefield", "gaussian"):
        raise ValueError(f"model must be 'widefield' or 'gaussian', got {model!r}")
    rng = np.random.default_rng(seed)
    optics = {**OPTICS, **optics}
    operator = _truth(shape, grid, psf_shape, z_step, pixel_size, astigmatism, psf_sigma,
                      psf_sigma_z, model, optics)
    if margin is None:
        margin = tuple(s // 2 + 6 for s in psf_shape)
    if shape[0] - 1 - 2 * margin[0] < 1 or \
            any(n - 2 * m < spacing for n, m in zip(shape[1:], margin[1:])):
        raise ValueError(f"shape {tuple(shape)} leaves no room for beads {tuple(margin)} voxels "
                         f"from its faces at a lateral spacing of {spacing} px; enlarge it")
    lateral = [np.arange(m + spacing / 2, n - m - spacing / 4, spacing)
               for m, n in zip(margin[1:], shape[1:])]
    yy, xx = np.meshgrid(*lateral, indexing="ij")
    count = yy.size
    jitter = rng.uniform(-0.2, 0.2, (count, 2)) * spacing
    zs = rng.uniform(margin[0], shape[0] - 1 - margin[0], count)
    positions = np.column_stack([zs, yy.ravel() + jitter[:, 0], xx.ravel() + jitter[:, 1]])
    expected = np.full(shape, float(background))
    pad = 3
    half = np.array(psf_shape) // 2 + pad
    with torch.no_grad():
        for position in positions:
            voxel = np.round(position).astype(int)
            local = operator.psf_at(*voxel).double().numpy()
            local = np.pad(local, pad)
            shifted = fourier_recentre(local[None], (voxel - position)[None],
                                       tuple(local.shape))[0]
            lo = voxel - half
            expected[lo[0]:lo[0] + local.shape[0], lo[1]:lo[1] + local.shape[1],
                     lo[2]:lo[2] + local.shape[2]] += photons * np.clip(shifted, 0, None)
    stack = rng.poisson(expected).astype(np.float32)
    return SyntheticBeadVolume(stack, operator.to(torch.float32), positions, float(z_step),
                               float(pixel_size), optics)


def point_volume(shape: tuple[int, int, int], density: float = 0.002, seed: int = 0
                 ) -> np.ndarray:
    """A test object: sparse point sources with random amplitudes in [0.5, 1] (float32)."""
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, dtype=np.float32)
    mask = rng.random(shape) < density
    volume[mask] = rng.uniform(0.5, 1.0, int(mask.sum()))
    return volume
