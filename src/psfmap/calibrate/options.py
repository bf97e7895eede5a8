"""The settings of a bead calibration, as one serialisable object.

``calibrate``, ``collect_patches`` and ``fit_family`` all read a :class:`CalibrationOptions`;
their keyword arguments are overrides of its fields, so the list of settings, their defaults
and their checks live in one place. The options used are stored in the calibrated family's
metadata (``family.metadata["calibration"]["options"]``), so a calibration can be replayed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from psfmap._validation import check_int, check_positive, describe

MIN_BEADS_PER_IMAGE = 8


@dataclass(frozen=True)
class CalibrationOptions:
    """Every setting of a bead calibration (Debarnot, Mangeat & Weiss, IEEE TCI 2021).

    Attributes
    ----------
    psf_size : int, optional
        Odd side of the PSF patches and eigen-PSFs (default ``2 ceil(6 σ) + 1``).
    psf_sigma : float, optional
        PSF scale in pixels (Gaussian σ); estimated from the first image when omitted.
    psf_depth : int, optional
        Bead z-stacks only: odd number of planes of the 3-D patches (default
        ``2 ceil(4 σ_z) + 1``).
    psf_sigma_z : float, optional
        Bead z-stacks only: axial PSF scale in planes; estimated when omitted.
    n_eigen, eigen_energy, max_eigen :
        Number I of eigen-PSFs, or the explained signal energy that chooses it (capped).
    spatial_rank, spatial_energy, max_spatial :
        Number J of spatial maps, or the explained energy of the I·K maps that chooses it.
    smoothing : float, optional
        Thin-plate-spline λ (eq. 7) in units of the image size; leave-one-out
        cross-validation when omitted.
    grid_step : int
        Pixel step of the coarse grid on which the maps are evaluated.
    k, z_max, background_degree :
        Detection threshold (median + k·MAD), outlier z-score bound, border polynomial degree.
    saturation : float, optional
        Saturation level of the images (default: an integer dtype's maximum).
    min_beads, min_coverage :
        At least ``min_beads`` clean beads per image, spread over ``min_coverage`` of each axis.

    Examples
    --------
    >>> options = CalibrationOptions(psf_size=21).replace(n_eigen=4)
    >>> options.n_eigen, CalibrationOptions.from_dict(options.to_dict()) == options
    (4, True)
    """

    psf_size: int | None = None
    psf_sigma: float | None = None
    psf_depth: int | None = None
    psf_sigma_z: float | None = None
    n_eigen: int | None = None
    eigen_energy: float = 0.9995
    max_eigen: int = 12
    spatial_rank: int | None = None
    spatial_energy: float = 0.9999
    max_spatial: int = 16
    smoothing: float | None = None
    grid_step: int = 16
    k: float = 6.0
    z_max: float | None = 4.0
    background_degree: int = 1
    saturation: float | None = None
    min_beads: int = MIN_BEADS_PER_IMAGE
    min_coverage: float = 0.3

    def __post_init__(self) -> None:
        # checked when built, not where each is first used minutes into a calibration
        for name in ("n_eigen", "spatial_rank", "psf_size", "psf_depth"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name)
        for name in ("max_eigen", "max_spatial", "grid_step", "min_beads"):
            check_int(getattr(self, name), name)
        check_int(self.background_degree, "background_degree", minimum=0)
        for name in ("psf_sigma", "psf_sigma_z", "saturation", "smoothing", "z_max"):
            if getattr(self, name) is not None:
                check_positive(getattr(self, name), name, allow_zero=name == "smoothing")
        for name in ("eigen_energy", "spatial_energy"):
            value = check_positive(getattr(self, name), name)
            if value > 1:
                raise ValueError(f"{name} must be a fraction in (0, 1], got {value!r}")
        check_positive(self.k, "k")
        coverage = check_positive(self.min_coverage, "min_coverage", allow_zero=True)
        if coverage > 1:
            raise ValueError(f"min_coverage must be a fraction in [0, 1], got {coverage!r}")

    @classmethod
    def build(cls, options: CalibrationOptions | None = None, **settings: Any
              ) -> CalibrationOptions:
        """``options`` (default: all defaults) with the keyword ``settings`` replacing fields.

        Raises ``TypeError`` naming an unknown setting or an ``options`` of another type.
        """
        if options is None:
            options = cls()
        elif not isinstance(options, cls):
            raise TypeError(f"options must be a CalibrationOptions, got {describe(options)}")
        return options.replace(**settings) if settings else options

    def replace(self, **settings: Any) -> CalibrationOptions:
        """A copy with some fields replaced (unknown names are a ``TypeError``)."""
        names = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise TypeError(f"unknown calibration setting(s) {', '.join(unknown)}; expected "
                            f"some of {', '.join(sorted(names))}")
        return dataclasses.replace(self, **settings)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings (stored in the family's metadata)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CalibrationOptions:
        """Options from :meth:`to_dict` (unknown keys are a ``TypeError``)."""
        if not isinstance(values, Mapping):
            raise TypeError(f"calibration options must be a dict, got {describe(values)}")
        return cls().replace(**dict(values))
