"""Procedural fluorescence-like scenes, sharp by construction (rendered finer, then binned).

Training and evaluation material for the learned models must not carry a blur of its own
(DESIGN.md: real "sharp" images are blurred by their microscope, so their labels are wrong by
a fraction of a pixel). A scene here is drawn on a grid ``supersample`` times finer than the
output and sum-binned ``supersample × supersample``, so the only blur it carries is the
integration over the pixel. Its content imitates fluorescence samples:

* **nuclei**: ellipses with sharp or soft edges (logistic profile of random width), an interior
  texture (smooth random field, chromatin-like) and a few bright nucleoli;
* **membranes**: thin ellipse outlines around some nuclei or on their own;
* **filaments**: smooth random curves (persistent random walks) of sub-pixel to ~1.5 px width;
* **puncta**: sub-pixel spots of varied brightness (vesicles, single molecules);
* a smooth, varied **background**.

Each scene draws its density (sparse to dense), its mixture of structures and the brightness
of every object from a ``torch.Generator``, so a seed replays it exactly. Scenes are scaled to
a maximum of 1 (so that "photons per unit" noise levels mean the same for every scene).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from psfmap._validation import check_int, check_pair, describe

__all__ = ["SCENE_KINDS", "scene", "scenes"]

#: what a scene may be made of; ``kind="mixed"`` draws a random mixture of all of them
SCENE_KINDS = ("mixed", "nuclei", "filaments", "puncta", "membranes")


def _uniform(generator: torch.Generator, low: float, high: float, n: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _gaussian_filter(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (zero boundary) of a fine-grid image ``(H, W)``."""
    if sigma <= 0:
        return image
    radius = max(1, int(math.ceil(3.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = torch.nn.functional.conv2d(image[None, None], kernel.view(1, 1, 1, -1),
                                     padding=(0, radius))
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    return out[0, 0]


def _smooth_noise(shape: tuple[int, int], scale: float, generator: torch.Generator) -> torch.Tensor:
    """A smooth random field with correlation length ``scale`` (fine px), values in [0, 1]."""
    noise = torch.randn(shape, generator=generator, dtype=torch.float64)
    spectrum = torch.fft.rfft2(noise)
    fy = torch.fft.fftfreq(shape[0], dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(shape[1], dtype=torch.float64)[None, :]
    spectrum = spectrum * torch.exp(-2 * (math.pi * scale) ** 2 * (fy**2 + fx**2))
    field = torch.fft.irfft2(spectrum, s=shape)
    field = field - field.min()
    return field / field.max().clamp_min(1e-12)


def _splat(canvas: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
           values: torch.Tensor) -> None:
    """Add ``values`` at sub-pixel positions with bilinear weights (in place)."""
    height, width = canvas.shape
    r0, c0 = torch.floor(rows), torch.floor(cols)
    fr, fc = rows - r0, cols - c0
    r0, c0 = r0.long(), c0.long()
    flat = canvas.view(-1)
    for dr, dc, weight in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                           (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        r, c = r0 + dr, c0 + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        flat.index_add_(0, (r * width + c)[inside], (weight * values)[inside])


def _nuclei(canvas: torch.Tensor, count: int, scale: float, generator: torch.Generator,
            membranes: list) -> None:
    """Textured ellipses with logistic edges; some get a membrane outline (curve points)."""
    height, width = canvas.shape
    for _ in range(count):
        radius = float(_uniform(generator, 0.06, 0.22)) * min(height, width)
        aspect = float(_uniform(generator, 0.55, 1.0))
        angle = float(_uniform(generator, 0.0, math.pi))
        centre_r = float(_uniform(generator, 0.0, height))
        centre_c = float(_uniform(generator, 0.0, width))
        edge = float(_uniform(generator, 0.02, 1.5)) * scale  # sharp (0.02 px) to soft (1.5 px)
        extent = int(radius + 4 * edge + 2)
        r_lo, r_hi = max(0, int(centre_r) - extent), min(height, int(centre_r) + extent + 1)
        c_lo, c_hi = max(0, int(centre_c) - extent), min(width, int(centre_c) + extent + 1)
        if r_lo >= r_hi or c_lo >= c_hi:
            continue
        rr = torch.arange(r_lo, r_hi, dtype=torch.float64)[:, None] + 0.5 - centre_r
        cc = torch.arange(c_lo, c_hi, dtype=torch.float64)[None, :] + 0.5 - centre_c
        u = rr * math.cos(angle) + cc * math.sin(angle)
        v = -rr * math.sin(angle) + cc * math.cos(angle)
        # signed distance (approximately, in fine px) to the ellipse boundary
        distance = (torch.sqrt((u / aspect) ** 2 + v**2) - radius) * (0.5 + 0.5 * aspect)
        mask = torch.sigmoid(-distance / max(edge, 1e-3))
        texture = _smooth_noise(tuple(mask.shape), float(_uniform(generator, 0.5, 2.0)) * scale,
                                generator)
        contrast = float(_uniform(generator, 0.2, 0.9))
        brightness = float(_uniform(generator, 0.3, 1.0))
        body = brightness * mask * (1 - contrast + contrast * texture)
        canvas[r_lo:r_hi, c_lo:c_hi] += body
        # nucleoli: a few bright sub-blobs inside
        for _ in range(int(torch.randint(0, 4, (1,), generator=generator))):
            t = float(_uniform(generator, 0, 2 * math.pi))
            s = float(_uniform(generator, 0.0, 0.6)) * radius
            pr, pc = centre_r + s * math.sin(t) * aspect, centre_c + s * math.cos(t)
            sigma = float(_uniform(generator, 0.6, 2.0)) * scale
            blob = torch.exp(-0.5 * (((rr + centre_r - pr) ** 2 + (cc + centre_c - pc) ** 2)
                                     / sigma**2))
            canvas[r_lo:r_hi, c_lo:c_hi] += 0.5 * brightness * blob * mask
        if bool(torch.rand(1, generator=generator) < 0.4):
            membranes.append((centre_r, centre_c, radius * 1.15, aspect, angle))


def _curves(count: int, shape: tuple[int, int], scale: float, generator: torch.Generator,
            closed: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Points (fine px, spaced ~0.5 fine px) along filaments and membrane outlines."""
    height, width = shape
    curves = []
    for _ in range(count):
        length = float(_uniform(generator, 0.3, 1.5)) * max(height, width)
        n = max(8, int(2 * length))
        persistence = float(_uniform(generator, 0.002, 0.02))
        turns = torch.cumsum(torch.randn(n, generator=generator, dtype=torch.float64)
                             * math.sqrt(persistence), 0)
        heading = float(_uniform(generator, 0, 2 * math.pi)) + turns
        start_r = float(_uniform(generator, 0, height))
        start_c = float(_uniform(generator, 0, width))
        rows = start_r + torch.cumsum(0.5 * torch.sin(heading), 0)
        cols = start_c + torch.cumsum(0.5 * torch.cos(heading), 0)
        curves.append((rows, cols))
    for centre_r, centre_c, radius, aspect, angle in closed:
        n = max(16, int(4 * math.pi * radius))
        t = torch.linspace(0, 2 * math.pi, n, dtype=torch.float64)
        wobble = 1 + 0.05 * torch.sin(3 * t + float(_uniform(generator, 0, 6.3)))
        u, v = radius * aspect * wobble * torch.sin(t), radius * wobble * torch.cos(t)
        rows = centre_r + u * math.cos(angle) - v * math.sin(angle)
        cols = centre_c + u * math.sin(angle) + v * math.cos(angle)
        curves.append((rows, cols))
    return curves


def _draw_lines(canvas: torch.Tensor, curves: list, scale: float,
                generator: torch.Generator) -> None:
    """Render curves in three width classes (one Gaussian filter per class)."""
    widths = (0.35, 0.7, 1.3)  # Gaussian σ of the line profile, in output px
    layers = [torch.zeros_like(canvas) for _ in widths]
    for rows, cols in curves:
        layer = layers[int(torch.randint(0, len(widths), (1,), generator=generator))]
        brightness = float(_uniform(generator, 0.2, 1.0))
        # brightness fluctuates along the fibre (labelling density)
        along = 0.6 + 0.4 * torch.rand(len(rows), generator=generator, dtype=torch.float64)
        _splat(layer, rows, cols, brightness * along)
    for sigma, layer in zip(widths, layers, strict=True):
        # peak of a line of unit density per 0.5 fine px after filtering ≈ 2 / (√(2π) σ)
        canvas += _gaussian_filter(layer, sigma * scale) * (sigma * scale * 1.25)


def _puncta(canvas: torch.Tensor, count: int, scale: float, generator: torch.Generator) -> None:
    height, width = canvas.shape
    for sigma in (0.3, 0.6, 1.0):  # σ in output px: sub-pixel spots to small vesicles
        layer = torch.zeros_like(canvas)
        n = count // 3 + 1
        rows = _uniform(generator, 0, height, n)
        cols = _uniform(generator, 0, width, n)
        values = _uniform(generator, 0.15, 1.0, n) ** 2
        _splat(layer, rows, cols, values)
        canvas += _gaussian_filter(layer, sigma * scale) * (2 * math.pi * (sigma * scale) ** 2)


def scene(
    shape: Any = (128, 128),
    *,
    generator: torch.Generator | None = None,
    kind: str = "mixed",
    supersample: int = 4,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One procedural fluorescence-like scene, sharp by construction, maximum 1.

    Drawn on a grid ``supersample`` times finer than ``shape`` and sum-binned, so its only blur
    is the pixel's integration.

    Parameters
    ----------
    shape : int or (H, W)
        Output size in pixels (each at least 8).
    generator : torch.Generator, optional
        Source of every random choice (a fresh unseeded one when omitted).
    kind : {"mixed", "nuclei", "filaments", "puncta", "membranes"}
        What the scene is made of; "mixed" draws a random mixture and density.
    supersample : int
        Rendering factor (1 to 8).
    dtype : torch.dtype
        Of the returned tensor.

    Returns
    -------
    Tensor (H, W)
        Non-negative, maximum 1.

    Examples
    --------
    >>> image = scene((64, 64), generator=torch.Generator().manual_seed(0))
    >>> tuple(image.shape), float(image.max())
    ((64, 64), 1.0)
    """
    height, width = check_pair(shape, "shape", square=True)
    if min(height, width) < 8:
        raise ValueError(f"shape must be at least (8, 8), got {(height, width)}")
    if kind not in SCENE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(SCENE_KINDS)}, got {kind!r}")
    scale = check_int(supersample, "supersample", minimum=1)
    if scale > 8:
        raise ValueError(f"supersample must be between 1 and 8, got {supersample!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {describe(generator)}")
    generator = generator or torch.Generator().manual_seed(int(torch.seed() % 2**62))
    fine = (height * scale, width * scale)
    canvas = torch.zeros(fine, dtype=torch.float64)
    area = height * width / 128**2  # densities are per 128² output pixels
    density = float(_uniform(generator, 0.3, 2.5))  # sparse to dense fields
    if kind == "mixed":
        parts = torch.rand(4, generator=generator) < torch.tensor([0.7, 0.6, 0.6, 0.3])
        if not bool(parts.any()):
            parts[int(torch.randint(0, 4, (1,), generator=generator))] = True
    else:
        parts = torch.tensor([kind == k for k in SCENE_KINDS[1:]])
    membranes: list = []
    if parts[0]:
        _nuclei(canvas, max(1, int(round(4 * density * area))), scale, generator, membranes)
    outlines = membranes if parts[3] or parts[0] else []
    if parts[3]:  # free membranes (cells without a stained nucleus)
        for _ in range(max(1, int(round(3 * density * area)))):
            outlines.append((float(_uniform(generator, 0, fine[0])),
                             float(_uniform(generator, 0, fine[1])),
                             float(_uniform(generator, 0.08, 0.3)) * min(fine),
                             float(_uniform(generator, 0.5, 1.0)),
                             float(_uniform(generator, 0, math.pi))))
    n_filaments = max(1, int(round(12 * density * area))) if parts[1] else 0
    curves = _curves(n_filaments, fine, scale, generator, outlines)
    if curves:
        _draw_lines(canvas, curves, scale, generator)
    if parts[2]:
        _puncta(canvas, max(3, int(round(60 * density * area))), scale, generator)
    # binning: the sum over each output pixel (its integration), then the background
    binned = canvas.view(height, scale, width, scale).sum(dim=(1, 3)) / scale**2
    peak = binned.max()
    if peak > 0:
        binned = binned / peak
    background = float(_uniform(generator, 0.0, 0.15))
    if background > 0:
        variation = _smooth_noise((height, width), 0.25 * max(height, width), generator)
        binned = binned + background * (0.5 + 0.5 * variation)
    return (binned / binned.max().clamp_min(1e-12)).to(dtype)


def scenes(
    n: int,
    shape: Any = (128, 128),
    *,
    generator: torch.Generator | None = None,
    kind: str = "mixed",
    supersample: int = 4,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` scenes ``(n, H, W)`` from one generator (see :func:`scene`)."""
    n = check_int(n, "n", minimum=0)
    height, width = check_pair(shape, "shape", square=True)
    generator = generator or torch.Generator().manual_seed(int(torch.seed() % 2**62))
    out = torch.empty((n, height, width), dtype=dtype)
    for index in range(n):
        out[index] = scene((height, width), generator=generator, kind=kind,
                           supersample=supersample, dtype=dtype)
    return out
