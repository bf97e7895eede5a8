"""Large data (issue 24): seams, memory, throughput and equality of chunked restoration.

    python benchmarks/bench_large_data.py [seams] [equality] [throughput] [memory]
        [--frames 64] [--size 16384] [--iterations 20] [--memory-iterations 20]

* seams: RL-TV (20 iterations) of a 2048² simulated cell image with a 4×4 PSF map, dask
  chunks of 512² (default halo) against the one-piece result: relative L2, and the RMS
  difference within 8 px of chunk borders against the RMS elsewhere.
* equality: a 512² image in 256² chunks restored on the threaded scheduler, on a 2-worker
  LocalCluster, and in memory with ``tile=256`` (the same boxes): largest difference.
* throughput: a time-lapse of ``--frames`` 1024² frames (one chunk per frame) on 1 and on 2
  workers with one torch thread each; and the chunk overhead of 1024² chunks of a 2048² frame
  (halo + scheduling) against a one-piece restoration of the same frame.
* memory: a ``--size``² float32 OME-Zarr (``--memory-chunk``² chunks, default 512) restored
  with a 16×16 PSF map on a 2-worker LocalCluster into an OME-Zarr store; peak resident
  memory summed over this process and all its children, sampled every 0.1 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import psfmap  # noqa: E402
from psfmap.operators import from_psf_grid  # noqa: E402
from psfmap.psf import gaussian  # noqa: E402


def psf_grid(rows: int, cols: int, size: int = 17) -> torch.Tensor:
    """An anisotropic Gaussian PSF per cell, widths growing across the field."""
    return torch.stack([torch.stack([
        gaussian(size, 1.0 + 1.2 * r / max(rows - 1, 1) + 0.6 * c / max(cols - 1, 1),
                 angle=0.3 * c) for c in range(cols)]) for r in range(rows)])


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth blobs (cells) plus bright points on a background of 5, float32."""
    rng = np.random.default_rng(seed)
    from scipy.ndimage import gaussian_filter

    image = gaussian_filter(rng.random((height, width)), 6) * 400.0
    image -= image.min()
    points = rng.integers(0, [height, width], size=(height * width // 4000, 2))
    image[points[:, 0], points[:, 1]] += rng.uniform(50, 300, len(points))
    return (image + 5.0).astype(np.float32)


def blurred(height: int, width: int, psfs: torch.Tensor, seed: int = 0) -> np.ndarray:
    operator = from_psf_grid(psfs, (height, width))
    sharp = torch.from_numpy(scene(height, width, seed))
    y = operator(sharp).numpy()
    return np.random.default_rng(seed).poisson(np.clip(y, 0, None)).astype(np.float32)


def seams() -> None:
    import dask.array as da

    size, chunk = 2048, 512
    psfs = psf_grid(4, 4)
    y = blurred(size, size, psfs)
    start = time.perf_counter()
    whole = psfmap.deconvolve(y, psfs, "rl-tv", 20)
    t_whole = time.perf_counter() - start
    start = time.perf_counter()
    parts = psfmap.deconvolve(da.from_array(y, chunks=chunk), psfs, "rl-tv", 20)
    chunked = parts.compute(scheduler="threads")
    t_chunked = time.perf_counter() - start
    diff = chunked - whole
    near = np.zeros(y.shape, bool)
    for edge in range(chunk, size, chunk):
        near[edge - 8: edge + 8, :] = True
        near[:, edge - 8: edge + 8] = True
    rel = np.linalg.norm(diff) / np.linalg.norm(whole)
    ratio = np.sqrt(np.mean(diff[near] ** 2)) / max(np.sqrt(np.mean(diff[~near] ** 2)), 1e-30)
    print(f"seams: {size}² RL-TV 20 it, 4x4 map, {chunk}² chunks: relative L2 {100 * rel:.3f} %"
          f", RMS near borders / elsewhere {ratio:.2f} (whole {t_whole:.1f} s, chunked "
          f"{t_chunked:.1f} s)")


def equality() -> None:
    import dask.array as da
    from distributed import Client, LocalCluster

    psfs = psf_grid(4, 4)
    y = blurred(512, 512, psfs, seed=1)
    lazy = psfmap.deconvolve(da.from_array(y, chunks=256), psfs, "rl-tv", 20, overlap=64)
    threaded = lazy.compute(scheduler="threads")
    memory = psfmap.deconvolve(y, psfs, "rl-tv", 20, tile=256, overlap=64)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        distributed = client.compute(lazy).result()
    print(f"equality: threaded vs in-memory tiled: max |diff| {np.abs(threaded - memory).max()}"
          f" (bitwise {np.array_equal(threaded, memory)}); threaded vs LocalCluster: "
          f"{np.abs(threaded - distributed).max()} (bitwise "
          f"{np.array_equal(threaded, distributed)})")


def _set_one_thread() -> None:
    torch.set_num_threads(1)


def throughput(frames: int) -> None:
    import dask.array as da
    from distributed import Client, LocalCluster

    psfs = psf_grid(4, 4)
    frame = blurred(1024, 1024, psfs, seed=2)
    stack = da.from_array(np.stack([frame] * frames), chunks=(1, 1024, 1024))
    lazy = psfmap.deconvolve(stack, psfs, "rl-tv", 20)
    times = {}
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            client.run(_set_one_thread)
            client.compute(lazy[:workers]).result()  # warm-up: imports, first FFT plans
            start = time.perf_counter()
            client.compute(lazy).result()
            times[workers] = time.perf_counter() - start
    print(f"throughput: {frames} frames of 1024², RL-TV 20 it: 1 worker {times[1]:.1f} s, "
          f"2 workers {times[2]:.1f} s, speed-up {times[1] / times[2]:.2f}x")
    # chunk overhead: a 2048² frame in four 1024² chunks (default halo) vs in one piece,
    # one thread each, the same scheduler
    torch.set_num_threads(1)
    big = blurred(2048, 2048, psfs, seed=3)
    start = time.perf_counter()
    psfmap.deconvolve(big, psfs, "rl-tv", 20)
    one = time.perf_counter() - start
    start = time.perf_counter()
    psfmap.deconvolve(da.from_array(big, chunks=1024), psfs, "rl-tv", 20).compute(
        scheduler="sync")
    four = time.perf_counter() - start
    print(f"overhead: 2048² in 1024² chunks {four:.1f} s vs one piece {one:.1f} s: "
          f"{100 * (four / one - 1):.0f} % (halo + scheduling)")


def _rss_all(each: dict[int, int] | None = None) -> int:
    """Resident bytes of this process and all its descendants (``each``: the peak per pid)."""
    import psutil

    me = psutil.Process()
    total = 0
    for process in [me, *me.children(recursive=True)]:
        try:
            rss = process.memory_info().rss
        except psutil.Error:
            continue
        total += rss
        if each is not None:
            each[process.pid] = max(each.get(process.pid, 0), rss)
    return total


def memory(size: int, iterations: int, chunk: int = 1024) -> None:
    import dask.array as da
    from distributed import Client, LocalCluster

    from psfmap.io import read_image, write_image

    folder = Path(tempfile.mkdtemp(prefix="psfmap-large-"))
    source = folder / "big.ome.zarr"

    def make(block: np.ndarray, block_info=None) -> np.ndarray:
        if block_info is None:  # dask's call on an empty block to infer the result's type
            return block
        (top, _), (left, _) = block_info[None]["array-location"]
        rng = np.random.default_rng(top * 7919 + left)
        return (rng.random(block.shape, dtype=np.float32) * 100 + 5).astype(np.float32)

    image = da.zeros((size, size), dtype=np.float32, chunks=chunk).map_blocks(make)
    write_image(source, image, pixel_size=0.1)
    peak = [0]
    each: dict[int, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_all(each))
            time.sleep(0.1)

    psfs = psf_grid(16, 16)
    thread = threading.Thread(target=sample, daemon=True)
    baseline = _rss_all()
    load = os.getloadavg()
    thread.start()
    start = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.run(_set_one_thread)
        lazy, _ = read_image(source)
        restored = psfmap.deconvolve(lazy, psfs, "rl-tv", iterations)
        write_image(folder / "restored.ome.zarr", restored,
                    zarr_options={"client": client})
    elapsed = time.perf_counter() - start
    stop.set()
    thread.join()
    print(f"load average before / after: {load[0]:.1f} / {os.getloadavg()[0]:.1f}")
    print(f"memory: {size}² float32 OME-Zarr ({chunk}² chunks), 16x16 PSF map, RL-TV "
          f"{iterations} it, 2-worker LocalCluster: peak RSS over all processes "
          f"{peak[0] / 1e9:.2f} GB (this process alone before: {baseline / 1e9:.2f} GB), "
          f"{elapsed:.0f} s; peak per process (GB): "
          f"{', '.join(f'{v / 1e9:.2f}' for v in sorted(each.values(), reverse=True))}")
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*",
                        default=["seams", "equality", "throughput", "memory"])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--memory-iterations", type=int, default=20)
    parser.add_argument("--memory-chunk", type=int, default=512,
                        help="chunk side of the stored image in the memory part (default 512: "
                        "a 1024² chunk's RL working set is about 2.7x a 512² one's)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} cores")
    for part in args.parts:
        if part == "seams":
            seams()
        elif part == "equality":
            equality()
        elif part == "throughput":
            throughput(args.frames)
        elif part == "memory":
            memory(args.size, args.memory_iterations, args.memory_chunk)
        else:
            raise SystemExit(f"unknown part {part!r}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
