"""A Deep-Blur model: a family of operators, its identification network and its unrolled
deblurring network, saved as ``NAME.pt`` (weights) + ``NAME.json`` (everything else).

The JSON holds the family (a named PSF family's config, or the file of a calibrated family,
relative to the JSON), both networks' architecture, the training config that reproduces the
weights and the held-out figures. Loading checks that the family and the weights agree on P.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from psfmap.deepblur.families import family_from_config
from psfmap.deepblur.networks import IdentificationNet, UnrolledFISTA

__all__ = ["DeepBlurModel", "load_model", "pretrained_names"]

PRETRAINED = Path(__file__).resolve().parent.parent / "pretrained"
PREFIX = "deepblur-"
FORMAT_VERSION = 1


def pretrained_names() -> list[str]:
    """Names of the shipped Deep-Blur models (``deepblur-NAME.json`` in ``psfmap/pretrained``)."""
    return sorted(p.stem[len(PREFIX):] for p in PRETRAINED.glob(f"{PREFIX}*.json")
                  if (p.with_suffix(".pt")).exists())


@dataclass
class DeepBlurModel:
    """Family + identification network + unrolled deblurring network.

    Attributes
    ----------
    family : ZernikeBoxFamily or CalibratedHullFamily
    identifier : IdentificationNet
    deblurrer : UnrolledFISTA
    config : dict
        ``field`` (smallest image side accepted), training config, held-out metrics.
    name : str
    """

    family: Any
    identifier: IdentificationNet
    deblurrer: UnrolledFISTA
    config: dict = field(default_factory=dict)
    name: str = "deepblur"

    def __post_init__(self) -> None:
        expected = self.identifier.config["n_params"]
        if self.family.n_params != expected:
            raise ValueError(f"family has P = {self.family.n_params} coefficients but the "
                             f"identification weights predict {expected}; expected the family "
                             "the weights were trained for")

    @property
    def n_params(self) -> int:
        return int(self.family.n_params)

    @property
    def field(self) -> int:
        """Smallest image side (px) the model accepts: the training image size."""
        return int(self.config.get("field", self.identifier.field))

    def eval(self) -> DeepBlurModel:
        self.identifier.eval()
        self.deblurrer.eval()
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (.pt weights) and the ``.json`` beside it, atomically."""
        path = Path(path).with_suffix(".pt")
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"format_version": FORMAT_VERSION,
                 "identifier": self.identifier.state_dict(),
                 "deblurrer": self.deblurrer.state_dict()}
        meta = {"format_version": FORMAT_VERSION, "name": self.name,
                "family": self.family.config(),
                "identifier": self.identifier.config, "deblurrer": self.deblurrer.config,
                **{k: v for k, v in self.config.items() if k not in ("family",)}}
        _atomic(path, lambda handle: torch.save(state, handle))
        _atomic(path.with_suffix(".json"),
                lambda handle: handle.write(json.dumps(meta, indent=2).encode()))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, family: Any = None) -> DeepBlurModel:
        """Read a model written by :meth:`save`; ``family`` replaces the stored one (same P)."""
        path = Path(path)
        json_path, weights_path = path.with_suffix(".json"), path.with_suffix(".pt")
        for needed in (json_path, weights_path):
            if not needed.exists():
                raise FileNotFoundError(f"Deep-Blur model file {str(needed)!r} does not exist")
        meta = json.loads(json_path.read_text())
        version = int(meta.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise ValueError(f"{str(json_path)!r} has format version {version}; this psfmap "
                             f"reads up to {FORMAT_VERSION}: upgrade psfmap")
        if family is None:
            family = family_from_config(meta["family"], json_path.parent)
        identifier = IdentificationNet(**meta["identifier"])
        deblurrer = UnrolledFISTA(**meta["deblurrer"])
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        identifier.load_state_dict({k: v.float() for k, v in state["identifier"].items()})
        deblurrer.load_state_dict({k: v.float() for k, v in state["deblurrer"].items()})
        config = {k: v for k, v in meta.items()
                  if k not in ("identifier", "deblurrer", "family", "name", "format_version")}
        return cls(family, identifier, deblurrer, config, meta.get("name", path.stem)).eval()


def load_model(model: Any, family: Any = None) -> DeepBlurModel:
    """A :class:`DeepBlurModel` from itself, a shipped name (``"zernike7"``) or a file path."""
    if isinstance(model, DeepBlurModel):
        if family is not None:
            return DeepBlurModel(family, model.identifier, model.deblurrer, model.config,
                                 model.name)
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a DeepBlurModel, a shipped name or a path, got "
                        f"{type(model).__name__}")
    text = str(model)
    if text in pretrained_names():
        return DeepBlurModel.load(PRETRAINED / f"{PREFIX}{text}.json", family)
    candidate = Path(text)
    if candidate.suffix in (".pt", ".json") or candidate.with_suffix(".json").exists():
        return DeepBlurModel.load(candidate, family)
    raise ValueError(f"model {text!r} is neither a shipped Deep-Blur model "
                     f"({', '.join(pretrained_names()) or 'none installed'}) nor a model file")


def _atomic(path: Path, write) -> None:
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            write(handle)
        os.chmod(handle.name, 0o644)  # NamedTemporaryFile creates it private
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
