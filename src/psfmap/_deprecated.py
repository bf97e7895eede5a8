"""Deprecated import paths, kept working for one release with a ``DeprecationWarning``.

psfmap 0.2 gave each job its own package (``blind/``, ``training/``, spike identification in
``calibrate/``); the old paths (``psfmap.identify...``, ``psfmap.depth``) forward to the new
ones.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Mapping
from typing import Any


def alias_module(old: str, new: str) -> None:
    """Make the module being imported as ``old`` the module ``new`` (with a warning)."""
    warnings.warn(f"{old} is deprecated and will be removed; import {new} instead",
                  DeprecationWarning, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)


def forward_attribute(old: str, name: str, moved: Mapping[str, str]) -> Any:
    """The attribute ``name`` of the deprecated module ``old``, read from its new module."""
    if name not in moved:
        raise AttributeError(f"module {old!r} has no attribute {name!r}")
    warnings.warn(f"{old}.{name} is deprecated and will be removed; use "
                  f"{moved[name]}.{name} instead", DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(moved[name]), name)
