"""Vectorial (Richards–Wolf, psf-generator) against scalar pupil PSFs over the NA.

For NA in {0.3, 0.5, 0.8, 1.2, 1.4} (oil, n = 1.515, λ = 0.52 µm, aberration-free) prints

* the relative L2 difference ``‖h_vec − h_scal‖ / ‖h_scal‖`` of the in-focus plane and of a
  through-focus stack (unpolarised vectorial model, both normalised on the same window; the
  scalar PSF is computed on a 3× larger window and cropped, which removes most of its own
  pupil-discretisation error, measured in the last column against the analytic Airy pattern
  at the lowest NA);
* lateral FWHMs (in-focus, pixels of λ / (16 NA)): scalar, vectorial unpolarised, vectorial
  x-polarised along x and along y; axial FWHMs on the optical axis;
* the time of :func:`psfmap.psf.vectorial_through_focus` over the time of
  :func:`psfmap.psf.through_focus` for the same stack (and for the scalar stack on a 3×
  window), all measured in this process (best of ``--repeats``; psf-generator's one-off
  import excluded).

Run: ``python benchmarks/eval_vectorial.py [--out results.md]``; needs
``pip install "psfmap[vectorial]"``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.special import j1

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import best_time  # noqa: E402

from psfmap.metrics import fwhm
from psfmap.psf import through_focus, vectorial_through_focus  # noqa: E402
from psfmap.psf.gaussian import bin_pixels, pixel_grid  # noqa: E402

NAS = (0.3, 0.5, 0.8, 1.2, 1.4)
WAVELENGTH, INDEX = 0.52, 1.515


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def scalar_cropped(size: int, planes, **optics) -> torch.Tensor:
    """Scalar stack on a 3× window, cropped to ``size`` and renormalised."""
    big = through_focus(3 * size, planes, dtype=torch.float64, **optics)
    start = (3 * size) // 2 - size // 2
    crop = big[:, start:start + size, start:start + size]
    return crop / crop.sum()


def airy(size: int, na: float, pixel: float, sub: int = 9) -> torch.Tensor:
    """Analytic in-focus Airy pattern (2 J1(v)/v)², integrated over pixels, sum 1."""
    x = pixel_grid(size, sub, torch.float64, None).numpy() * pixel
    v = np.maximum(2 * math.pi * na * np.hypot(x[:, None], x[None, :]) / WAVELENGTH, 1e-12)
    fine = torch.from_numpy((2 * j1(v) / v) ** 2)
    out = bin_pixels(fine, size, sub)
    return out / out.sum()


def evaluate(na: float, repeats: int) -> dict[str, float]:
    row: dict[str, float] = {"na": na}
    optics = dict(na=na, wavelength=WAVELENGTH, immersion_index=INDEX)
    # in focus, fine pixels for the FWHMs
    size, pixel = 49, WAVELENGTH / na / 16
    c = size // 2
    scalar = scalar_cropped(size, [0.0], pixel_size=pixel, **optics)[0]
    unpolarized = vectorial_through_focus(size, [0.0], pixel_size=pixel, dtype=torch.float64,
                                          **optics)[0]
    x_pol = vectorial_through_focus(size, [0.0], pixel_size=pixel, polarization="x",
                                    dtype=torch.float64, **optics)[0]
    row["diff_focus"] = relative(unpolarized, scalar)
    row["fwhm_scalar"] = fwhm(scalar[c], pixel)
    row["fwhm_unpol"] = fwhm(unpolarized[c], pixel)
    row["fwhm_x_along_x"] = fwhm(x_pol[c], pixel)
    row["fwhm_x_along_y"] = fwhm(x_pol[:, c], pixel)
    row["scalar_vs_airy"] = relative(through_focus(size, [0.0], pixel_size=pixel,
                                                   dtype=torch.float64, **optics)[0],
                                     airy(size, na, pixel))
    row["vectorial_vs_airy"] = relative(unpolarized, airy(size, na, pixel))
    # through focus: 33 planes over ± 2 axial FWHM (paraxial-free estimate λ / (n − √(n² − NA²)))
    axial = WAVELENGTH / (INDEX - math.sqrt(INDEX**2 - na**2))
    size3, pixel3, step = 33, WAVELENGTH / na / 8, axial / 8
    stack_optics = dict(pixel_size=pixel3, z_step=step, **optics)
    scalar3 = scalar_cropped(size3, 33, **stack_optics)
    vector3 = vectorial_through_focus(size3, 33, dtype=torch.float64, **stack_optics)
    row["diff_stack"] = relative(vector3, scalar3)
    row["axial_scalar"] = fwhm(scalar3[:, size3 // 2, size3 // 2], step)
    row["axial_unpol"] = fwhm(vector3[:, size3 // 2, size3 // 2], step)
    row["t_scalar"] = best_time(lambda: through_focus(size3, 33, **stack_optics), repeats)
    row["t_scalar3"] = best_time(lambda: through_focus(3 * size3, 33, **stack_optics), repeats)
    row["t_vector"] = best_time(lambda: vectorial_through_focus(size3, 33, **stack_optics),
                                repeats)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    vectorial_through_focus(9, [0.0], na=0.5, wavelength=WAVELENGTH, pixel_size=0.1)  # import
    rows = [evaluate(na, args.repeats) for na in NAS]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "## Vectorial vs scalar PSFs (psfmap.psf.vectorial, psf-generator)",
        "",
        f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; load average {load:.1f} at the end. Command: "
        "`python benchmarks/eval_vectorial.py`. Synthetic, aberration-free, oil (n = 1.515), "
        "λ = 0.52 µm; no data involved (nothing held out). Vectorial = unpolarised "
        "(mean of x and y), aplanatic apodisation; relative L2 on a common window.",
        "",
        "| NA | rel. L2 in focus | rel. L2 stack | FWHM scalar (µm) | FWHM vec. unpol. | "
        "vec. x-pol. along x / y | axial FWHM scalar / vec. (µm) | time vec. (ms) | "
        "÷ scalar | ÷ scalar on 3× window |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['na']:.1f} | {100 * r['diff_focus']:.1f} % | {100 * r['diff_stack']:.1f} % "
            f"| {r['fwhm_scalar']:.3f} | {r['fwhm_unpol']:.3f} "
            f"({r['fwhm_unpol'] / r['fwhm_scalar']:.3f}×) | {r['fwhm_x_along_x']:.3f} / "
            f"{r['fwhm_x_along_y']:.3f} | {r['axial_scalar']:.3f} / {r['axial_unpol']:.3f} | "
            f"{1e3 * r['t_vector']:.0f} | {r['t_vector'] / r['t_scalar']:.1f}× "
            f"({1e3 * r['t_scalar']:.0f} ms) | {r['t_vector'] / r['t_scalar3']:.1f}× "
            f"({1e3 * r['t_scalar3']:.0f} ms) |")
    low = rows[0]
    lines += [
        "",
        f"Model accuracy against the analytic Airy pattern at NA {low['na']} (49 px window of "
        f"λ/(16 NA)): scalar `through_focus` {100 * low['scalar_vs_airy']:.1f} %, vectorial "
        f"{100 * low['vectorial_vs_airy']:.1f} % (at NA {low['na']} in oil the vectorial "
        "terms are small; the scalar model's error is its coarse pupil sampling on a small "
        "window). Timings: 33 × 33 × 33 stacks, best of the repeats, psf-generator's import "
        "excluded; the unpolarised aberration-free case costs one polarisation (the other is "
        "its transpose). The scalar model is timed on the same window and on the 3× window it "
        "needs to match the vectorial model's pupil sampling.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
