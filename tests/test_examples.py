"""The example scripts run and show what they claim (the bundled sample, 256², a few seconds)."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_space_variant_deconvolution_example(tmp_path, check_figure):
    scores = _load("space_variant_deconvolution").main(tmp_path, size=256)
    check_figure(tmp_path / "space_variant_deconvolution.png")
    # restoring helps, and the true PSF map helps more than the single centre PSF
    assert scores["RL-TV, true PSF map"] > scores["blurred"] + 1.0
    assert scores["RL-TV, true PSF map"] > scores["RL-TV, single centre PSF"]
