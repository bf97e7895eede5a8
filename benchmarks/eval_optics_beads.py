"""Real bead z-stacks: fit defocus and aberrations on three planes, predict every other depth.

The WaveBlocks experiment (Page Vizcaíno et al., ICASSP 2020, Fig. 3) on psfmap's real data:
a :class:`psfmap.optics.Microscope` (Zernike pupil, Noll 5–22 free, defocus, lateral shift and
the axial scale between stage steps and focal shift) is fitted with ``psfmap.optics.fit``
(photometric NMSE) to three planes of a bead z-stack (the brightest plane and ±5 slices);
then the depth of every *other* plane is predicted by matching it against the fitted model's
focal stack (``psfmap.optics.estimate_depth``), and against the ideal (unaberrated,
nominal) model's. Truth: slice index × z-step, origin at the brightest plane.

Data (../shared/data/beads/, README there):
- ``psfextractor_beads_zstack.tif``: 34 × 512², 8-bit, NA 0.95, em 520 nm, xy 0.108,
  z 0.300 µm, 200 nm beads: the isolated beads are registered (sub-pixel, on the brightest
  plane) and averaged, and the model images a 200 nm ball;
- ``measured_psf_na0.85_520nm.tif``: 25 × 256², 16-bit, NA 0.85, 520 nm, n 1.0, xy 0.130,
  z 0.300 µm: one bead, cropped 65², imaged as a point.

A plane counts as *visible* when the bead's peak stands ≥ 5 noise standard deviations above
the background (decided from the data alone, before any depth is estimated); the median
error is reported over the visible planes and over all of them.

Run: .venv/bin/python benchmarks/eval_optics_beads.py [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage

from psfmap.optics import Camera, Microscope, ZernikeSource, estimate_depth, fit

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "beads"
FIGURES = Path(__file__).resolve().parent / "figures"


def _register(stack: np.ndarray, plane: int) -> np.ndarray:
    """Shift a bead crop so that its brightest plane's intensity-weighted centre is central."""
    image = np.clip(stack[plane] - np.median(stack), 0, None) ** 2
    rows, cols = np.indices(image.shape)
    centre = (np.array(image.shape) - 1) / 2
    cy, cx = (image * rows).sum() / image.sum(), (image * cols).sum() / image.sum()
    return ndimage.shift(stack, (0, centre[0] - cy, centre[1] - cx), order=3, mode="nearest")


def psfextractor(half: int = 32) -> dict:
    stack = tifffile.imread(DATA / "psfextractor_beads_zstack.tif").astype(np.float64)
    projection = stack.max(0)
    smooth = ndimage.uniform_filter(projection, 3)
    peaks = (smooth == ndimage.maximum_filter(smooth, 15)) & (smooth > np.median(smooth) + 10)
    rows, cols = np.nonzero(peaks)
    reference = int(np.argmax(stack.reshape(len(stack), -1).max(1)))
    crops = []
    margin = half + 4
    for y, x in zip(rows, cols):
        isolated = np.sum(np.hypot(rows - y, cols - x) < 2 * half) == 1
        inside = margin <= y < stack.shape[1] - margin and margin <= x < stack.shape[2] - margin
        if not (isolated and inside):
            continue
        window = projection[y - 3:y + 4, x - 3:x + 4]
        dy, dx = np.unravel_index(np.argmax(window), window.shape)
        y, x = y + dy - 3, x + dx - 3
        crop = stack[:, y - half - 2:y + half + 3, x - half - 2:x + half + 3]
        crops.append(_register(crop, reference)[:, 2:-2, 2:-2])
    crops = np.array(crops)
    corners = crops[:, :, :4, :4]
    beads = crops - np.median(corners)
    mean = beads.mean(0)
    noise = corners.std(axis=(0, 2, 3)).mean() / np.sqrt(len(crops))
    return {"name": f"psfextractor (mean of {len(crops)} beads)", "stack": mean,
            "reference": reference, "z_step": 0.3, "pixel_size": 0.108, "na": 0.95,
            "wavelength": 0.52, "immersion_index": 1.0, "bead": 0.2, "noise": float(noise),
            "field": 4 * half}


def pyotf(half: int = 32) -> dict:
    stack = tifffile.imread(DATA / "measured_psf_na0.85_520nm.tif").astype(np.float64)
    reference = int(np.argmax(stack.reshape(len(stack), -1).max(1)))
    y, x = np.unravel_index(np.argmax(stack[reference]), stack.shape[1:])
    corners = stack[:, :20, :20]
    crop = stack[:, y - half:y + half + 1, x - half:x + half + 1] - np.median(corners)
    return {"name": "pyotf measured PSF", "stack": crop, "reference": reference,
            "z_step": 0.3, "pixel_size": 0.130, "na": 0.85, "wavelength": 0.52,
            "immersion_index": 1.0, "bead": 0.0, "noise": float(corners.std()), "field": 128}


def _ball(size: int, diameter: float, pixel: float) -> torch.Tensor:
    """Projected ball of ``diameter`` µm (5 × 5 sub-samples a pixel), or a point."""
    rows, cols = np.indices((size, size)) - size // 2
    if diameter <= 0:
        return torch.tensor(((rows == 0) & (cols == 0)).astype(np.float32))
    image = np.zeros((size, size))
    for sy in (np.arange(5) - 2) / 5:
        for sx in (np.arange(5) - 2) / 5:
            r2 = ((rows + sy) * pixel) ** 2 + ((cols + sx) * pixel) ** 2
            image += np.sqrt(np.clip((diameter / 2) ** 2 - r2, 0, None))
    return torch.tensor(image / image.sum(), dtype=torch.float32)


