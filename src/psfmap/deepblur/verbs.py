"""The Deep-Blur verbs: :func:`identify` (image → γ̂) and :func:`deblur` (image → restored).

Debarnot & Weiss, "Deep-Blur: blind identification and deblurring with convolutional neural
networks": a first network estimates the coefficients ``γ̂`` of the operator ``A(γ)`` that
blurred the image, a second (FISTA unrolled, learned proximal step) restores the image with
``A(γ̂)`` in its data term.

Bad ``gamma``: a vector of the wrong length is refused; a γ outside the admissible set is
projected onto it with a ``UserWarning`` (``outside="project"``, the default, as a γ̂ from the
network may stray just outside it) or refused (``outside="raise"``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from psfmap._memory import reuse_freed_memory, worth_reusing
from psfmap._validation import ArrayKind, as_tensor, check_finite, describe
from psfmap.deepblur.families import gamma_array
from psfmap.deepblur.model import load_model

__all__ = ["deblur", "identify"]

#: a space-invariant family's coefficients are read from the window of this side (16 times
#: the 64² training field) with the most texture, not from the whole image: the same blur is
#: everywhere, and the identification network's cost grows with the area (52 ms at 512²,
#: 13 ms at 256² on 2 CPU cores)
IDENTIFY_WINDOW = 256
#: bytes of memory a frame's restoration holds per pixel, for the choice to keep freed
#: buffers (measured: 80–120 per pixel at 512² and 1024², doubled). Inside
#: :func:`~psfmap._memory.reuse_freed_memory` the unrolled network's activations reuse the
#: heap instead of being faulted in again after glibc trims it: 16–24 thousand page faults
#: and 120–160 ms per 512² call without, 3–4 thousand and ~105 ms with (zernike7, 2 threads)
WORKING_SET_PER_PIXEL = 256


def _frames(image: Any, name: str, field: int) -> tuple[torch.Tensor, ArrayKind, tuple]:
    """``image (..., H, W)`` → float32 frames ``(T, H, W)``, the caller's kind, leading shape."""
    if not isinstance(image, (np.ndarray, torch.Tensor, list, tuple)):
        raise TypeError(f"{name} must be a NumPy array or torch tensor (..., H, W), got "
                        f"{describe(image)}")
    kind = ArrayKind(image)
    tensor = check_finite(as_tensor(image, name), name)
    if tensor.ndim < 2:
        raise ValueError(f"{name} must have shape (..., H, W), got {tuple(tensor.shape)}")
    height, width = tensor.shape[-2:]
    if min(height, width) < field:
        raise ValueError(f"{name} is {height}x{width}, smaller than the network's field "
                         f"{field}x{field}; expected an image at least that large")
    if bool((tensor < 0).any()):
        raise ValueError(f"{name} has negative values; expected a fluorescence image >= 0 "
                         "(subtract the camera offset first, then clip)")
    lead = tuple(tensor.shape[:-2])
    frames = tensor.detach().cpu().float().reshape(-1, height, width)
    return frames, kind, lead


