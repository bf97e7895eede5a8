"""Deprecated: moved to :mod:`psfmap.blind.estimator`."""

from psfmap._deprecated import alias_module

alias_module(__name__, "psfmap.blind.estimator")
