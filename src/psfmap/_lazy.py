"""Lazy re-exports, so that ``import psfmap`` (or a package of it) stays cheap and each
module loads only when one of its names is first used."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, MutableMapping
from typing import Any


def lazy_attribute(module: str, namespace: MutableMapping[str, Any], exports: Mapping[str, str],
                   name: str) -> Any:
    """The attribute ``name`` of the package ``module``, imported from ``exports[name]`` and
    cached in the package's ``namespace`` (its ``globals()``)."""
    if name not in exports:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(exports[name]), name)
    namespace[name] = value
    return value
