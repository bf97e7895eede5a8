"""A microscope composed of optical blocks: PSFs, through-focus stacks, PSF grids, images.

``Microscope([source, block, ..., camera])`` runs the source's field through the blocks and
hands the last field to the camera. Its outputs are what the rest of psfmap consumes: a PSF
``(h, w)``, a through-focus stack ``(D, h, w)``, or a grid of PSFs ``(gy, gx, h, w)`` (one
defocus per cell, e.g. a tilted focal plane) that
:func:`psfmap.operators.from_microscope` turns into a restoration operator.

The optical train is also described by a small JSON-able dictionary (see :func:`build`), the
format that ``psfmap optics fit`` reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from psfmap._validation import as_tensor, describe
from psfmap.optics.blocks import (
    Block,
    Camera,
    Lens,
    PhaseMask,
    Propagation,
    PSFSource,
    Wave,
    ZernikeSource,
)

BLOCK_TYPES = {
    "zernike_source": ZernikeSource,
    "propagation": Propagation,
    "lens": Lens,
    "phase_mask": PhaseMask,
    "camera": Camera,
}


class Microscope(nn.Module):
    """Chain of optical blocks from a source to a camera.

    Parameters
    ----------
    blocks : sequence of Block
        A source (:class:`ZernikeSource` or :class:`PSFSource`) first, a :class:`Camera`
        last, any :class:`Propagation`, :class:`Lens`, :class:`PhaseMask` between. Block names
        must be unique (give ``name=`` to repeated kinds: ``Lens(f, name="tube")``); a second
        block of a kind without a name is called ``kind_2``.
    focus : str, optional
        Name of the block that the through-focus offsets (``depth=``) act on: by default the
        source when it has a ``depth`` parameter, else the first propagation.

    Notes
    -----
    Parameters are named ``block.parameter`` (``source.zernike``, ``propagation.distance``,
    ``mask.phase``, ``camera.gain``...): :meth:`parameter_names` lists them and
    :func:`psfmap.optics.fit` takes them.
    """

    def __init__(self, blocks: Sequence[Block], *, focus: str | None = None) -> None:
        super().__init__()
        blocks = list(blocks)
        if len(blocks) < 2 or not all(isinstance(b, Block) for b in blocks):
            raise ValueError("blocks must be a list of optical blocks, a source first and a "
                             f"Camera last, got {[describe(b) for b in blocks]}")
        if not isinstance(blocks[0], (ZernikeSource, PSFSource)):
            raise ValueError(f"the first block must be a source (ZernikeSource or PSFSource), "
                             f"got {type(blocks[0]).__name__}")
        if not isinstance(blocks[-1], Camera):
            raise ValueError(f"the last block must be a Camera, got {type(blocks[-1]).__name__}")
        for block in blocks[1:-1]:
            if isinstance(block, (Camera, ZernikeSource, PSFSource)):
                raise ValueError(f"a {type(block).__name__} can only be first (source) or last "
                                 "(camera) in the chain")
        named: dict[str, Block] = {}
        for block in blocks:
            name = block.name
            if name in named:
                count = 2
                while f"{name}_{count}" in named:
                    count += 1
                name = f"{name}_{count}"
                block.name = name
            named[name] = block
        self.blocks = nn.ModuleDict(named)
        if focus is None:
            focus = next((n for n, b in named.items() if b.focusable), None)
        elif focus not in named or not named[focus].focusable:
            choices = [n for n, b in named.items() if b.focusable]
            raise ValueError(f"focus must name a source with a depth or a propagation block, "
                             f"one of {choices}, got {focus!r}")
        self.focus = focus

    # ------------------------------------------------------------------ parameters
    def parameter_names(self) -> list[str]:
        """``block.parameter`` names of every physical parameter."""
        return [name.removeprefix("blocks.") for name, _ in self.named_parameters()]

    def parameter(self, name: str) -> nn.Parameter:
        """The parameter ``block.parameter`` (``ValueError`` naming the choices if absent)."""
        found = dict(self.named_parameters())
        if f"blocks.{name}" not in found:
            raise ValueError(f"the microscope has no parameter {name!r}; it has "
                             f"{self.parameter_names()}")
        return found[f"blocks.{name}"]

    def set_trainable(self, names: Sequence[str]) -> None:
        """Train exactly the parameters ``names`` (the others frozen)."""
        wanted = set(names)
        unknown = sorted(wanted - set(self.parameter_names()))
        if unknown:
            raise ValueError(f"params names {unknown}, which the microscope does not have; it "
                             f"has {self.parameter_names()}")
        for name in self.parameter_names():
            self.parameter(name).requires_grad_(name in wanted)

    def values(self) -> dict[str, torch.Tensor]:
        """A detached copy of every parameter, by name."""
        return {name: self.parameter(name).detach().clone() for name in self.parameter_names()}

    # ------------------------------------------------------------------ optics
    @property
    def camera(self) -> Camera:
        return list(self.blocks.values())[-1]

    def field(self, depth: Any = None) -> Wave:
        """The wave reaching the camera; ``depth`` (µm, number or ``(D,)``) offsets the focus
        block, giving a leading axis of length D."""
        offset = None if depth is None else as_tensor(depth, "depth").to(
            device=self._device()).reshape(-1 if _is_sequence(depth) else ())
        blocks = list(self.blocks.items())
        source_name, source = blocks[0]
        wave = source(offset if source_name == self.focus else None)
        for name, block in blocks[1:-1]:
            if name == self.focus:
                wave = block(wave, offset)
            else:
                wave = block(wave)
        if offset is not None and self.focus is None:
            raise ValueError("depth was given but the microscope has no block to focus "
                             "(a ZernikeSource or a Propagation)")
        return wave

    def psf(self, depth: Any = None) -> torch.Tensor:
        """Camera PSF ``(h, w)`` summing to 1, or a stack ``(D, h, w)`` for ``D`` depths."""
        return self.camera.psf(self.field(depth))

    def psf_stack(self, depths: Any) -> torch.Tensor:
        """Through-focus PSFs ``(D, h, w)`` at the focus offsets ``depths`` (µm)."""
        depths = as_tensor(depths, "depths").reshape(-1)
        return self.psf(depths)

    def psf_grid(self, depths: Any) -> torch.Tensor:
        """PSFs ``(gy, gx, h, w)`` for a grid of cells, each at its own focus offset.

        ``depths (gy, gx)`` µm: e.g. a tilted or curved focal plane over the field of view.
        """
        depths = as_tensor(depths, "depths")
        if depths.ndim != 2:
            raise ValueError(f"depths must be a (gy, gx) grid of focus offsets in µm, got "
                             f"{describe(depths)}")
        stack = self.psf(depths.reshape(-1))
        return stack.reshape(*depths.shape, *stack.shape[-2:])

    def pixel_size(self) -> float:
        """Camera pixel pitch in µm (the sampling of :meth:`psf`)."""
        with torch.no_grad():
            pitch = self.camera.pixel_size(self.field())
        return float(pitch)

    def forward(self, objects: torch.Tensor | None = None, depth: Any = None) -> torch.Tensor:
        """Camera images ``gain · (PSF ⋆ objects) + background`` (``objects=None``: the PSF
        stack itself, scaled)."""
        return self.camera.image(self.psf(depth), objects)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        """The JSON-able description that :func:`build` reads back (current values)."""
        return {"focus": self.focus, "blocks": [_describe(b) for b in self.blocks.values()]}


def _is_sequence(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.ndim > 0
    return hasattr(value, "__len__")


def _describe(block: Block) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": _type_name(block), "name": block.name}
    if isinstance(block, ZernikeSource):
        spec.update(size=block.size, na=block.na, wavelength=block.wavelength,
                    pixel_size=block.pixel_size, immersion_index=block.immersion_index,
                    n_terms=block.n_terms, free_terms=block.free_terms)
    elif isinstance(block, Propagation):
        spec.update(method=block.method, padding=block.padding)
    elif isinstance(block, Camera):
        spec.update(binning=block.binning, crop=block.crop)
    for name, parameter in block.named_parameters(recurse=False):
        value = parameter.detach().cpu()
        spec[name] = value.tolist() if value.ndim else float(value)
    return spec


def _type_name(block: Block) -> str:
    for name, kind in BLOCK_TYPES.items():
        if type(block) is kind:
            return name
    raise ValueError(f"{type(block).__name__} blocks cannot be described as JSON")


def build(spec: Mapping[str, Any]) -> Microscope:
    """A :class:`Microscope` from its dictionary description.

    ``{"blocks": [{"type": "zernike_source", "size": 32, "na": 0.95, "wavelength": 0.52,
    "pixel_size": 0.108, "zernike": {"4": 0.1}}, {"type": "camera"}], "focus": null}``:
    each block's ``type`` is one of ``zernike_source``, ``propagation``, ``lens``,
    ``phase_mask``, ``camera``; the other keys are that block's keyword arguments (the
    ``phase`` of a mask as a nested list). Dictionary keys of ``zernike`` are Noll indices.
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("blocks"), list):
        raise ValueError("the optical train must be a mapping with a list 'blocks', got "
                         f"{describe(spec)}")
    blocks = []
    for index, entry in enumerate(spec["blocks"]):
        if not isinstance(entry, Mapping) or entry.get("type") not in BLOCK_TYPES:
            raise ValueError(f"blocks[{index}] must be a mapping whose 'type' is one of "
                             f"{sorted(BLOCK_TYPES)}, got {entry!r}")
        kwargs = {k: v for k, v in entry.items() if k != "type"}
        if isinstance(kwargs.get("zernike"), Mapping):
            kwargs["zernike"] = {int(k): float(v) for k, v in kwargs["zernike"].items()}
        kind = BLOCK_TYPES[entry["type"]]
        positional = {Propagation: "distance", Lens: "focal_length"}.get(kind)
        try:
            if positional is not None:
                if positional not in kwargs:
                    raise ValueError(f"a {entry['type']} block needs {positional!r}")
                blocks.append(kind(kwargs.pop(positional), **kwargs))
            else:
                blocks.append(kind(**kwargs))
        except TypeError as error:
            raise ValueError(f"blocks[{index}] ({entry['type']}): {error}") from None
    return Microscope(blocks, focus=spec.get("focus"))
