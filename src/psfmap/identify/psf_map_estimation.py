"""Deprecated: moved to :mod:`psfmap.blind.psf_maps`."""

from psfmap._deprecated import alias_module

alias_module(__name__, "psfmap.blind.psf_maps")
