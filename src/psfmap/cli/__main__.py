"""``python -m psfmap.cli ...``: the same as the ``psfmap`` script."""

from psfmap.cli import entry

entry()
