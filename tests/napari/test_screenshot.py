"""The docs' screenshot script still runs and draws the image, its PSF map and the result."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "scripts" / "napari_screenshot.py"


@pytest.mark.slow
def test_screenshot_script_draws_the_viewer(viewer, tmp_path, check_figure):
    spec = importlib.util.spec_from_file_location("napari_screenshot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert os.environ["QT_QPA_PLATFORM"] == "offscreen"
    # in the test's viewer: a second top-level viewer in one process can lose its OpenGL
    path = module.main(tmp_path / "shot.png", model="gaussian1", viewer=viewer)
    pixels = check_figure(path, min_pixels=500)
    # the PSF mosaic is drawn in magma over the image: some pixels are clearly coloured
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=float)
    colourful = (rgb[..., 0] - rgb[..., 2] > 60) & (rgb[..., 0] > 120)
    assert colourful.sum() > 100, "no PSF mosaic in the picture"
    assert pixels.shape[1] > 1000
