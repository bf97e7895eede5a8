"""Running a widget's work in a napari thread worker, with progress and cancel.

The psfmap verbs report their progress through callbacks (``callback(iteration, change)`` of
Richardson–Lucy, ``callback(frame)`` of ``estimate``, ``progress(1)`` of ``calibrate``). A
:class:`Job` hands its task a :class:`Ticker` to pass as that callback: each call is one step
of the progress bar, and the first call after :meth:`Job.cancel` raises :class:`Cancelled`,
which unwinds the verb at its next iteration, so a cancelled job stops within one iteration
and adds no layer. The task runs in a :class:`~superqt.utils.GeneratorWorker` (napari's
``create_worker``), whose ``yielded`` signal feeds napari's activity-dock progress bar and the
widget's own; Qt queues the signal from the worker thread to the main thread, so the viewer
never waits for the work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from typing import Any

CANCELLED = object()  # what a cancelled task returns (never handed to ``on_result``)


class Cancelled(Exception):
    """Raised inside a running task by its :class:`Ticker` once the user cancelled it."""


class Ticker:
    """The progress callback of one job: ``ticker(*ignored)`` counts one step.

    It accepts and ignores any arguments, so that it can be passed as any psfmap callback.
    """

    def __init__(self, cancel: threading.Event):
        self._cancel = cancel
        self._worker: Any = None
        self.steps = 0

    @property
    def cancelled(self) -> bool:
        """Whether the widget's Cancel was pressed, or napari asked the worker to quit (the
        cancel of its activity dock)."""
        return self._cancel.is_set() or bool(getattr(self._worker, "abort_requested", False))

    def __call__(self, *_: Any) -> None:
        if self.cancelled:
            raise Cancelled
        self.steps += 1
        if self._worker is not None:
            # the worker's own progress signal, emitted from its own thread as its loop does
            self._worker.yielded.emit(self.steps)

    def check(self) -> None:
        """Raise :class:`Cancelled` if the job was cancelled (between two verb calls)."""
        if self.cancelled:
            raise Cancelled


def _run(task: Callable[[Ticker], Any], ticker: Ticker) -> Generator[Any, None, Any]:
    """The worker's generator: the whole task runs in its first step (progress is emitted by
    the ticker); its value is the worker's ``returned`` value."""
    try:
        return task(ticker)
    except Cancelled:
        return CANCELLED
    yield  # unreachable: makes this a generator, so that the worker has a yielded signal


class Job:
    """One run of a widget's task in a napari thread worker.

    Parameters
    ----------
    task : callable
        ``task(ticker)``, run in the worker thread; returns the result handed to
        ``on_result`` in the main thread.
    total : int
        Expected number of ticks (for the progress bars).
    label : str
        Description of the progress bar in napari's activity dock.
    on_result, on_error, on_finished : callable
        Called in the main thread: with the task's result (not after a cancel), with the
        exception it raised, and in every case at the end with ``cancelled`` (bool).
    on_progress : callable, optional
        Called in the main thread with the number of steps done.
    """

    def __init__(
        self,
        task: Callable[[Ticker], Any],
        total: int,
        label: str,
        *,
        on_result: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
        on_finished: Callable[[bool], None],
        on_progress: Callable[[int], None] | None = None,
    ):
        from napari.qt.threading import GeneratorWorker, create_worker

        self.total = max(int(total), 1)
        self._cancel = threading.Event()
        self.ticker = Ticker(self._cancel)
        self.cancelled = False
        self.worker = create_worker(
            _run, task, self.ticker, _start_thread=False, _worker_class=GeneratorWorker,
            _progress={"total": self.total, "desc": label},
            # an error goes to on_error (a notification), not re-raised in the main thread
            _connect={"errored": on_error},
        )
        self.ticker._worker = self.worker

        def returned(value: Any) -> None:
            if value is CANCELLED or self.ticker.cancelled:
                self.cancelled = True
                return
            on_result(value)

        self.worker.returned.connect(returned)
        self.worker.finished.connect(
            lambda: on_finished(self.cancelled or self.ticker.cancelled))
        if on_progress is not None:
            self.worker.yielded.connect(on_progress)

    def start(self) -> None:
        """Start the worker thread."""
        self.worker.start()

    def cancel(self) -> None:
        """Ask the task to stop at its next tick; its result, if any, is dropped."""
        self._cancel.set()
        self.cancelled = True

    @property
    def is_running(self) -> bool:
        return bool(self.worker.is_running)
