"""Training of the PSF-regression CNN: seeded training samples, the loop, evaluation.

Nothing in psfmap imports this package at run time: inference reads the weights through
:mod:`psfmap.blind.checkpoint`. ``psfmap train`` (and :func:`train`) reproduces the shipped
weights from the config stored beside them.

* :mod:`psfmap.training.sources`: sharp source images (synthetic cells and points, natural
  pictures, real sharp microscopy);
* :mod:`psfmap.training.data`: :class:`DataConfig` and the seeded :class:`PatchGenerator`;
* :mod:`psfmap.training.loop`: :class:`TrainConfig`, :func:`train`, :func:`fit_uncertainty`,
  the loss and the R² score.
"""

from psfmap.blind.checkpoint import (
    CHECKPOINT_VERSION,
    checkpoint_card_path,
    load_checkpoint,
    save_checkpoint,
)
from psfmap.training.data import (
    DEFAULT_INVALID_KINDS,
    INVALID_KINDS,
    SOURCES,
    Batch,
    DataConfig,
    PatchGenerator,
    normalize_patches,
    valid_convolve,
)
from psfmap.training.loop import (
    UNCERTAINTY_HELD_OUT,
    TrainConfig,
    calibration_by_quartile,
    dihedral_augment,
    evaluate,
    fit_uncertainty,
    r2_score,
    regression_loss,
    train,
    wrapped_error,
)
from psfmap.training.sources import (
    MICR_BINNING,
    PACKAGE_DATA,
    SHARED_DATA,
    microscopy_images,
    microscopy_paths,
    natural_images,
    sum_bin,
    synthetic_cells,
    synthetic_points,
)

__all__ = [
    "CHECKPOINT_VERSION", "DEFAULT_INVALID_KINDS", "INVALID_KINDS", "MICR_BINNING",
    "PACKAGE_DATA", "SHARED_DATA", "SOURCES", "UNCERTAINTY_HELD_OUT", "Batch", "DataConfig",
    "PatchGenerator", "TrainConfig", "calibration_by_quartile", "checkpoint_card_path",
    "dihedral_augment", "evaluate", "fit_uncertainty", "load_checkpoint", "microscopy_images",
    "microscopy_paths", "natural_images", "normalize_patches", "r2_score", "regression_loss",
    "save_checkpoint", "sum_bin", "synthetic_cells", "synthetic_points", "train",
    "valid_convolve", "wrapped_error",
]
