"""Evaluation of 3-D calibration from bead z-stacks (issue 20, item 4).

1. Synthetic: beads at 4–20 µm depth in water seen through an NA 1.0 oil objective (widefield
   PSFs through focus with the Gibson–Lanni depth aberration), astigmatism varying across
   the field, Poisson noise. Relative operator error ``‖H x − Ĥ x‖ / ‖H x‖`` of the
   calibrated operator on a test volume of sparse point sources lying within the beads' depth
   range (target ≤ 5 %), against one invariant 3-D PSF (the mean of the clean bead patches)
   measured in the same process.
2. Real z-stacks (``beads/psfextractor_beads_zstack.tif``, ``beads/leica_confocal_beads_zstack.tif``
   under ``psfmap.training.SHARED_DATA``): every 4th clean bead (in detection order) is held
   out, the operator is calibrated on the others, and each held-out bead's normalised patch
   is compared (relative L2) with the calibrated PSF at its voxel and with one invariant 3-D
   PSF, the mean of the training patches. The noise floor is the relative L2 norm of the
   patch noise alone (``noise · √voxels / ‖patch‖``).

Figures (XY/XZ/YZ views of the PSFs at several depths and field positions) go to ``--out``.

Run:  .venv/bin/python benchmarks/eval_calibrate_volume.py [--out DIR] [--skip-synthetic]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from psfmap.calibrate import CalibrationOptions
from psfmap.calibrate.volume_calibration import (
    calibrate_volume,
    collect_volume_patches,
    fit_volume_operator,
    resolve_options,
)
from psfmap.calibrate.volume_figures import plot_volume_psfs
from psfmap.calibrate.volume_synthetic import point_volume, synthetic_bead_volume
from psfmap.io import read_image
from psfmap.operators import Convolution
from psfmap.orthoviews import save_orthogonal_views
from psfmap.training import SHARED_DATA

# optics from the data folder's README (used when the file's metadata says nothing)
STACKS = {
    "psfextractor_beads_zstack.tif": {"z_step": 0.300, "pixel_size": 0.108},
    "leica_confocal_beads_zstack.tif": {"z_step": 0.09997, "pixel_size": 0.04435},
}


def relative(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((reference - other).norm() / reference.norm())


def synthetic(out: Path) -> None:
    shape = (52, 160, 160)
    start = time.perf_counter()
    sample = synthetic_bead_volume(shape, z_step=0.4, grid=(5, 3), psf_shape=(13, 15, 15),
                                   spacing=22, seed=0)
    rendered = time.perf_counter()
    settings = {"psf_size": 19, "psf_depth": 15, "psf_sigma": 1.0, "psf_sigma_z": 1.5,
                "min_coverage": 0.2}
    operator = calibrate_volume(sample.stack, z_step=0.4, pixel_size=0.13, **settings)
    calibrated = time.perf_counter()
    report = operator.metadata["calibration"]
    low, high = report["bead_planes"]
    volume = point_volume(shape, seed=2)
    inside = volume.copy()
    inside[: int(np.ceil(low))] = 0
    inside[int(high) + 1:] = 0
    patches = collect_volume_patches(sample.stack, CalibrationOptions(**settings))
    mean = Convolution(torch.from_numpy(np.clip(patches.patches.mean(axis=0), 0, None)).float())
    print(f"synthetic: {len(sample.positions)} beads placed, {report['n_beads']} clean, depths "
          f"{low * 0.4:.1f}–{high * 0.4:.1f} µm, I = {report['n_eigen']}, grid {report['grid']}; "
          f"render {rendered - start:.1f} s, calibrate {calibrated - rendered:.1f} s")
    for name, test in (("within the beads' depths", inside), ("whole volume", volume)):
        x = torch.from_numpy(test)
        truth = sample.operator.forward(x)
        error = relative(truth, operator.forward(x))
        invariant = relative(truth, mean.forward(x))
        print(f"  operator error ({name}): calibrated {error:.2%}, invariant mean bead PSF "
              f"{invariant:.2%} (ratio {invariant / error:.1f}x)")
    centre = (shape[1] // 2, shape[2] // 2)
    planes = np.linspace(np.ceil(low), np.floor(high), 3).astype(int)
    volumes, titles = [], []
    for z in planes:
        truth = sample.operator.psf_at(int(z), *centre).numpy()
        padded = np.zeros(operator.kernel_shape)
        offset = [(a - b) // 2 for a, b in zip(operator.kernel_shape, truth.shape)]
        padded[offset[0]:offset[0] + truth.shape[0], offset[1]:offset[1] + truth.shape[1],
               offset[2]:offset[2] + truth.shape[2]] = truth
        volumes += [padded, np.clip(operator.psf_at(int(z), *centre).numpy(), 0, None)]
        titles += [f"true {z * 0.4:.1f} µm", f"calibrated {z * 0.4:.1f} µm"]
    path = save_orthogonal_views(out / "calibrate_volume_synthetic.png", volumes, titles,
                                 z_step=0.4, pixel_size=0.13,
                                 at=tuple(n // 2 for n in operator.kernel_shape), gamma=0.5)
    print(f"  figure: {path}")


def real(name: str, out: Path, every: int = 4) -> None:
    path = SHARED_DATA / "beads" / name
    if not path.is_file():
        print(f"{name}: not found under the shared data folder, skipped")
        return
    stack, metadata = read_image(path)
    z_step = metadata.get("z_step") or STACKS[name]["z_step"]
    pixel_size = metadata.get("pixel_size") or STACKS[name]["pixel_size"]
    start = time.perf_counter()
    saturation = float(np.iinfo(stack.dtype).max) if stack.dtype.kind in "ui" else None
    options = resolve_options(stack.astype(np.float32), CalibrationOptions(saturation=saturation))
    patches = collect_volume_patches(stack, options)
    held = np.arange(len(patches)) % every == every - 1
    operator = fit_volume_operator(patches.select(~held), stack.shape, options,
                                   voxel_aspect=z_step / pixel_size,
                                   metadata={"z_step": z_step, "pixel_size": pixel_size})
    elapsed = time.perf_counter() - start
    invariant = patches.patches[~held].mean(axis=0)
    invariant /= invariant.sum()

    def errors(mask):
        model, mean, floor = [], [], []
        for patch, position, noise in zip(patches.patches[mask], patches.positions[mask],
                                          patches.noise[mask]):
            voxel = np.clip(np.round(position).astype(int), 0, np.array(stack.shape) - 1)
            predicted = operator.psf_at(*voxel).double().numpy()
            predicted /= predicted.sum()
            norm = np.linalg.norm(patch)
            model.append(np.linalg.norm(patch - predicted) / norm)
            mean.append(np.linalg.norm(patch - invariant) / norm)
            floor.append(noise * np.sqrt(patch.size) / norm)
        return np.array(model), np.array(mean), np.array(floor)

    report = operator.metadata["calibration"]
    print(f"{name}: {stack.shape} voxels {z_step:g}/{pixel_size:g} µm, σ = "
          f"{options.psf_sigma:.2f} px, σ_z = {options.psf_sigma_z:.2f} planes, patches "
          f"{tuple(report['psf_shape'])}; {len(patches)} clean beads of "
          f"{report['detected']} detected: {int((~held).sum())} training, {int(held.sum())} "
          f"held out; I = {report['n_eigen']}, depth-variant: {report['depth_variant']} "
          f"(bead depth spread {report['bead_depth_spread']:.1f} planes), grid {report['grid']}; "
          f"{elapsed:.1f} s")
    for label, mask in (("held-out", held), ("training", ~held)):
        model, mean, floor = errors(mask)
        print(f"  {label} beads, relative L2 (median / mean): calibrated "
              f"{np.median(model):.1%} / {model.mean():.1%}, invariant mean PSF "
              f"{np.median(mean):.1%} / {mean.mean():.1%}, noise floor {np.median(floor):.1%}; "
              f"calibrated better on {np.mean(model < mean):.0%} of beads")
    figure = plot_volume_psfs(operator, out / f"calibrate_volume_{Path(name).stem}.png")
    print(f"  figure: {figure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("calibrate_volume_out"),
                        help="folder for the figures")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    if not args.skip_synthetic:
        synthetic(args.out)
    if not args.skip_real:
        for name in STACKS:
            real(name, args.out)


if __name__ == "__main__":
    main()
