"""Fixtures of the napari plugin's tests: a real viewer, Qt offscreen, notifications.

The viewer's canvas needs OpenGL. Qt's offscreen platform (no window is ever shown) gets it
from an X display: pytest-xvfb (in the ``napari`` extra) starts a virtual one when the Xvfb
program is installed (``.ci/run`` installs it). Without a display the viewer tests are
skipped with the reason, and fail under CI, where they must run.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

# before any QApplication exists: widgets and canvases render offscreen, no window opens
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

if importlib.util.find_spec("napari") is None:  # the optional extra is not installed
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
def viewer(request):
    """A real napari viewer (napari's ``make_napari_viewer``, closed after the test)."""
    if not os.environ.get("DISPLAY"):
        reason = ("no X display for the viewer's OpenGL canvas: install the Xvfb program "
                  "(apt-get install xvfb), pytest-xvfb then starts a virtual display")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    # requested only now: napari's fixture tears down by reading the test call's report,
    # which a test skipped during its set-up never gets
    return request.getfixturevalue("make_napari_viewer")()


@pytest.fixture
def notifications():
    """The messages shown in the viewer (napari notifications) during the test."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)

    def messages() -> list[str]:
        return [str(record.message) for record in notification_manager.records[start:]]

    return messages


@pytest.fixture
def wait_for(qtbot):
    """``wait_for(widget)``: process Qt events until the widget's job has finished."""

    def wait(widget, timeout: float = 60.0) -> None:
        qtbot.waitUntil(lambda: not widget.is_running, timeout=int(timeout * 1000))
        qtbot.wait(10)  # the queued result and finished signals

    return wait
