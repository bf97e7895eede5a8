"""The frame every psfmap widget shares: inputs, a Run and a Cancel button, a progress bar.

A widget subclasses :class:`JobWidget` and implements :meth:`JobWidget.prepare`, which runs
in the main thread, checks the inputs (a bad one raises
:class:`~psfmap.napari._layers.InputError`: shown as a notification in the viewer) and
returns the task to run in a thread worker, its number of progress steps, and the function
that turns the task's result into layers. The work never runs in the main thread, so the
viewer stays responsive; errors of the psfmap verbs (their one-sentence ``ValueError`` and
``TypeError``) come back as notifications too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton, Widget

from psfmap.napari._jobs import Job, Ticker
from psfmap.napari._layers import InputError, LayerData, add_or_update


@dataclass
class Plan:
    """What :meth:`JobWidget.prepare` hands to the worker.

    Attributes
    ----------
    task : callable
        ``task(ticker) -> result``, run in the worker thread.
    total : int
        Number of ticks the task will make (progress bar length).
    layers : callable
        ``layers(result) -> list of LayerData``, run in the main thread.
    after : callable, optional
        ``after(result) -> str``: a note for the status line once the layers are added.
    """

    task: Callable[[Ticker], Any]
    total: int
    layers: Callable[[Any], list[LayerData]]
    after: Callable[[Any], str] | None = None


def image_layers(viewer: Any) -> Callable[[Any], list[tuple[str, Any]]]:
    """Choices of a layer combo box: the viewer's image layers, by name."""
    from napari.layers import Image

    def choices(_widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Image)]

    return choices


def layer_box(viewer: Any, label: str, *, nullable: bool = False) -> ComboBox:
    """A combo box of the viewer's image layers."""
    return ComboBox(label=label, choices=image_layers(viewer), nullable=nullable)


class JobWidget(Container):
    """Inputs, Run, Cancel, a progress bar and a status line, over one :class:`Job` at a time.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers are the inputs and receive the results.
    inputs : sequence of magicgui widgets
        The widget's own inputs, shown above the buttons.
    """

    title = "psfmap"

    def __init__(self, viewer: Any, inputs: Sequence[Widget]):
        self.viewer = viewer
        self.job: Job | None = None
        self._running = False
        self.last_error: str | None = None
        self._run_button = PushButton(text=f"Run {self.title.lower()}")
        self._cancel_button = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self._status = Label(value="", label="status")
        super().__init__(widgets=[*inputs, self._run_button, self._cancel_button,
                                  self._progress, self._status])
        self._run_button.changed.connect(self.run)
        self._cancel_button.changed.connect(self.cancel)
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._layers_changed)
        self.reset_choices()

    def _layers_changed(self, _event: Any = None) -> None:
        self.reset_choices()

    # ------------------------------------------------------------------ to implement
    def prepare(self) -> Plan:
        """Check the inputs (main thread) and return the :class:`Plan` of the work."""
        raise NotImplementedError

    # ------------------------------------------------------------------ running
    @property
    def status(self) -> str:
        """The status line's text (``running``, ``done: ...``, ``cancelled``, ``error: ...``)."""
        return str(self._status.value)

    @property
    def is_running(self) -> bool:
        return self._running

    def run(self, _: Any = None) -> Job | None:
        """Check the inputs and start the work in a thread worker; ``None`` when an input
        was refused (the reason is shown in the viewer)."""
        from napari.utils.notifications import show_error

        if self.is_running:
            show_error(f"{self.title}: already running; cancel it or wait for it to finish")
            return None
        self.last_error = None
        try:
            plan = self.prepare()
        except (InputError, ValueError, TypeError) as error:  # psfmap's one-sentence errors
            self._fail(error)
            return None
        started = time.perf_counter()

        def on_result(result: Any) -> None:
            for layer in plan.layers(result):
                add_or_update(self.viewer, layer)
            note = plan.after(result) if plan.after is not None else ""
            elapsed = time.perf_counter() - started
            self._status.value = f"done in {elapsed:.1f} s" + (f"; {note}" if note else "")

        self._progress.max = max(plan.total, 1)
        self._progress.value = 0
        self._status.value = "running"
        self._run_button.enabled = False
        self._cancel_button.enabled = True
        self._running = True
        self.job = Job(plan.task, plan.total, self.title, on_result=on_result,
                       on_error=self._fail, on_finished=self._finished,
                       on_progress=self._advance)
        self.job.start()
        return self.job

    def cancel(self, _: Any = None) -> None:
        """Stop the running work at its next iteration; no layer is added."""
        if self.job is not None and self.is_running:
            self.job.cancel()
            self._status.value = "cancelling"

    def _advance(self, steps: Any) -> None:
        self._progress.value = min(int(steps), self._progress.max)

    def _finished(self, cancelled: bool) -> None:
        from napari.utils.notifications import show_info

        self._running = False
        self._run_button.enabled = True
        self._cancel_button.enabled = False
        if cancelled:
            self._status.value = "cancelled"
            show_info(f"{self.title}: cancelled")

    def _fail(self, error: BaseException) -> None:
        """Show an error in the viewer: the message of psfmap's (or the widget's) own input
        errors alone, any other exception with its type."""
        from napari.utils.notifications import show_error

        if isinstance(error, (InputError, ValueError, TypeError)):
            message = str(error)
        else:
            message = f"{type(error).__name__}: {error}"
        if not message.startswith(f"{self.title}:"):
            message = f"{self.title}: {message}"
        self.last_error = message
        self._status.value = "error"
        show_error(message)
