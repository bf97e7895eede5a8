"""Let a sub-package double as its verb: ``psfmap.calibrate(...)`` and ``psfmap.calibrate.x``.

Importing ``psfmap.calibrate`` binds the *module* to that name in ``psfmap``, so the verb of the
same name would be unreachable as ``psfmap.calibrate(...)``. Giving the module a class with
``__call__`` makes the public contract hold whatever has been imported before.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable


def make_callable(module_name: str, verb: Callable) -> None:
    """Make ``sys.modules[module_name](...)`` call ``verb`` (docstring and signature kept)."""

    class CallableModule(types.ModuleType):
        __doc__ = verb.__doc__

        def __call__(self, *args, **kwargs):
            return verb(*args, **kwargs)

    CallableModule.__call__.__doc__ = verb.__doc__
    module = sys.modules[module_name]
    module.__class__ = CallableModule
    module.__signature__ = inspect.signature(verb)  # help() and IDEs show the verb's arguments
