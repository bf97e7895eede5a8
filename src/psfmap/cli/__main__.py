"""``python -m psfmap.cli ...``: the same as the ``psfmap`` script."""

import sys

from psfmap.cli import main

sys.exit(main())
