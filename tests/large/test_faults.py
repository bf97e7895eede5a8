"""Distributed runs that survive faults (issue 24), slow: a LocalCluster gives the threaded
result bitwise; a worker process killed mid-run does not change it; SIGINT / SIGTERM leave a
store that --resume completes to the uninterrupted result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

import psfmap
from psfmap._zarr import MARKERS, zarr_state
from psfmap.io import read_image, write_image
from psfmap.psf import gaussian

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.slow


def grid() -> np.ndarray:
    return np.stack([np.stack([gaussian(11, 1.0 + 0.5 * r + 0.3 * c).numpy()
                               for c in range(2)]) for r in range(2)])


def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=50) as local, \
            distributed.Client(local) as client:
        client.run(one_thread)
        yield client


def test_local_cluster_equals_threads_bitwise(cluster, rng):
    image = da.from_array((rng.random((128, 128)) * 50 + 5).astype(np.float32), chunks=64)
    lazy = psfmap.deconvolve(image, grid(), "rl-tv", 6, overlap=32)
    threaded = lazy.compute(scheduler="threads")
    assert np.array_equal(cluster.compute(lazy).result(), threaded)


def test_a_killed_worker_does_not_change_the_result(cluster, rng):
    frames = (rng.random((8, 96, 96)) * 50 + 5).astype(np.float32)
    lazy = psfmap.deconvolve(da.from_array(frames, chunks=(1, 96, 96)), grid(), "rl", 60)
    expected = lazy.compute(scheduler="threads")
    future = cluster.compute(lazy)
    pids = cluster.run(os.getpid)
    deadline = time.time() + 60
    while not any(s.get("processing") for s in [cluster.processing()]) and \
            time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a few chunks in flight on both workers
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    result = future.result(timeout=300)
    assert np.array_equal(result, expected)
    # the nanny restarts the killed worker; until the scheduler drops the dead one, a broadcast
    # to it fails (CommClosedError): ask only the workers that answer
    deadline = time.time() + 120
    while True:
        alive = cluster.run(os.getpid, on_error="ignore")
        if len(alive) == 2 and victim not in alive.values():
            break
        assert time.time() < deadline, f"the killed worker was not replaced: {alive}"
        time.sleep(0.5)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_then_resume_gives_the_uninterrupted_result(tmp_path, rng, signum):
    image = (rng.random((12, 96, 96)) * 50 + 5).astype(np.float32)
    write_image(tmp_path / "in.ome.zarr", image, axes="TYX")
    tifffile.imwrite(tmp_path / "psf.tif", gaussian(9, 1.5).numpy())

    def command(output: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "psfmap.cli", "deconvolve", str(tmp_path / "in.ome.zarr"),
                "--psf", str(tmp_path / "psf.tif"), "--method", "rl", "--iterations", "80",
                "-o", str(tmp_path / output), "--quiet", *extra]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command("out.ome.zarr"), env=env, stderr=subprocess.PIPE,
                               text=True)
    markers = tmp_path / "out.ome.zarr" / MARKERS
    deadline = time.time() + 120
    while time.time() < deadline and not (markers.is_dir() and any(markers.iterdir())):
        time.sleep(0.05)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived (machine too fast)")
    assert process.returncode == 128 + signum, err
    assert zarr_state(tmp_path / "out.ome.zarr") == "partial"
    done = len(list(markers.iterdir()))
    assert 1 <= done < 12
    resumed = subprocess.run(command("out.ome.zarr", "--resume"), env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    full = subprocess.run(command("full.ome.zarr"), env=env, capture_output=True, text=True,
                          timeout=300)
    assert full.returncode == 0, full.stderr
    assert np.array_equal(read_image(tmp_path / "out.ome.zarr")[0].compute(),
                          read_image(tmp_path / "full.ome.zarr")[0].compute())


def test_cli_workers_equal_the_threaded_run(tmp_path, rng):
    from psfmap.cli import main

    image = (rng.random((2, 80, 96)) * 50 + 5).astype(np.float32)
    write_image(tmp_path / "in.ome.zarr", image, axes="TYX")
    tifffile.imwrite(tmp_path / "psf.tif", gaussian(9, 1.5).numpy())
    base = ["deconvolve", str(tmp_path / "in.ome.zarr"), "--psf", str(tmp_path / "psf.tif"),
            "--iterations", "4", "--quiet"]
    assert main([*base, "-o", str(tmp_path / "threads.ome.zarr")]) == 0
    assert main([*base, "-o", str(tmp_path / "cluster.ome.zarr"), "--workers", "2"]) == 0
    assert np.array_equal(read_image(tmp_path / "threads.ome.zarr")[0].compute(),
                          read_image(tmp_path / "cluster.ome.zarr")[0].compute())
