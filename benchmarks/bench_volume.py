"""Volumes: speed against scikit-image, quality on a depth-variant volume, the real DAPI stack.

    .venv/bin/python benchmarks/bench_volume.py speed     # 64x256x256, 21x17x17 PSF, 20 it.
    .venv/bin/python benchmarks/bench_volume.py quality   # synthetic depth-variant widefield
    .venv/bin/python benchmarks/bench_volume.py dapi      # real DAPI z-stack, 3D vs 2D views
    .venv/bin/python benchmarks/bench_volume.py accel     # Biggs-Andrews saving

Every ratio is measured in one process on the same machine; results print as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from psfmap.metrics import snr
from psfmap.operators import Convolution, from_psf_grid
from psfmap.psf.through_focus import depth_series, through_focus
from psfmap.restore import richardson_lucy
from psfmap.restore.volume import richardson_lucy_volume

FIGURES = Path(__file__).parent / "figures"


def report(**values) -> None:
    values["machine"] = (f"{platform.processor() or platform.machine()}, "
                         f"{torch.get_num_threads()} threads")
    print(json.dumps(values), flush=True)


def _timed(function, repeat: int = 1) -> float:
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


# ---------------------------------------------------------------------------- speed
def speed(iterations: int = 20, repeat: int = 1) -> None:
    """64 x 256 x 256, 21 x 17 x 17 PSF: scikit-image's n-D RL vs psfmap's (one process).

    With ``repeat`` > 1 the solvers run in turn ``repeat`` times and each keeps its best time,
    so that a burst of load from other jobs does not fall on one solver only."""
    from skimage.restoration import richardson_lucy as sk_rl

    rng = np.random.default_rng(0)
    shape = (64, 256, 256)
    psf = through_focus(17, 21, na=1.2, wavelength=0.52, pixel_size=0.1, z_step=0.25,
                        immersion_index=1.33).numpy()
    volume = (rng.random(shape) * 100).astype(np.float32)
    grid = depth_series(17, 21, np.linspace(0, 20, 8), na=1.2, wavelength=0.52,
                        pixel_size=0.1, z_step=0.25, immersion_index=1.515,
                        sample_index=1.33)
    variant = from_psf_grid(grid, shape)
    compressed = variant.compress(rank=4)
    solvers = {
        "skimage": lambda: sk_rl(volume, psf, num_iter=iterations, clip=False),
        "invariant": lambda: richardson_lucy(volume, Convolution(psf), iterations=iterations),
        "depth_variant_8": lambda: richardson_lucy(volume, variant, iterations=iterations),
        "compressed_4": lambda: richardson_lucy(volume, compressed, iterations=iterations),
    }
    load_before = os.getloadavg()[0]
    best = dict.fromkeys(solvers, math.inf)
    for _ in range(repeat):
        for name, function in solvers.items():
            best[name] = min(best[name], _timed(function))
    sk = best["skimage"]
    report(test="speed", shape=shape, psf=list(psf.shape), iterations=iterations,
           repeat=repeat, skimage_s=round(sk, 2), invariant_s=round(best["invariant"], 2),
           depth_variant_8_s=round(best["depth_variant_8"], 2),
           compressed_4_s=round(best["compressed_4"], 2),
           compression_error=round(compressed.compression_error, 4),
           invariant_vs_skimage=round(best["invariant"] / sk, 3),
           variant_vs_skimage=round(best["depth_variant_8"] / sk, 3),
           compressed_vs_skimage=round(best["compressed_4"] / sk, 3),
           load_1min=[round(load_before, 2), round(os.getloadavg()[0], 2)])


# ---------------------------------------------------------------------------- quality
def procedural_volume(shape=(48, 96, 96), seed: int = 0, fine: int = 2) -> torch.Tensor:
    """Nuclei (textured ellipsoids), filaments (random 3D curves) and puncta, rendered
    ``fine`` times finer on every axis and sum-binned: sharp by construction. Max 1."""
    g = torch.Generator().manual_seed(seed)
    big = tuple(n * fine for n in shape)
    zz, yy, xx = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in big),
                                indexing="ij")
    volume = torch.zeros(big)
    for _ in range(5):  # nuclei
        centre = [float(torch.rand(1, generator=g)) * n for n in big]
        radii = [fine * float(4 + 6 * torch.rand(1, generator=g)) * s
                 for s in (0.6, 1.0, 1.0)]
        r2 = sum(((c - m) / r) ** 2 for c, m, r in zip((zz, yy, xx), centre, radii))
        texture = 0.6 + 0.4 * torch.sin(xx / (3.0 * fine) + float(torch.rand(1, generator=g))
                                        * 6) * torch.cos(yy / (2.5 * fine))
        volume += 0.5 * torch.sigmoid((1 - r2) * 8) * texture
    for _ in range(12):  # filaments: persistent random walks
        position = torch.tensor([float(torch.rand(1, generator=g)) * n for n in big])
        direction = torch.randn(3, generator=g)
        for _ in range(40 * fine):
            direction = direction + 0.3 * torch.randn(3, generator=g)
            direction = direction / direction.norm()
            position = position + direction
            index = position.round().long()
            if all(0 <= int(i) < n for i, n in zip(index, big)):
                volume[tuple(index)] += 1.0
    for _ in range(60):  # puncta
        index = tuple(int(torch.randint(0, n, (1,), generator=g)) for n in big)
        volume[index] += float(1 + 3 * torch.rand(1, generator=g))
    binned = volume.reshape(shape[0], fine, shape[1], fine, shape[2], fine).sum(dim=(1, 3, 5))
    return binned / binned.max()


def quality(iterations: int = 40, photons: float = 200.0) -> None:
    """Depth-variant widefield volume (oil objective into water, 0-20 µm deep), Poisson noise:
    depth-variant 3D RL vs invariant 3D RL (mid-depth PSF) vs plane-by-plane 2D RL."""
    shape = (48, 96, 96)
    z_step, pixel = 0.42, 0.1  # 48 planes x 0.42 µm = 20 µm
    optics = dict(na=1.3, wavelength=0.52, pixel_size=pixel, z_step=z_step,
                  immersion_index=1.515, sample_index=1.33)
    truth = procedural_volume(shape) * photons
    depths = np.linspace(0, shape[0] * z_step, 12)
    true_grid = depth_series(25, 21, depths, **optics)  # the blur: 12 depths
    blurred = from_psf_grid(true_grid, shape).forward(truth).clamp(min=0)
    noisy = torch.poisson(blurred, generator=torch.Generator().manual_seed(1))
    model_grid = depth_series(25, 21, np.linspace(0, shape[0] * z_step, 6), **optics)
    variant = from_psf_grid(model_grid, shape)  # the model: 6 depths (no inverse crime)
    middle = depth_series(25, 21, [shape[0] * z_step / 2], **optics)[0, 0, 0]
    results = {}
    start = time.perf_counter()
    results["variant_3d"] = richardson_lucy(noisy, variant, iterations=iterations)
    t_variant = time.perf_counter() - start
    results["invariant_3d"] = richardson_lucy(noisy, Convolution(middle), iterations=iterations)
    focus = middle[middle.shape[0] // 2]
    results["plane_by_plane_2d"] = richardson_lucy(noisy, Convolution(focus / focus.sum()),
                                                   iterations=iterations)
    results["accelerated_variant_3d"] = richardson_lucy_volume(
        noisy, variant, iterations=iterations // 2, accelerate=True)
    scores = {name: round(snr(truth, est), 2) for name, est in results.items()}
    scores["blurred"] = round(snr(truth, noisy), 2)
    report(test="quality", shape=shape, iterations=iterations, photons=photons,
           variant_seconds=round(t_variant, 1), snr_db=scores,
           gain_vs_invariant_db=round(scores["variant_3d"] - scores["invariant_3d"], 2),
           gain_vs_2d_db=round(scores["variant_3d"] - scores["plane_by_plane_2d"], 2))
    from psfmap.orthoviews import save_orthogonal_views

    FIGURES.mkdir(exist_ok=True)
    at = (shape[0] * 3 // 4, shape[1] // 2, shape[2] // 2)
    save_orthogonal_views(FIGURES / "volume_quality_views.png",
                          [truth, noisy, results["variant_3d"], results["invariant_3d"],
                           results["plane_by_plane_2d"]],
                          ["truth", "blurred + noise", "depth-variant 3D RL",
                           "invariant 3D RL", "plane-by-plane 2D RL"],
                          z_step=z_step, pixel_size=pixel, at=at)


# ---------------------------------------------------------------------------- acceleration
def acceleration(iterations: int = 40) -> None:
    """Iterations of Biggs-Andrews RL to reach plain RL's error after ``iterations``."""
    shape = (32, 64, 64)
    truth = procedural_volume(shape, seed=2) * 100
    op = Convolution(through_focus(17, 15, na=1.2, wavelength=0.52, pixel_size=0.1,
                                   z_step=0.3, immersion_index=1.33))
    blurred = op.forward(truth)

    def error(estimate):
        return float((estimate - truth).norm() / truth.norm())

    target = error(richardson_lucy_volume(blurred, op, iterations=iterations))
    needed = None
    for k in range(2, iterations + 1, 2):
        if error(richardson_lucy_volume(blurred, op, iterations=k, accelerate=True)) <= target:
            needed = k
            break
    report(test="acceleration", shape=shape, plain_iterations=iterations,
           plain_error=round(target, 4), accelerated_iterations_to_match=needed,
           saving=None if needed is None else round(iterations / needed, 2))
    # the same loop on 2D images: a projection of a procedural volume, Gaussian blur
    from psfmap.psf import gaussian

    truth_2d = procedural_volume((8, 128, 128), seed=3).sum(dim=0) * 20
    op_2d = Convolution(gaussian(15, 2.0))
    blurred_2d = op_2d.forward(truth_2d)
    truth = truth_2d  # error() compares with this
    target = error(richardson_lucy(blurred_2d, op_2d, iterations=iterations))
    needed = next((k for k in range(2, iterations + 1, 2) if error(richardson_lucy(
        blurred_2d, op_2d, iterations=k, accelerate=True)) <= target), None)
    report(test="acceleration_2d", shape=list(truth_2d.shape), plain_iterations=iterations,
           plain_error=round(target, 4), accelerated_iterations_to_match=needed,
           saving=None if needed is None else round(iterations / needed, 2))


