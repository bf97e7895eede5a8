"""Invariant 3D Richardson–Lucy: psfmap against sdeconv's torch RL and scikit-image's, one process.

    SDECONV_PATH=DIR .venv/bin/python benchmarks/bench_volume_sdeconv.py [--repeat 3]

Issue 20's speed target: psfmap's invariant, non-circulant 3D RL of a 64 x 256 x 256 float32
volume with a 21 x 17 x 17 widefield PSF (the PSF of ``bench_volume.py speed``), 20
iterations, in at most 1.3 times the time of sdeconv's ``SRichardsonLucy`` (circular, the
PSF padded to the volume, which is how sdeconv takes a 3D PSF). scikit-image's n-dimensional
``richardson_lucy`` (``clip=False``) is the common reference. The three solvers run in turn
``--repeat`` times and each keeps its best time, so that a burst of load from other jobs does
not fall on one solver only. Results print as JSON lines: seconds, the ratios
psfmap/sdeconv, psfmap/skimage and sdeconv/skimage, the 1-minute load before and after,
torch's thread count, and the relative L2 distance between the three results away from the
borders (sdeconv wraps around, the others do not), to show that they ran the same RL. An
untimed textbook circular RL (:func:`circular_rl`) separates the boundary model from
sdeconv's mirrored PSF, which is shifted by one voxel in z and y (``sdeconv_vs_circular``).

sdeconv is not a dependency of psfmap: install it apart from the project's torch, e.g.
``pip install --no-deps --target DIR sdeconv``, and point ``SDECONV_PATH`` at ``DIR``
(it is put at the front of ``sys.path``). Without an importable sdeconv the script says why
and exits with status 0. ``sdeconv.deconv``'s package ``__init__`` also imports its
neural-network filters, which need torchvision; where that import fails, the unmodified
module ``sdeconv.deconv.richardson_lucy`` is loaded without that ``__init__`` (it needs torch
only), and the output says so.

``--volume procedural`` (default) restores the procedural nuclei/filaments/puncta volume of
``bench_volume.py`` blurred by the PSF (100 photons at the peak, no noise), so that the
agreement check compares restorations of a real image (a background of 1 is added:
sdeconv divides by ``H x`` without a floor and gives NaN where the image is 0);
``--volume random`` restores the
uniform random volume of ``bench_volume.py speed``. The FFT work, hence the time, is the
same for both.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from psfmap.operators import Convolution
from psfmap.psf.through_focus import through_focus
from psfmap.restore import richardson_lucy

SHAPE = (64, 256, 256)
ITERATIONS = 20


def report(**values) -> None:
    """Print one JSON line with the machine and torch's thread count."""
    values["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    values["torch"] = torch.__version__
    values["torch_threads"] = torch.get_num_threads()
    print(json.dumps(values), flush=True)


def load_sdeconv() -> tuple[types.ModuleType | None, str]:
    """sdeconv's ``richardson_lucy`` module and how it was imported, or None and why not."""
    extra = os.environ.get("SDECONV_PATH")
    if extra:
        sys.path.insert(0, extra)
    try:
        import sdeconv
    except ImportError as error:
        return None, f"sdeconv is not importable ({error}); set SDECONV_PATH"
    try:
        module = importlib.import_module("sdeconv.deconv.richardson_lucy")
        return module, f"sdeconv {sdeconv.__version__}, import sdeconv.deconv"
    except Exception as error:  # torchvision missing or built for another torch
        reason = f"{type(error).__name__}: {str(error).splitlines()[0]}"
    for name in [n for n in sys.modules if n.startswith("sdeconv.deconv")]:
        del sys.modules[name]
    package = types.ModuleType("sdeconv.deconv")
    package.__path__ = [str(Path(sdeconv.__file__).parent / "deconv")]
    sys.modules["sdeconv.deconv"] = package
    try:
        module = importlib.import_module("sdeconv.deconv.richardson_lucy")
    except Exception as error:
        return None, f"sdeconv's richardson_lucy is not importable ({error})"
    return module, (f"sdeconv {sdeconv.__version__}, sdeconv.deconv.richardson_lucy loaded "
                    f"without the package __init__ ({reason})")


def sdeconv_rl(module: types.ModuleType, volume: torch.Tensor, psf: torch.Tensor,
               iterations: int) -> torch.Tensor:
    """sdeconv's 3D RL as its users call it: the PSF centred in a volume-sized array."""
    from sdeconv.deconv._utils import resize_psf_3d

    return module.SRichardsonLucy(resize_psf_3d(volume, psf), niter=iterations, pad=0)(volume)


def circular_rl(volume: torch.Tensor, psf: torch.Tensor, iterations: int) -> np.ndarray:
    """Textbook circular RL (adjoint = conjugate spectrum), sdeconv's PSF placement and start.

    The reference that tells sdeconv's own choices from the boundary model: sdeconv mirrors
    the PSF as ``flip`` of the origin-centred array, which is the exact mirror shifted by one
    voxel along the flipped axes (z and y), and it leaves x unflipped."""
    from sdeconv.deconv._utils import resize_psf_3d

    centred = resize_psf_3d(volume, psf / psf.sum())
    centred = torch.roll(centred, [-(n // 2) for n in centred.shape], dims=(0, 1, 2))
    spectrum = torch.fft.rfftn(centred)
    x = volume.clone()
    for _ in range(iterations):
        model = torch.fft.irfftn(torch.fft.rfftn(x) * spectrum, s=volume.shape)
        x = x * torch.fft.irfftn(torch.fft.rfftn(volume / model) * spectrum.conj(),
                                 s=volume.shape)
    return x.numpy()


def make_data(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The volume (float32, SHAPE) and the 21 x 17 x 17 PSF of ``bench_volume.py speed``."""
    psf = through_focus(17, 21, na=1.2, wavelength=0.52, pixel_size=0.1, z_step=0.25,
                        immersion_index=1.33)
    if kind == "random":
        volume = (np.random.default_rng(0).random(SHAPE) * 100).astype(np.float32)
    else:
        from bench_volume import procedural_volume

        with torch.no_grad():
            blurred = Convolution(psf)(procedural_volume(SHAPE, seed=0)) * 100
        # a background of 1 photon: sdeconv divides by H x without a floor, 0/0 on empty voxels
        volume = (blurred.clamp_min(0) + 1).numpy().astype(np.float32)
    return volume, psf.numpy().astype(np.float32)


def interior_distance(a: np.ndarray, b: np.ndarray, margin: tuple[int, ...]) -> float:
    """Relative L2 distance ``||a - b|| / ||b||`` on the volume less ``margin`` per side."""
    box = tuple(slice(m, n - m) for m, n in zip(margin, a.shape))
    a, b = a[box].astype(np.float64), b[box].astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main(repeat: int, kind: str, iterations: int = ITERATIONS) -> int:
    module, how = load_sdeconv()
    if module is None:
        print(f"skipped: {how}", flush=True)
        return 0
    from skimage.restoration import richardson_lucy as sk_rl

    volume, psf = make_data(kind)
    volume_t, psf_t = torch.from_numpy(volume), torch.from_numpy(psf)
    solvers = {
        "sdeconv": lambda: sdeconv_rl(module, volume_t, psf_t, iterations).numpy(),
        "psfmap": lambda: richardson_lucy(volume, Convolution(psf), iterations=iterations),
        "skimage": lambda: sk_rl(volume, psf, num_iter=iterations, clip=False),
    }
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {name: [] for name in solvers}
    results = {}
    for _ in range(repeat):
        for name, function in solvers.items():
            start = time.perf_counter()
            results[name] = function()
            times[name].append(round(time.perf_counter() - start, 3))
    best = {name: min(values) for name, values in times.items()}
    load_after = os.getloadavg()[0]
    results["circular"] = circular_rl(volume_t, psf_t, iterations)  # not timed
    margin = tuple(2 * (n // 2) for n in psf.shape)  # twice the PSF half-size per side
    report(test="speed_vs_sdeconv", sdeconv=how, volume=kind, shape=list(SHAPE),
           psf=list(psf.shape), iterations=iterations, repeat=repeat,
           sdeconv_s=round(best["sdeconv"], 3), psfmap_s=round(best["psfmap"], 3),
           skimage_s=round(best["skimage"], 3),
           psfmap_vs_sdeconv=round(best["psfmap"] / best["sdeconv"], 3),
           psfmap_vs_skimage=round(best["psfmap"] / best["skimage"], 3),
           sdeconv_vs_skimage=round(best["sdeconv"] / best["skimage"], 3),
           target_psfmap_vs_sdeconv=1.3, all_times_s=times,
           load_1min=[round(load_before, 2), round(load_after, 2)])
    report(test="agreement", volume=kind, interior_margin=list(margin),
           psfmap_vs_sdeconv=round(interior_distance(results["psfmap"], results["sdeconv"],
                                                     margin), 4),
           psfmap_vs_skimage=round(interior_distance(results["psfmap"], results["skimage"],
                                                     margin), 4),
           sdeconv_vs_skimage=round(interior_distance(results["sdeconv"], results["skimage"],
                                                      margin), 4),
           sdeconv_vs_circular=round(interior_distance(results["sdeconv"],
                                                       results["circular"], margin), 4),
           psfmap_vs_circular=round(interior_distance(results["psfmap"], results["circular"],
                                                      margin), 4),
           all_finite={name: bool(np.isfinite(r).all()) for name, r in results.items()})
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2,
                        help="run the solvers in turn this many times, keep each best")
    parser.add_argument("--volume", choices=("procedural", "random"), default="procedural")
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    arguments = parser.parse_args()
    if arguments.threads is not None:
        torch.set_num_threads(arguments.threads)
    sys.exit(main(arguments.repeat, arguments.volume, arguments.iterations))
