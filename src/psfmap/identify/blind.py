"""Deprecated: moved to :mod:`psfmap.blind.verbs`."""

from psfmap._deprecated import alias_module

alias_module(__name__, "psfmap.blind.verbs")