# ---------------------------------------------------------------------------- real data
def dapi(iterations: int = 30) -> None:
    """The real widefield DAPI stack (NA 1.45, 461 nm, n 1.512, 0.130/0.300 µm) restored in 3D
    with a model PSF, next to plane-by-plane 2D restoration (orthogonal views)."""
    import tifffile

    from psfmap.orthoviews import save_orthogonal_views
    from psfmap.training.sources import SHARED_DATA  # ../shared/data or $PSFMAP_SHARED_DATA

    path = SHARED_DATA / "blurred" / "widefield_dapi_zstack.tif"
    if not path.exists():
        print(f"skipped: {path} not found")
        return
    stack = tifffile.imread(path).astype(np.float32)
    offset = float(np.percentile(stack, 1))
    psf = through_focus(33, 31, na=1.45, wavelength=0.461, pixel_size=0.13, z_step=0.3,
                        immersion_index=1.512)
    start = time.perf_counter()
    volume = richardson_lucy(stack, Convolution(psf), iterations=iterations, background=offset)
    t3 = time.perf_counter() - start
    focus = psf[psf.shape[0] // 2]
    start = time.perf_counter()
    planes = richardson_lucy(stack, Convolution(focus / focus.sum()), iterations=iterations,
                             background=offset)
    t2 = time.perf_counter() - start

    def axial_contrast(v):  # how much the brightest plane stands out of its neighbours in z
        profile = np.asarray(v).reshape(v.shape[0], -1).max(axis=1)
        return float(profile.max() / np.median(profile))

    FIGURES.mkdir(exist_ok=True)
    save_orthogonal_views(FIGURES / "volume_dapi_views.png", [stack, planes, volume],
                          ["DAPI z-stack (raw)", "plane-by-plane 2D RL", "3D RL, model PSF"],
                          z_step=0.3, pixel_size=0.13, gamma=0.7)
    report(test="dapi", shape=list(stack.shape), iterations=iterations, seconds_3d=round(t3, 1),
           seconds_2d=round(t2, 1), axial_peak_to_median_raw=round(axial_contrast(stack), 2),
           axial_peak_to_median_2d=round(axial_contrast(planes), 2),
           axial_peak_to_median_3d=round(axial_contrast(volume), 2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("speed", "quality", "dapi", "accel", "all"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="speed: run the solvers in turn this many times, keep each best")
    arguments = parser.parse_args()
    if arguments.threads is not None:
        torch.set_num_threads(arguments.threads)
    for name, function in (("speed", lambda: speed(repeat=arguments.repeat)),
                           ("quality", quality), ("accel", acceleration), ("dapi", dapi)):
        if arguments.which in (name, "all"):
            function()
