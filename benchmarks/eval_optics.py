"""psfmap.optics: analytic validation and the WaveBlocks synthetic experiments (Table 1).

Sections (``--only`` picks some):

- ``analytic``: Gaussian beam waist and peak, square-aperture Fresnel diffraction against the
  Fresnel integrals, z then −z round trip, energy, the Airy first zero, gradients.
- ``a`` — PSF translation, scale and defocus recovered from three defocused images (−50, 0,
  +50 µm) of a resolution target. Image-side optics of a 20×/0.45 objective (NA 0.0225 at
  the camera, λ 0.52 µm, 6.5 µm pixels, a 48² field, a 47² PSF, a 64² target): a Zernike
  source (in focus), a propagation over the
  unknown defocus d ∈ ±[200, 1000] µm, a camera with gain s ∈ 1 ± 0.3; the PSF translated by
  t ∈ [−20, 20]² px. Fitted: ``source.shift``, ``propagation.distance``, ``camera.gain``,
  started from t₀ given by the cross-correlation peak of the observed and the unshifted
  simulated image, s₀ = 1 and d₀ the defocus of least loss on a 200 µm grid over ±1100 µm
  (no gradient; defocus ±d blur alike, so a gradient from 0 could pick the wrong sign).
- ``b`` — a phase mask recovered in the 4f system (source → lens → SLM → lens → camera,
  f = 100 mm): cubic α(x³ + y³) or circular gradient α·r (x, y, r in pupil radii,
  |α| ∈ [π, 4π], random sign); the mask is recovered per SLM pixel (48² unknowns, started
  flat) from three images of the target at focus offsets (−200, 0, +200) µm, whose defocus
  diversity tells the mask from its twin −φ(−x) (same in-focus PSF).

Metrics: NMSE(images) = ‖ŝ − o‖² / ‖o‖² averaged over the three images (noise-free
simulations); parameter NMSE: (a) the mean over translation, scale and defocus of
‖p̂ − p‖² / ‖p‖²; (b) ‖φ̂ − φ‖² / ‖φ‖² over the pupil, φ̂ − φ wrapped to (−π, π] and its
mean (piston, which changes nothing) removed. The paper's values: images 9.34e-3 (a),
6.30e-2 (b); parameters 1.5 (a), 0.51 (b).

Run: .venv/bin/python benchmarks/eval_optics.py [--cases 100] [--only analytic,a,b]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import fresnel

from psfmap.optics import (
    Camera,
    Lens,
    Microscope,
    PhaseMask,
    Propagation,
    ZernikeSource,
    affine_match,
    circular_gradient,
    cubic_phase,
    fit,
    intensity,
    lens,
    nmse,
    propagate,
)

FIGURES = Path(__file__).resolve().parent / "figures"
NA, WAVELENGTH, PIXEL = 0.45 / 20, 0.52, 6.5
PAPER = {"a": {"images": 9.34e-3, "params": 1.5}, "b": {"images": 6.30e-2, "params": 0.51}}


# ---------------------------------------------------------------------- analytic
def analytic() -> dict:
    torch.set_default_dtype(torch.float64)
    out = {}
    n, pitch, waist, wl = 128, 0.5, 5.0, 0.5
    x = (torch.arange(n) - n // 2) * pitch
    y, x = torch.meshgrid(x, x, indexing="ij")
    beam = torch.exp(-(x**2 + y**2) / waist**2).to(torch.complex128)
    rayleigh = math.pi * waist**2 / wl
    worst_w = worst_p = 0.0
    for method in ("angular-spectrum", "rayleigh-sommerfeld"):
        # the sampled Rayleigh–Sommerfeld kernel needs z >= 111 µm on this grid (it refuses
        # shorter distances): 0.5 zR = 79 µm is for the angular spectrum only
        for ratio in ((0.5, 1.0, 2.0) if method == "angular-spectrum" else (1.0, 2.0)):
            z = ratio * rayleigh
            i = intensity(propagate(beam, z, wavelength=wl, pixel_size=pitch, method=method))
            w = 2 * torch.sqrt((i * x**2).sum() / i.sum())
            expected = waist * math.sqrt(1 + ratio**2)
            worst_w = max(worst_w, abs(float(w) / expected - 1))
            peak = float(i.max() / intensity(beam).max())
            worst_p = max(worst_p, abs(peak / (waist / expected) ** 2 - 1))
    out["gaussian_waist_error"], out["gaussian_peak_error"] = worst_w, worst_p
    n, pitch, a, z = 256, 1.0, 40.0, 800.0
    xs = (torch.arange(n) - n // 2 + 0.5) * pitch
    yy, xx = torch.meshgrid(xs, xs, indexing="ij")
    square = ((xx.abs() < a) & (yy.abs() < a)).to(torch.complex128)
    got = intensity(propagate(square, z, wavelength=wl, pixel_size=pitch)).numpy()
    s = math.sqrt(2 / (wl * z))
    s1, c1 = fresnel(s * (a - xs.numpy()))
    s2, c2 = fresnel(s * (-a - xs.numpy()))
    profile = ((c1 - c2) ** 2 + (s1 - s2) ** 2) / 2
    exact = np.outer(profile, profile)
    out["fresnel_max_error"] = float(np.abs(got - exact).max() / exact.max())
    there = propagate(beam, 40.0, wavelength=wl, pixel_size=0.5)
    back = propagate(there, -40.0, wavelength=wl, pixel_size=0.5)
    out["round_trip_error"] = float((back - beam).abs().norm() / beam.abs().norm())
    noise = torch.randn(64, 64, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    moved = propagate(noise, 123.0, wavelength=wl, pixel_size=0.5, padding="none")
    out["energy_error"] = abs(float(intensity(moved).sum() / intensity(noise).sum()) - 1)
    disk, diameter, focal = torch.ones(512, 512, dtype=torch.complex128), 32.0, 5000.0
    airy, du = lens(disk, focal, wavelength=wl, pixel_size=1.0, aperture=diameter)
    row = intensity(airy)[256, 256:].numpy()
    expected = 1.22 * wl * focal / diameter
    k = int(np.argmin(row[: int(1.5 * expected / du)]))
    zero = (k + 0.5 * (row[k - 1] - row[k + 1]) / (row[k - 1] - 2 * row[k] + row[k + 1])) * du
    out["airy_zero_error"] = abs(zero / expected - 1)
    field = torch.randn(6, 6, dtype=torch.complex128, requires_grad=True)
    distance = torch.tensor(3.0, requires_grad=True)
    out["gradcheck"] = bool(torch.autograd.gradcheck(
        lambda u, d: propagate(u, d, wavelength=0.65, pixel_size=0.25, padding="none"),
        (field, distance)))
    torch.set_default_dtype(torch.float32)
    return out


# ---------------------------------------------------------------------- scenes
def target(size: int = 64) -> torch.Tensor:
    """A resolution target: bar triplets of periods 2–6 px both ways, a square, a cross."""
    image = np.zeros((size, size), dtype=np.float32)
    column = 3
    for period in (2, 3, 4, 5, 6):
        for bar in range(3):
            start = column + bar * period
            image[4:20, start:start + max(1, period // 2)] = 1.0
            image[start + 24:start + 24 + max(1, period // 2), 4:20] = 1.0
        column += 3 * period + 2
    image[30:40, 30:40] = 0.6
    image[46:58, 50] = image[52, 44:57] = 1.0
    image[44:60, 24:40] = np.indices((16, 16)).sum(0) % 8 < 4
    return torch.from_numpy(image)


def _correlation_shift(observed: torch.Tensor, simulated: torch.Tensor) -> tuple[int, int]:
    spectrum = torch.fft.fft2(observed - observed.mean()) * torch.fft.fft2(
        simulated - simulated.mean()).conj()
    peak = int(torch.argmax(torch.fft.ifft2(spectrum).real))
    size = observed.shape[-1]
    dy, dx = peak // size, peak % size
    return (dy - size if dy > size // 2 else dy), (dx - size if dx > size // 2 else dx)


def case_a(rng: np.random.Generator, obj: torch.Tensor, steps: int) -> dict:
    shift_px = rng.uniform(-20, 20, 2)
    scale = rng.uniform(0.7, 1.3)
    defocus = rng.choice([-1, 1]) * rng.uniform(200, 1000)
    offsets = [-50.0, 0.0, 50.0]

    def microscope(shift, distance, gain):
        return Microscope([
            ZernikeSource(48, na=NA, wavelength=WAVELENGTH, pixel_size=PIXEL,
                          shift=tuple(shift)),
            Propagation(distance, padding="band-limit"), Camera(crop=47, gain=gain)],
            focus="propagation")

    with torch.no_grad():
        images = microscope(shift_px * PIXEL, defocus, scale)(obj, offsets)
    # start: the defocus of least loss on a coarse grid (no gradient), the shift from the
    # cross-correlation with the unshifted model there
    best = None
    with torch.no_grad():
        for start in np.arange(-1100.0, 1101.0, 200.0):
            plain = microscope((0.0, 0.0), start, 1.0)(obj, [0.0])[0]
            dy, dx = _correlation_shift(images[1], plain)
            model = microscope((dy * PIXEL, dx * PIXEL), start, 1.0)
            loss = float(nmse(affine_match(model(obj, offsets), images), images).mean())
            if best is None or loss < best[0]:
                best = (loss, model)
    model = best[1]
    report = fit(model, obj, images, ["source.shift", "propagation.distance", "camera.gain"],
                 depths=offsets, steps=steps, patience=30,
                 lr={"source.shift": 0.5, "propagation.distance": 10.0, "camera.gain": 0.01})
    after = report.after
    shift_hat = after["source.shift"].numpy() / PIXEL
    errors = [float(np.sum((shift_hat - shift_px) ** 2) / np.sum(shift_px**2)),
              float((after["camera.gain"] - scale) ** 2 / scale**2),
              float((after["propagation.distance"] - defocus) ** 2 / defocus**2)]
    with torch.no_grad():
        image_nmse = float(nmse(model(obj, offsets), images).mean())
    return {"image_nmse": image_nmse, "param_nmse": float(np.mean(errors)),
            "translation_nmse": errors[0], "scale_nmse": errors[1], "defocus_nmse": errors[2],
            "defocus": float(defocus), "defocus_hat": float(after["propagation.distance"]),
            "steps": report.steps}


def case_b(rng: np.random.Generator, obj: torch.Tensor, steps: int, size: int = 48) -> dict:
    focal = 100_000.0
    kind = "cubic" if rng.random() < 0.5 else "gradient"
    strength = rng.choice([-1, 1]) * rng.uniform(math.pi, 4 * math.pi)
    # the pupil's radius in samples of the Fourier plane: NA/λ · N · dx
    radius = NA / WAVELENGTH * size * PIXEL
    pattern = cubic_phase if kind == "cubic" else circular_gradient
    phase = pattern(size, float(strength), radius=radius)
    offsets = [-200.0, 0.0, 200.0]

    def microscope(mask):
        return Microscope([
            ZernikeSource(size, na=NA, wavelength=WAVELENGTH, pixel_size=PIXEL),
            Lens(focal), mask, Lens(focal, name="tube"), Camera(crop=47)])

    with torch.no_grad():
        images = microscope(PhaseMask(phase))(obj, offsets)
    model = microscope(PhaseMask(size=size))
    report = fit(model, obj, images, ["mask.phase"], depths=offsets, steps=steps, lr=0.08,
                 patience=60)
    recovered = report.after["mask.phase"]
    index = torch.arange(size, dtype=torch.float32) - size // 2
    inside = (index[:, None] ** 2 + index[None, :] ** 2) <= (0.97 * radius) ** 2
    difference = torch.remainder(recovered - phase + math.pi, 2 * math.pi) - math.pi
    difference = difference[inside] - difference[inside].mean()
    reference = phase[inside] - phase[inside].mean()
    with torch.no_grad():
        image_nmse = float(nmse(model(obj, offsets), images).mean())
    return {"image_nmse": image_nmse,
            "param_nmse": float((difference**2).sum() / (reference**2).sum()),
            "kind": kind, "strength": float(strength), "steps": report.steps,
            "_phase": phase.numpy(), "_recovered": recovered.numpy(), "_inside": inside.numpy()}


def experiment(name: str, cases: int, steps: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    obj = target()
    runs, start = [], time.perf_counter()
    for k in range(cases):
        result = (case_a if name == "a" else case_b)(rng, obj, steps)
        runs.append(result)
        if (k + 1) % 10 == 0:
            print(f"  ({name}) {k + 1}/{cases}: median image NMSE "
                  f"{np.median([r['image_nmse'] for r in runs]):.3g}, param NMSE "
                  f"{np.median([r['param_nmse'] for r in runs]):.3g} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    images = np.array([r["image_nmse"] for r in runs])
    params = np.array([r["param_nmse"] for r in runs])
    return {"cases": cases, "seconds": round(time.perf_counter() - start, 1),
            "image_nmse_mean": float(images.mean()), "image_nmse_median": float(np.median(images)),
            "param_nmse_mean": float(params.mean()), "param_nmse_median": float(np.median(params)),
            "image_nmse_p90": float(np.quantile(images, 0.9)),
            "param_nmse_p90": float(np.quantile(params, 0.9)),
            "paper": PAPER[name], "runs": runs}


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("a", "b") if k in results]
    fig, axes = plt.subplots(1, 2 * len(panels) + ("b" in results), figsize=(16, 3.6))
    axes = np.atleast_1d(axes)
    column = 0
    for name in panels:
        runs = results[name]["runs"]
        for key, label in (("image_nmse", "NMSE(images)"), ("param_nmse", "NMSE(parameters)")):
            values = np.array([r[key] for r in runs])
            axes[column].hist(np.log10(np.maximum(values, 1e-12)), bins=30)
            axes[column].axvline(np.log10(PAPER[name]["images" if key == "image_nmse"
                                                      else "params"]),
                                 color="r", ls="--", label="paper (mean)")
            axes[column].axvline(np.log10(values.mean()), color="k", label="psfmap (mean)")
            axes[column].set_title(f"({name}) {label}, {len(runs)} cases", fontsize=9)
            axes[column].set_xlabel("log10 NMSE")
            axes[column].legend(fontsize=7)
            column += 1
    if "b" in results:
        run = results["b"]["runs"][0]
        inside = run["_inside"]
        shown = np.where(inside, np.concatenate(
            [run["_phase"], np.remainder(run["_recovered"] - run["_recovered"][inside].mean()
                                         + run["_phase"][inside].mean() + np.pi, 2 * np.pi)
             - np.pi], axis=1)[:, :inside.shape[1]], np.nan)
        axes[column].imshow(np.concatenate([np.where(inside, run["_phase"], np.nan), shown],
                                           axis=1), cmap="twilight")
        axes[column].set_title(f"(b) true | recovered {run['kind']} mask", fontsize=9)
        axes[column].set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--only", default="analytic,a,b")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", default=str(FIGURES / "optics_synthetic.json"))
    parser.add_argument("--figure", default=str(FIGURES / "optics_synthetic.png"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    only = args.only.split(",")
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, "
                                f"{torch.get_num_threads()} threads, torch {torch.__version__}"}
    if "analytic" in only:
        results["analytic"] = analytic()
        print("analytic:", json.dumps(results["analytic"]), flush=True)
    for name in ("a", "b"):
        if name in only:
            results[name] = experiment(name, args.cases, args.steps, args.seed)
            r = results[name]
            print(f"({name}) {r['cases']} cases in {r['seconds']} s: NMSE(images) mean "
                  f"{r['image_nmse_mean']:.3g} median {r['image_nmse_median']:.3g} (paper "
                  f"{PAPER[name]['images']}); NMSE(params) mean {r['param_nmse_mean']:.3g} "
                  f"median {r['param_nmse_median']:.3g} (paper {PAPER[name]['params']})",
                  flush=True)
    if "a" in results or "b" in results:
        figure(results, Path(args.figure))
    clean = {k: ({**v, "runs": [{q: w for q, w in run.items() if not q.startswith("_")}
                                for run in v["runs"]]} if isinstance(v, dict) and "runs" in v
                 else v) for k, v in results.items()}
    Path(args.json).write_text(json.dumps(clean, indent=1))


if __name__ == "__main__":
    main()
