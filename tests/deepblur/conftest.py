"""Fixtures of the Deep-Blur tests: small families and an untrained model (fast)."""

from __future__ import annotations

import pytest
import torch

from psfmap.calibrate import OperatorFamily
from psfmap.deepblur import (
    CalibratedHullFamily,
    DeepBlurModel,
    IdentificationNet,
    UnrolledFISTA,
    ZernikeBoxFamily,
)
from psfmap.deepblur.model import PRETRAINED
from psfmap.psf import model as psf_model

FAMILY_FILE = PRETRAINED / "deepblur-beads12.family.psfmap"


@pytest.fixture(scope="session")
def zernike_family() -> ZernikeBoxFamily:
    return ZernikeBoxFamily(psf_model("zernike7", size=17))


@pytest.fixture(scope="session")
def hull_family() -> CalibratedHullFamily:
    return CalibratedHullFamily(OperatorFamily.load(FAMILY_FILE), "beads12",
                                source=FAMILY_FILE.name)


@pytest.fixture
def tiny_model(zernike_family) -> DeepBlurModel:
    torch.manual_seed(0)
    identifier = IdentificationNet(zernike_family.n_params, widths=(4, 8), pool=1)
    deblurrer = UnrolledFISTA(iterations=3, channels=4)
    return DeepBlurModel(zernike_family, identifier, deblurrer, {"field": 32}, "tiny").eval()
