"""Table V of the CNN paper with KNOWN PSFs: TV-RL gain (ΔSNR, ΔSSIM) on quadrant-wise blur.

Shajkofci & Liebling, "Spatially-variant CNN-based point spread function estimation for blind
deconvolution and depth estimation in optical microscopy", IEEE TIP 29 (2020), Table V, column
"gt" (deconvolution with the ground-truth PSFs): ΔSNR = 2.14 dB (Z-1), 2.24 dB (G-1).

Protocol: 256² real sharp images; each quadrant blurred by its own random PSF drawn uniformly
from the family (``psfmap.psf.model("gaussian1" | "zernike1")``, 33² px); Poisson–Gaussian noise;
TV-RL, 20 iterations, λ_TV = 0.1, with the true PSFs given (a) as the exact quadrant operator
(indicator weights) and (b) as a 2×2 PSF grid (``from_psf_grid``, the overlap-add model of the
paper). ΔSNR / ΔSSIM = metric(restored) − metric(blurred noisy input), against the sharp image.
Also reported: λ_TV = 0.01 and plain RL, and the time of one restoration compared with
scikit-image's space-invariant ``richardson_lucy`` (same iterations) in the same process.

Run: ``.venv/bin/python benchmarks/bench_table5_known_psf.py [--images 8] [--seed 0]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from psfmap.metrics import snr, ssim
from psfmap.training import SHARED_DATA

PAPER_GT = {"zernike1": 2.14, "gaussian1": 2.24}
SIZE = 256
ITERATIONS = 20
PEAK_PHOTONS = 1000.0
READ_NOISE = 2.0  # photo-electrons RMS
SHARED = SHARED_DATA


def sharp_images(count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """256² crops of real sharp fluorescence images (shared data), else scikit-image samples."""
    import tifffile

    crops = []
    neuron = SHARED / "sharp" / "confocal_neuron_zstack.tif"
    airyscan = SHARED / "sharp" / "airyscan_TCYX.tif"
    if neuron.is_file() and airyscan.is_file():
        stack = tifffile.imread(neuron)  # (50, 256, 256)
        crops += [stack[z] for z in (15, 20, 25, 30)]
        frames = tifffile.imread(airyscan)  # (3, 2, 480, 480)
        for t in range(frames.shape[0]):
            for c in range(frames.shape[1]):
                r0, c0 = rng.integers(0, frames.shape[-1] - SIZE, size=2)
                crops.append(frames[t, c, r0 : r0 + SIZE, c0 : c0 + SIZE])
    else:
        from skimage import data

        cells = data.cells3d()[:, 1]  # (60, 256, 256) nuclei channel
        crops += [cells[z] for z in range(10, 60, 6)]
    images = []
    for crop in crops[:count]:
        crop = crop.astype(np.float64)
        low, high = np.percentile(crop, (0.5, 99.9))
        images.append(np.clip((crop - low) / (high - low), 0, None))
    return images


def quadrant_operator(psfs: torch.Tensor):
    """Exact forward model: quadrant q blurred by psfs[q] (indicator weights)."""
    from psfmap.operators import ProductConvolution

    weights = torch.zeros(4, SIZE, SIZE, dtype=psfs.dtype)
    half = SIZE // 2
    for q, (rows, cols) in enumerate(
        [
            (slice(0, half), slice(0, half)),
            (slice(0, half), slice(half, None)),
            (slice(half, None), slice(0, half)),
            (slice(half, None), slice(half, None)),
        ]
    ):
        weights[q, rows, cols] = 1.0
    return ProductConvolution(psfs, weights)


def main() -> None:
    from psfmap.operators import from_psf_grid
    from psfmap.psf import model
    from psfmap.restore import richardson_lucy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    images = sharp_images(args.images, rng)
    settings = [("exact", 0.1), ("grid", 0.1), ("exact", 0.01), ("grid", 0.01), ("exact", 0.0)]
    print(
        f"{len(images)} images {SIZE}², {ITERATIONS} iterations, Poisson peak {PEAK_PHOTONS:g} "
        f"photons + Gaussian read noise {READ_NOISE:g} e-, seed {args.seed}"
    )
    timing = {"ours": 0.0, "skimage": 0.0, "runs": 0}
    for family_name in ("zernike1", "gaussian1"):
        family = model(family_name)
        gains = {s: ([], []) for s in settings}
        for image in images:
            params = family.sample(4, generator=generator)
            psfs = family(params).to(torch.float64)
            exact = quadrant_operator(psfs)
            blurred = exact(torch.from_numpy(image)).numpy()
            counts = rng.poisson(np.clip(blurred, 0, None) * PEAK_PHOTONS)
            noisy = np.clip(counts + rng.normal(0, READ_NOISE, blurred.shape), 0, None)
            noisy = noisy / PEAK_PHOTONS
            base_snr, base_ssim = snr(image, noisy), ssim(image, noisy)
            grid = from_psf_grid(psfs.reshape(2, 2, *psfs.shape[-2:]), image.shape)
            for where, tv in settings:
                operator = exact if where == "exact" else grid
                start = time.perf_counter()
                restored = richardson_lucy(noisy, operator, iterations=ITERATIONS, tv=tv)
                if where == "exact" and tv == 0.1:
                    timing["ours"] += time.perf_counter() - start
                gains[(where, tv)][0].append(snr(image, restored) - base_snr)
                gains[(where, tv)][1].append(ssim(image, restored) - base_ssim)
            from skimage.restoration import richardson_lucy as skimage_rl

            start = time.perf_counter()
            skimage_rl(noisy, psfs[0].numpy(), num_iter=ITERATIONS, clip=False)
            timing["skimage"] += time.perf_counter() - start
            timing["runs"] += 1
        print(f"{family_name} (paper 'gt': ΔSNR {PAPER_GT[family_name]:.2f} dB)")
        for (where, tv), (d_snr, d_ssim) in gains.items():
            model_name = "exact quadrants" if where == "exact" else "2x2 PSF grid"
            label = f"{'TV-RL' if tv else 'RL'} λ={tv:g}, {model_name}"
            print(
                f"  {label:36s} ΔSNR {np.mean(d_snr):5.2f} ± {np.std(d_snr):4.2f} dB   "
                f"ΔSSIM {np.mean(d_ssim):+.3f} ± {np.std(d_ssim):.3f}"
            )
    ours, theirs = timing["ours"] / timing["runs"], timing["skimage"] / timing["runs"]
    print(
        f"time per restoration (TV-RL, exact 4-term operator): {ours:.3f} s; scikit-image RL "
        f"(space-invariant, same iterations): {theirs:.3f} s; ratio {ours / theirs:.2f}x"
    )


if __name__ == "__main__":
    main()