def _microscope(data: dict, size: int) -> Microscope:
    source = ZernikeSource(data["field"], na=data["na"], wavelength=data["wavelength"],
                           pixel_size=data["pixel_size"], n_terms=22,
                           immersion_index=data["immersion_index"])
    return Microscope([source, Camera(crop=size)])


def run(data: dict, steps: int, spacing: int) -> dict:
    stack = torch.tensor(np.clip(data["stack"], 0, None), dtype=torch.float32)
    depth_count, size = stack.shape[0], stack.shape[-1]
    reference, step = data["reference"], data["z_step"]
    planes = [reference - spacing, reference, reference + spacing]
    offsets = [(p - reference) * step for p in planes]
    ball = _ball(size, data["bead"], data["pixel_size"])
    model = _microscope(data, size)
    params = ["source.zernike", "source.depth", "source.shift", "source.depth_scale"]
    rates = {"source.zernike": 0.01, "source.depth": 0.02, "source.shift": 0.01,
             "source.depth_scale": 0.02}
    start = time.perf_counter()
    report = fit(model, ball, stack[planes], params, depths=offsets, steps=steps, lr=rates,
                 photometric=True)
    seconds = time.perf_counter() - start
    truth = (np.arange(depth_count) - reference) * step
    candidates = torch.arange(-(depth_count + 2) * step, (depth_count + 2) * step + 1e-6,
                              step / 4)
    peaks = data["stack"].reshape(depth_count, -1).max(1)
    visible = peaks >= 5 * data["noise"]
    others = np.array([k not in planes for k in range(depth_count)])
    result = {"data": data["name"], "planes": planes, "fit_seconds": round(seconds, 1),
              "loss_start": report.loss[0], "loss_end": report.final_loss,
              "steps": report.steps, "parameters": report.to_dict()["after"],
              "truth": truth.tolist(), "visible": visible.tolist()}
    for name, microscope in (("fitted", model), ("ideal", _microscope(data, size))):
        estimate = estimate_depth(stack, microscope, candidates, objects=ball)
        depths = estimate.depths.numpy()
        errors = np.abs(depths - truth)
        result[name] = {
            "depths": depths.tolist(),
            "median_error_visible": float(np.median(errors[others & visible])),
            "median_error_all": float(np.median(errors[others])),
            "n_visible": int((others & visible).sum()), "n_all": int(others.sum()),
        }
    with torch.no_grad():
        result["_psfs"] = {"fitted": model.psf(torch.tensor(truth, dtype=torch.float32)
                                               ).numpy(),
                           "ideal": _microscope(data, size).psf(
                               torch.tensor(truth, dtype=torch.float32)).numpy()}
    return result


def figure(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 4, figsize=(15, 3.6 * len(results)),
                             squeeze=False)
    for row, (result, data) in enumerate(results):
        truth = np.array(result["truth"])
        axis = axes[row, 0]
        axis.plot(truth, truth, "k:", lw=1, label="truth")
        for name, style in (("fitted", "o-"), ("ideal", "s--")):
            axis.plot(truth, result[name]["depths"], style, ms=3,
                      label=f"{name} (median err {result[name]['median_error_visible']:.2f} "
                            "µm, visible planes)")
        axis.plot(truth[result["planes"]], truth[result["planes"]], "r*", ms=10,
                  label="fitted planes")
        visible = np.array(result["visible"])
        axis.fill_between(truth, truth.min(), truth.max(), where=~visible, color="0.9",
                          label="bead not visible")
        axis.set_xlabel("true depth (µm)")
        axis.set_ylabel("estimated depth (µm)")
        axis.set_title(result["data"], fontsize=9)
        axis.legend(fontsize=6)
        measured = np.clip(data["stack"], 0, None)
        centre = measured.shape[-1] // 2
        for column, (title, cube) in enumerate(
                (("measured xz", measured), ("fitted model xz", result["_psfs"]["fitted"]),
                 ("ideal model xz", result["_psfs"]["ideal"])), start=1):
            section = cube[:, centre, :]
            section = section / section.max()
            axes[row, column].imshow(section ** 0.4, cmap="magma", aspect="auto")
            axes[row, column].set_title(title + " (γ 0.4)", fontsize=9)
            axes[row, column].set_xlabel("x (px)")
            axes[row, column].set_ylabel("slice")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--spacing", type=int, default=5, help="slices between fitted planes")
    parser.add_argument("--half", type=int, default=32,
                        help="half-side of the psfextractor bead crops (px)")
    parser.add_argument("--only", default="psfextractor,pyotf")
    parser.add_argument("--json", default=str(FIGURES / "optics_beads.json"))
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found")
        return
    torch.manual_seed(0)
    results = []
    loaders = {"psfextractor": lambda: psfextractor(args.half), "pyotf": pyotf}
    for name in args.only.split(","):
        data = loaders[name]()
        result = run(data, args.steps, args.spacing)
        results.append((result, data))
        print(f"{result['data']}: planes {result['planes']}, NMSE {result['loss_start']:.3g} "
              f"-> {result['loss_end']:.3g} ({result['fit_seconds']} s); depth error median "
              f"(visible planes / all non-fitted planes): fitted "
              f"{result['fitted']['median_error_visible']:.3f} / "
              f"{result['fitted']['median_error_all']:.3f} µm, ideal "
              f"{result['ideal']['median_error_visible']:.3f} / "
              f"{result['ideal']['median_error_all']:.3f} µm "
              f"({result['fitted']['n_visible']} / {result['fitted']['n_all']} planes)",
              flush=True)
    figure(results, Path(args.json).with_suffix(".png"))
    summary = {"machine": f"{platform.processor() or platform.machine()}, "
                          f"{torch.get_num_threads()} threads, torch {torch.__version__}",
               "results": [{k: v for k, v in r.items() if not k.startswith("_")}
                           for r, _ in results]}
    Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
