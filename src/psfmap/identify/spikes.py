"""Deprecated: moved to :mod:`psfmap.calibrate.spikes`."""

from psfmap._deprecated import alias_module

alias_module(__name__, "psfmap.calibrate.spikes")
