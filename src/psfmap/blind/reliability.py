"""When to distrust a blind PSF map, in words a user can act on.

A CNN estimate is only as good as the family it was trained on and the texture it sees. Three
signs that a map is doubtful, each measured over its cells:

* **the range's upper end**: estimates piled up at the top of a parameter's range (e.g. a
  Gaussian width of 4 px, the family's maximum) mean the blur there is probably wider than
  the model covers — a real widefield image whose own PSF is already 2–3 px, or a defocus
  beyond the range; restoring with such a map under-corrects at best;
* **no texture**: cells whose validity is below the threshold were filled from neighbours;
  when most are, the map is mostly interpolation;
* **large predicted errors**: networks that predict their own error (``PSFMap.std``) say so
  directly.

The lower end of a range is not flagged: it is where in-focus regions legitimately sit.
"""

from __future__ import annotations

import numpy as np

from psfmap.blind.psf_maps import VALIDITY_THRESHOLD

# a parameter in the top tenth of its range is "at the upper end": the shipped gaussian1 put
# 18 % of its cells there for a true σ of 3.5 px (in range), 51 % at 4 px and 82-90 % at
# 5-8 px (beyond it) on the bundled neuron (tests/blind/test_reliability.py)
EDGE_FRACTION = 0.1
# a map is flagged when at least this fraction of its cells sits at the upper end
EDGE_FLAG_FRACTION = 0.5
# ... or when at least this fraction of its (textured) cells predicts a large error
FLAG_FRACTION = 0.25
# ... or when at least this fraction of its cells was filled for lack of texture
INVALID_FRACTION = 0.5
# a predicted standard deviation above this fraction of the range's width is a large error (the
# shipped zernike3 predicts 0.06 for focus and cylinder where its actual error is 0.04: 20 %
# of their ranges would flag sound maps)
UNCERTAIN_FRACTION = 0.3


def reliability_warnings(psf_map) -> list[str]:
    """Sentences describing why ``psf_map`` (a :class:`~psfmap.operators.PSFMap` from a blind
    estimate) should not be trusted; empty when nothing is wrong.

    Examples
    --------
    >>> import numpy as np
    >>> from psfmap.operators import PSFMap
    >>> piled_up = PSFMap("gaussian1", np.full((2, 2, 1), 4.0), (64, 64))
    >>> reliability_warnings(piled_up)[0].startswith("100% of the 4 cells estimate width at")
    True
    """
    family = psf_map.family
    low = np.asarray(family.low, dtype=np.float64)
    high = np.asarray(family.high, dtype=np.float64)
    span = high - low
    periodic = {axis for _, axis in family.periodic}
    params = psf_map.params.reshape(-1, family.n_params)
    cells = len(params)
    messages = []
    for column, name in enumerate(family.names):
        if column in periodic or span[column] <= 0:
            continue
        at_end = params[:, column] >= high[column] - EDGE_FRACTION * span[column]
        if at_end.mean() >= EDGE_FLAG_FRACTION:
            messages.append(
                f"{at_end.mean():.0%} of the {cells} cells estimate {name} at the upper end of "
                f"the {family.name} range [{low[column]:g}, {high[column]:g}]: the blur there "
                "is probably beyond what the model covers, so a restoration with this map may "
                "be worse than the input"
            )
    invalid = psf_map.validity.reshape(-1) < VALIDITY_THRESHOLD
    if invalid.mean() >= INVALID_FRACTION:
        messages.append(
            f"{invalid.mean():.0%} of the {cells} cells had too little texture (validity < "
            f"{VALIDITY_THRESHOLD}) and were filled from their neighbours"
        )
    if psf_map.std is not None:
        spread = psf_map.std.reshape(-1, family.n_params)
        columns = [k for k in range(family.n_params) if k not in periodic and span[k] > 0]
        uncertain = (spread[:, columns] > UNCERTAIN_FRACTION * span[columns]).any(axis=1)
        uncertain &= ~invalid  # filled cells are counted above
        if uncertain.mean() >= FLAG_FRACTION:
            messages.append(
                f"{uncertain.mean():.0%} of the {cells} cells have a predicted error above "
                f"{UNCERTAIN_FRACTION:.0%} of their parameter's range"
            )
    return messages
