"""Deprecated: depth from astigmatism moved to :mod:`psfmap.blind` (formulas and calibrations
in :mod:`psfmap.blind.depth`, maps from images in :mod:`psfmap.blind.depth_images`)."""

from psfmap._deprecated import alias_module

alias_module(__name__, "psfmap.blind")