def _textured_window(frames: torch.Tensor, side: int) -> torch.Tensor:
    """Per frame, the ``side × side`` window with the largest standard deviation among a 3 × 3
    grid of windows spanning the frame (corners, edges' middles and centre)."""
    height, width = frames.shape[-2:]
    if height <= side and width <= side:
        return frames
    side_h, side_w = min(side, height), min(side, width)
    rows = sorted({0, (height - side_h) // 2, height - side_h})
    cols = sorted({0, (width - side_w) // 2, width - side_w})
    windows = torch.stack([frames[:, r : r + side_h, c : c + side_w]
                           for r in rows for c in cols], 1)  # (T, n, side, side)
    best = windows.flatten(2).std(-1).argmax(1)
    return windows[torch.arange(len(frames)), best]


def project_estimates(gammas: Any, family: Any) -> np.ndarray:
    """Identified coefficients ``(..., P)`` → ``(T, P)`` float64, each projected onto the
    admissible set if it lies outside, without a warning.

    The identification network's output is not bounded to the set: on held-out images of
    ``zernike7`` half of the estimates lie outside its box, by up to ~15 % of the box's size
    (``beads12``: all of them, by < 1.5 % of the hull's), so a warning would say nothing
    about the image. A ``gamma`` given by the caller is checked instead (``outside``).
    """
    rows = np.asarray(gammas, dtype=np.float64).reshape(-1, family.n_params)
    return np.stack([row if family.contains(row) else family.project(row) for row in rows])


def identify(image: Any, model: Any, *, family: Any = None) -> Any:
    """Estimate the coefficients ``γ̂`` of the operator that blurred ``image``.

    Parameters
    ----------
    image : ndarray or Tensor (H, W) or (..., H, W)
        Blurred, non-negative image(s); each side at least ``model.field`` px.
    model : str, path or DeepBlurModel
        A shipped name (``"zernike7"``, ``"beads12"``), a ``.json``/``.pt`` file or a model.
    family : optional
        A family replacing the model's own (it must have the weights' P).

    Returns
    -------
    ndarray or Tensor (P,) or (..., P)
        Of the caller's kind; for a stack, one γ̂ per frame. Not projected onto the
        admissible set (:func:`deblur` does that; ``model.family.project`` on request).

    Notes
    -----
    For a space-invariant family (``zernike7``) the network reads the
    :data:`IDENTIFY_WINDOW`² window with the most texture (of 9 spread over the frame);
    a space-variant family's network reads the whole frame, where the blur was seen.
    """
    model = load_model(model, family)
    frames, kind, lead = _frames(image, "image", model.field)
    if getattr(model.family, "space_invariant", False):
        frames = _textured_window(frames, IDENTIFY_WINDOW)
    with torch.no_grad():
        unit = model.identifier.eval().fused_for_inference()(frames)
        gamma = model.family.denormalize(unit.double())
    gamma = gamma.reshape(*lead, model.n_params)
    if kind.numpy:
        return gamma.numpy()
    return gamma.to(kind.torch_dtype if kind.torch_dtype.is_floating_point else torch.float32
                    ).to(kind.device)


def deblur(image: Any, model: Any, gamma: Any = None, *, family: Any = None,
           outside: str = "project", callback: Callable[[int], Any] | None = None) -> Any:
    """Restore ``image`` with the unrolled network and the operator ``A(γ)``.

    Parameters
    ----------
    image : ndarray or Tensor (H, W) or (..., H, W)
        Blurred, non-negative image(s); stacks are restored frame by frame.
    model : str, path or DeepBlurModel
        As in :func:`identify`.
    gamma : array (P,) or (..., P), optional
        The operator's coefficients; estimated with :func:`identify` when omitted.
    family : optional
        A family replacing the model's own (same P).
    outside : {"project", "raise"}
        What a γ outside the admissible set gets: projected with a warning, or refused.
    callback : callable, optional
        ``callback(frame_index)`` after each frame is restored (e.g. a progress bar).

    Returns
    -------
    ndarray or Tensor, the shape and kind of ``image``.
    """
    model = load_model(model, family)
    frames, kind, lead = _frames(image, "image", model.field)
    n_params = model.n_params
    if gamma is None:
        gammas = project_estimates(identify(frames, model), model.family)
    else:
        gammas = gamma_array(gamma, n_params, what="an array")
        if gammas.ndim == 0 or gammas.shape[-1] != n_params:
            raise ValueError(f"gamma must have length P = {n_params} (the family's number of "
                             f"coefficients), got shape {gammas.shape}")
        gammas = gammas.reshape(-1, n_params)
        if len(gammas) == 1:
            gammas = np.repeat(gammas, len(frames), axis=0)
        elif len(gammas) != len(frames):
            raise ValueError(f"gamma holds {len(gammas)} vectors for {len(frames)} frames; "
                             "expected one, or one per frame")
        gammas = np.stack([model.family.check_gamma(row, outside=outside) for row in gammas])
    shape = tuple(frames.shape[-2:])
    restored = torch.empty_like(frames)
    reuse = worth_reusing(None, WORKING_SET_PER_PIXEL * shape[0] * shape[1])
    with torch.no_grad(), reuse_freed_memory() if reuse else contextlib.nullcontext():
        for index, frame in enumerate(frames):
            operator = model.family.operator(gammas[index], shape)
            restored[index] = model.deblurrer.eval()(frame[None], [operator])[0]
            if callback is not None:
                callback(index)
    restored = restored.clamp_min(0).reshape(*lead, *shape)
    return kind.restore(restored)
