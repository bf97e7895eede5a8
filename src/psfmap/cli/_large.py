"""Large-data options shared by the commands: ``--workers``, ``--scheduler``, ``--resume``,
``--overwrite``, and OME-Zarr outputs written chunk by chunk.

An OME-Zarr output (``.zarr`` / ``.ome.zarr``) is not written all-or-nothing like a TIFF: its
chunks are written as they finish, each followed by a marker, so that an interrupted run
(exit 130 or 143, or exit 1 after some chunks) leaves a partial store that ``--resume``
completes to the same result. Such a store is never removed on failure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from psfmap.cli import UsageError


def add_large_flags(parser, *, output_flag: str = "-o") -> None:
    """``--workers``, ``--scheduler``, ``--chunk``, ``--resume``, ``--overwrite``."""
    group = parser.add_argument_group(
        "large data (dask)",
        f"an .ome.zarr input is read lazily; an .ome.zarr output ({output_flag}) is written "
        "chunk by chunk as the chunks finish",
    )
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help="run the chunks on a local dask cluster of N worker processes "
                       "(one torch thread each); default: threads in this process")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run the chunks on an existing dask.distributed cluster "
                       "(e.g. tcp://10.0.0.5:8786)")
    group.add_argument("--chunk", type=int, default=None, metavar="PIXELS",
                       help="chunk side in pixels for a TIFF input restored in chunks, or to "
                       "rechunk an OME-Zarr input (default: the store's chunks; TIFF: 1024)")
    group.add_argument("--resume", action="store_true",
                       help="complete an .ome.zarr output left by an interrupted run: only "
                       "the chunks not yet written are computed")
    group.add_argument("--overwrite", action="store_true",
                       help="replace an existing .ome.zarr output")


def is_zarr(path: Any) -> bool:
    from psfmap._zarr import is_zarr_path

    return path is not None and is_zarr_path(path)


def wants_chunks(args, image: str, outputs: list[Any]) -> bool:
    """Whether the command runs chunked (dask): a Zarr input or output, or a cluster asked."""
    check_large_flags(args, outputs)
    return (is_zarr(image) or any(is_zarr(p) for p in outputs) or args.workers is not None
            or args.scheduler is not None or args.chunk is not None)


def check_large_flags(args, outputs: list[Any]) -> None:
    """Refuse contradictory or pointless large-data flags (exit 2)."""
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.workers is not None and args.scheduler is not None:
        raise UsageError("--workers starts a local cluster and --scheduler uses an existing "
                         "one; pass one of them")
    if args.chunk is not None and args.chunk < 32:
        raise UsageError(f"--chunk must be >= 32 pixels, got {args.chunk}")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other; pass one of them")
    if (args.resume or args.overwrite) and not any(is_zarr(p) for p in outputs):
        flag = "--resume" if args.resume else "--overwrite"
        raise UsageError(f"{flag} applies to .ome.zarr outputs; TIFF outputs are written "
                         "all at once at the end")


def check_zarr_output(args, output: Any) -> None:
    """An existing store needs --resume or --overwrite (exit 2 before any work)."""
    from psfmap._zarr import zarr_state

    state = zarr_state(output)
    if state != "missing" and not (getattr(args, "resume", False)
                                   or getattr(args, "overwrite", False)):
        raise UsageError(f"output store {str(output)!r} exists ({state}); pass --resume to "
                         "complete it or --overwrite to replace it")


def _one_torch_thread_plugin() -> Any:
    """A worker plugin: one torch thread per worker process (processes are the parallelism;
    torch's own threads would compete for the same cores), set on restarted workers too."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class OneTorchThread(WorkerPlugin):
        name = "psfmap-one-torch-thread"

        def setup(self, worker: Any) -> None:
            import torch

            torch.set_num_threads(1)

    return OneTorchThread()


@contextlib.contextmanager
def dask_client(args) -> Iterator[Any]:
    """The ``distributed.Client`` of ``--workers`` / ``--scheduler``, or None (threads)."""
    if args.workers is None and args.scheduler is None:
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - distributed ships with psfmap
        raise UsageError("--workers and --scheduler need the 'distributed' package") from None
    if args.scheduler is not None:
        try:
            client = Client(args.scheduler, timeout="20s")
        except OSError as error:
            raise UsageError(f"--scheduler {args.scheduler!r}: no dask scheduler answers "
                             f"({error})") from None
        with client:
            client.register_plugin(_one_torch_thread_plugin())
            yield client
        return
    # one thread per worker: torch threads inside a task would oversubscribe the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=40) as cluster, \
            Client(cluster) as client:
        client.register_plugin(_one_torch_thread_plugin())
        yield client


def as_dask(image: Any, chunk: int | None) -> Any:
    """``image`` as a dask array: a NumPy image in chunks of one frame and ``chunk`` px
    (default 1024) squares; a dask array rechunked only when ``chunk`` is given."""
    import dask.array as da

    if isinstance(image, da.Array):
        if chunk is None:
            return image
        return image.rechunk((1,) * (image.ndim - 2) + (chunk, chunk))
    image = np.asarray(image)
    side = chunk or 1024
    return da.from_array(image, chunks=(1,) * (image.ndim - 2) + (side, side))


def read_lazy(path: Any, chunk: int | None) -> tuple[Any, dict]:
    """An image as a dask array (an OME-Zarr store lazily, a TIFF in ``chunk`` px squares,
    see :func:`as_dask`) and its metadata: the input of a chunked run."""
    from psfmap.io import read_image

    image, metadata = read_image(path)
    if image.ndim < 2:
        raise ValueError(f"{str(path)!r} must be an image (..., H, W), got shape {image.shape}")
    return as_dask(image, chunk), metadata


def where(args) -> str:
    """Where a chunked run ran, for the summary line."""
    return (f"{args.workers} worker(s)" if args.workers else
            f"scheduler {args.scheduler}" if args.scheduler else "threads")


def write_chunked(args, path: Any, array: Any, client: Any, **write: Any) -> None:
    """Write a lazy result: an OME-Zarr store chunk by chunk (progress bar over chunks), or
    a TIFF computed on the cluster then written at the end as usual."""
    from psfmap.cli._common import progress_bar
    from psfmap.io import write_image

    if is_zarr(path):
        with progress_bar(args, int(np.prod(array.numblocks)), f"{args.command} (chunks)") \
                as bar:
            def progress(done: int, total: int) -> None:
                bar.n = done
                bar.refresh()

            write_image(path, array, **write,
                        zarr_options={"resume": args.resume, "overwrite": args.overwrite,
                                      "client": client, "progress": progress})
        return
    result = client.compute(array).result() if client is not None else array.compute()
    write_image(path, result, **write)

