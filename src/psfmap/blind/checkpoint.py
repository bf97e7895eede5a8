"""The CNN's weights files: a torch archive of tensors, strings and numbers (readable with
``torch.load(weights_only=True)``) and a JSON card beside it with the full training config.

Reading weights is part of inference, so it lives here, not in :mod:`psfmap.training` (which
nothing imports at run time).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from psfmap._container import atomic_write, check_version
from psfmap.blind.network import PSFRegressor

CHECKPOINT_FORMAT = "psfmap-cnn"
CHECKPOINT_VERSION = 2  # 2: optional uncertainty head (network.uncertainty)


def save_checkpoint(
    path: str | Path,
    network: PSFRegressor,
    config: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write weights + full config to ``path`` (torch file) and ``path.json``, atomically.

    The torch file holds only tensors, strings and numbers (loadable with
    ``torch.load(weights_only=True)``).
    """
    path = Path(path)
    card_path = checkpoint_card_path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": json.loads(json.dumps(dict(config))),
        "metrics": json.loads(json.dumps(dict(metrics or {}))),
        "state_dict": {k: v.detach().cpu().clone() for k, v in network.state_dict().items()},
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    card = {key: payload[key] for key in ("format", "version", "config", "metrics")}
    text = json.dumps(card, indent=2, sort_keys=True) + "\n"
    atomic_write(card_path, lambda tmp: tmp.write_text(text))
    return path


def checkpoint_card_path(path: str | Path) -> Path:
    """The JSON card written beside the weights file ``path`` (``.pt`` -> ``.json``).

    Raises ``ValueError`` for a weights path ending in ``.json``: its card would write over
    the weights.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        raise ValueError(f"weights file {str(path)!r} ends in .json, the suffix of its card; "
                         "use .pt")
    return path.with_suffix(".json")


def load_checkpoint(path: str | Path) -> tuple[PSFRegressor, dict[str, Any], dict[str, Any]]:
    """Read a checkpoint -> ``(network in eval mode, config, metrics)``.

    Raises ``ValueError`` for a missing or foreign file and for a format version newer than
    this psfmap reads.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; say so, not torch's advice
        raise ValueError(f"{str(path)!r} is not a psfmap CNN weights file (a .pt written by "
                         "psfmap train)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets one clear message
        raise ValueError(f"{str(path)!r} is not a readable psfmap weights file ({error})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a psfmap CNN weights file")
    check_version(payload.get("version", 0), CHECKPOINT_VERSION, path, "weights format")
    config = payload["config"]
    network = PSFRegressor.from_config(config["network"])
    try:
        network.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise ValueError(f"{str(path)!r} weights do not match its network config: "
                         f"{str(error).splitlines()[0]}") from None
    return network.eval(), config, payload.get("metrics", {})
