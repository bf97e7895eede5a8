"""Deprecated: moved to :mod:`psfmap.training.data`."""

from psfmap._deprecated import alias_module

alias_module(__name__, "psfmap.training.data")
