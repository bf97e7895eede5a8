"""Blind verbs: estimate the PSF map of an image, and deblur it with that map.

Shajkofci & Liebling, "Spatially-variant CNN-based point spread function estimation for
blind deconvolution and depth estimation in optical microscopy", IEEE TIP 2020 (and ICIP
2018): a CNN regresses the local PSF parameters on overlapping windows, the parameter grid
becomes a product-convolution (overlap-add) operator, and Richardson–Lucy with total
variation restores the image with it.

Examples
--------
>>> import psfmap
>>> psf_map = psfmap.estimate(image, model="zernike3")          # doctest: +SKIP
>>> restored = psfmap.deblur(image, model="zernike3")           # doctest: +SKIP

A stack ``(..., H, W)`` (z-stack, time-lapse, channels) is taken frame by frame: every frame
gets its own PSF map, since the blur changes from plane to plane and from one time point to
the next.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from psfmap._validation import (
    ArrayKind,
    as_tensor,
    check_finite,
    check_iterations,
    check_positive,
    describe,
)
from psfmap.blind.psf_maps import estimate_psf_map
from psfmap.operators.psf_map import PSFMap, psf_map_list
from psfmap.restore import DEFAULT_TV as RESTORE_DEFAULT_TV
from psfmap.restore._domain import warn_out_of_range

# MIN_TILE is re-exported for cli/deblur.py (it moved to psfmap.restore.tiled)
from psfmap.restore.tiled import (
    DEFAULT_OVERLAP,
    MIN_TILE,  # noqa: F401
    check_tiling,
    restore_tiled,
)

DEFAULT_MODEL = "zernike3"
# Shajkofci & Liebling (2020) run RL-TV for 20 iterations with "λ_TV = 0.1", but their TV term
# is the divergence of the L1-normalised image (numerically ~0). With the TV term of Dey et al.
# used here, λ = 0.1 costs about 2.5 dB on the blind Table V protocol against 0.01 (3.3-3.6 dB
# with the exact known PSFs; benchmarks/RESULTS.md), so the default is psfmap.restore's
# λ = 0.01; pass tv=0.1 for the quoted value.
DEFAULT_ITERATIONS = 20
# side of the median filter of a map's parameter grid (Shajkofci & Liebling smooth the map)
DEFAULT_MEDIAN = 3
# frames larger than this are restored in tiles: on 4096² and 8192² images tiles of 2048 px
# were faster (35 vs 42 s, 123 vs 199 s) and lighter (1.3 vs 1.8 GB, 2.7 vs 4.7 GB) than one
# piece, the result within RL-TV's own sensitivity to rounding (benchmarks/RESULTS.md)
DEFAULT_TILE = 2048
# deblur compresses its operator to 99.9 % of the PSF field's energy where that is predicted
# faster (psfmap.operators.cost.cheapest): the fly wing's 31 x 31 map restores 4x faster, 3.0 %
# (relative L2) from the exact result (benchmarks/RESULTS.md)
DEFAULT_ENERGY = 0.999
DEFAULT_TV = RESTORE_DEFAULT_TV


@functools.lru_cache(maxsize=8)
def _pretrained(name: str):
    from psfmap.blind.estimator import PSFEstimator

    return PSFEstimator.pretrained(name)


def get_estimator(model: Any):
    """A PSF estimator from a shipped model name, or ``model`` itself if it is an estimator."""
    if isinstance(model, str):
        return _pretrained(model)
    if all(hasattr(model, a) for a in ("family", "patch_size", "predict")):
        return model
    raise TypeError(
        f"model must be a pretrained model name (e.g. 'zernike3') or a PSFEstimator, "
        f"got {describe(model)}"
    )


@dataclass
class BlindResult:
    """Result of :func:`deblur` with ``return_map=True``.

    Attributes
    ----------
    restored : ndarray or Tensor (H, W) or (..., H, W)
        The deblurred image or stack (same kind, shape and dtype as the input).
    psf_map : PSFMap or list of PSFMap
        The estimated PSF map that was used; for a stack, one map per frame (frames in C order
        of the leading axes).
    """

    restored: Any
    psf_map: Any


def _as_image(image: Any) -> torch.Tensor:
    """The image as a finite tensor of shape (H, W) or (..., H, W)."""
    tensor = check_finite(as_tensor(image, "image"), "image")
    if tensor.ndim < 2:
        raise ValueError(
            f"image must be a 2-D array (H, W) or a stack (..., H, W), got shape "
            f"{tuple(tensor.shape)}"
        )
    if 0 in tuple(tensor.shape):
        raise ValueError(f"image is empty (shape {tuple(tensor.shape)})")
    return tensor


def _frames(tensor: torch.Tensor) -> torch.Tensor:
    """(F, H, W): the frames of a stack in C order of its leading axes."""
    return tensor.reshape(-1, *tensor.shape[-2:])


#: set by :func:`stack_frames` (a chunk of a lazy stack, a frame restored on its own): (frame
#: index the verbs see → frame index in the whole stack, number of frames of the stack), so
#: that warnings and errors name the stack's frame
_STACK_FRAMES: contextvars.ContextVar[tuple[Callable[[int], int], int] | None] = (
    contextvars.ContextVar("psfmap_stack_frames", default=None))


@contextlib.contextmanager
def stack_frames(numbers: Callable[[int], int], count: int) -> Iterator[None]:
    """While the block runs, the frames the verbs see are frames ``numbers(i)`` of a stack of
    ``count`` (a chunk of a lazy stack, or one frame restored on its own by the command line):
    their warnings and errors name them so. No effect for a stack of one frame."""
    if count <= 1:
        yield
        return
    token = _STACK_FRAMES.set((numbers, count))
    try:
        yield
    finally:
        _STACK_FRAMES.reset(token)


def _in_stack(index: int, count: int) -> tuple[int, int]:
    """Frame ``index`` of ``count`` as ``(frame, frames)`` of the whole stack inside
    :func:`stack_frames`, else as given."""
    stack = _STACK_FRAMES.get()
    return (stack[0](index), stack[1]) if stack is not None else (index, count)


def each_frame(frames: Any, action: Callable[[int, Any], Any]) -> list:
    """``[action(index, frame) for every frame]``; a ``ValueError`` raised for one frame of
    several names that frame (``frame 3 of 40: ...``)."""
    results = []
    for index, frame in enumerate(frames):
        try:
            results.append(action(index, frame))
        except ValueError as error:
            if len(frames) == 1 and _STACK_FRAMES.get() is None:
                raise
            number, count = _in_stack(index, len(frames))
            raise ValueError(f"frame {number} of {count}: {error}") from error
    return results


def estimate(
    image: Any,
    model: Any = DEFAULT_MODEL,
    window: int | None = None,
    stride: int | None = None,
    *,
    grid: tuple[int, int] | None = None,
    median: int = DEFAULT_MEDIAN,
    batch_size: int = 256,
    callback: Callable[[int], Any] | None = None,
):
    """Estimate the spatially-variant PSF map of an image (or of every frame of a stack), blindly.

    Runs the CNN of the shipped model ``model`` on overlapping windows
    (:func:`~psfmap.blind.psf_maps.estimate_psf_map`: batched inference,
    invalid windows filled by inverse-distance-weighted neighbour averaging, ``median``
    filter of the parameter grid). Shajkofci & Liebling, IEEE TIP 2020.

    Parameters
    ----------
    image : ndarray or Tensor (H, W) or (..., H, W)
        Blurred image, or a stack whose leading axes are frames (planes, time points, ...).
    model : str or PSFEstimator
        Shipped model name (``gaussian1``, ``gaussian2``, ``zernike1``, ``zernike3``) or an
        estimator.
    window, stride : int, optional
        Window side and step in pixels (defaults: the model's patch size, half of it).
    grid : (int, int) or int, optional
        Number of windows per axis instead of ``stride`` (one integer: the same on both).
    median : int
        Median filter side for the parameter grid (0: none).
    batch_size : int
        Patches per network call.
    callback : callable, optional
        ``callback(frame_index)`` after each frame's map (e.g. a progress bar).

    Returns
    -------
    PSFMap, or list of PSFMap for a stack
        ``.params`` (gy, gx, N), ``.validity``, ``.psfs()``, ``.operator()``, ``.save()``; a
        stack gives one map per frame, in C order of the leading axes (save them together
        with :func:`psfmap.save_psf_maps`). A frame whose windows are all invalid (e.g. an
        empty plane) raises ``ValueError`` naming the frame.

    Warns
    -----
    UserWarning
        When a map is doubtful (:func:`~psfmap.blind.reliability.reliability_warnings`:
        estimates piled up at the upper end of the model's range, mostly textureless cells,
        large predicted errors); the reasons are also kept in
        ``psf_map.metadata["warnings"]``.
    """
    estimator = get_estimator(model)
    tensor = _as_image(image)
    options = dict(grid=grid, median=median, batch_size=batch_size)

    def one_frame(index: int, frame: torch.Tensor) -> PSFMap:
        psf_map = estimate_psf_map(frame, estimator, window, stride, **options)
        _flag(psf_map, f"frame {_in_stack(index, 1)[0]}: " if tensor.ndim > 2 else "")
        if callback is not None:
            callback(index)
        return psf_map

    if tensor.ndim == 2:
        return one_frame(0, tensor)
    return each_frame(_frames(tensor), one_frame)


def _restore_frame(
    frame: torch.Tensor,
    psf_map: Any,
    iterations: int,
    tv: float,
    energy: float | None,
    tile: int | None = None,
    overlap: int = 0,
) -> torch.Tensor:
    """RL-TV of one (H, W) frame with the operator of its map (compressed to ``energy`` when
    given and cheaper, :func:`psfmap.operators.cost.cheapest`), at a maximum of 1 and back;
    tile by tile when ``tile`` is given (:func:`psfmap.restore.tiled.restore_tiled`: the
    map's PSFs are rendered once and every tile gets the whole-field operator restricted to
    it)."""
    from psfmap.operators.cost import cheapest
    from psfmap.restore import richardson_lucy

    scale = float(frame.detach().max())
    if scale <= 0:
        raise ValueError("image is all zero; nothing to deblur")

    def solve(piece: torch.Tensor, operator: Any, region: Any) -> Any:
        if energy is not None:  # compressed only where that is predicted to be faster
            operator = cheapest(operator, energy=energy, calls=iterations + 1)
        # TV relative to the frame's maximum (1 here) in every tile, as in one piece
        return richardson_lucy(piece.to(operator.dtype), operator, iterations=iterations,
                               tv=tv, intensity_scale=1.0)

    return restore_tiled(frame / scale, psf_map, solve, tile, overlap) * scale


def _flag(psf_map: PSFMap, where: str, lead: str = "") -> None:
    """Warn (once per map) when a blind map is doubtful, and keep the reasons with it."""
    from psfmap.blind.reliability import reliability_warnings

    reasons = reliability_warnings(psf_map)
    if reasons:
        psf_map.metadata["warnings"] = reasons
        warnings.warn(f"{lead}{where}{'; '.join(reasons)}", UserWarning, stacklevel=4)


def _maps_for_frames(psf_map: Any, count: int, frame_shape: tuple[int, int]) -> list:
    """One map per frame from a map (used for all frames), a sequence of ``count`` maps, or
    a file of either; each must cover frames of ``frame_shape``."""
    if isinstance(psf_map, (str, os.PathLike)):
        from psfmap.operators.psf_map import load_psf_maps

        psf_map = load_psf_maps(psf_map)
        psf_map = psf_map[0] if len(psf_map) == 1 else psf_map
    if isinstance(psf_map, PSFMap):  # one map for every frame
        psf_map.check_covers(frame_shape, "psf_map")
        return [psf_map] * count
    if isinstance(psf_map, (str, bytes)) or not hasattr(psf_map, "__iter__"):
        raise TypeError(
            f"psf_map must be a PSFMap, a sequence of PSFMap or a path to a .psfmap file, "
            f"got {describe(psf_map)}"
        )
    maps = list(psf_map)
    if len(maps) != count:
        raise ValueError(f"psf_map holds {len(maps)} maps for a stack of {count} frames")
    maps = psf_map_list(maps, "deblur with", name="psf_map")
    for index, one in enumerate(maps):
        one.check_covers(frame_shape, f"psf_map[{index}]")
    return maps


def deblur(
    image: Any,
    model: Any = DEFAULT_MODEL,
    iterations: int = DEFAULT_ITERATIONS,
    tv: float = DEFAULT_TV,
    *,
    window: int | None = None,
    stride: int | None = None,
    grid: tuple[int, int] | None = None,
    median: int = DEFAULT_MEDIAN,
    psf_map: Any = None,
    energy: float | None = DEFAULT_ENERGY,
    tile: int | None = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 256,
    return_map: bool = False,
    compress: float | None = None,
) -> Any:
    r"""Blind spatially-variant deblurring: estimate the PSF map, then RL-TV with it.

    1. ``psf_map = estimate(image, model, ...)`` (CNN on sliding windows), unless a map is
       given;
    2. ``H = psf_map.operator()``: the overlap-add product convolution
       ``H f = Σ_rc k_rc ⋆ (w_rc · f)`` of the local PSFs (bilinear weights);
    3. Richardson–Lucy with total variation (Dey et al. 2006),

       .. math:: x^{k+1} = \frac{x^k}{H^*1 - λ\,\mathrm{div}(∇x^k/|∇x^k|)}\,H^*\frac{y}{Hx^k},

       for 20 iterations as in Shajkofci & Liebling (IEEE TIP 2020). Their quoted
       λ_TV = 0.1 multiplies a TV term that is numerically ~0 in their code; with this TV
       term 0.1 over-smooths (about 2.5 dB lower ΔSNR on the blind Table V protocol), so
       the default is λ = 0.01 (``psfmap.restore.DEFAULT_TV``). The image is scaled to a
       maximum of 1 for the solver and back.

    A stack ``(..., H, W)`` is deblurred frame by frame, each frame with its own map; all
    maps are estimated before the first restoration, so a frame that cannot be estimated
    (e.g. an empty plane) fails fast, with its index in the message.

    Parameters
    ----------
    image : ndarray or Tensor (H, W) or (..., H, W)
        Blurred, non-negative image, or a stack whose leading axes are frames.
    model : str or PSFEstimator
        Shipped model name or estimator.
    iterations : int
        Richardson–Lucy iterations.
    tv : float
        λ_TV (0: plain Richardson–Lucy); default 0.01.
    window, stride, grid, median, batch_size
        Passed to :func:`estimate`.
    psf_map : PSFMap, sequence of PSFMap, or path, optional
        Use this map instead of estimating one; for a stack, one map for every frame or one
        map per frame; a path reads them (:func:`psfmap.load_psf_maps`). Each must have been
        made for images of this frame size (``PSFMap.check_covers``).
    energy : float or None
        Fraction of the PSF field's energy kept when the operator is compressed to a low
        rank (:func:`psfmap.operators.compress`): the fewest kernels ``u_i ⋆ (v_i ·)`` that
        keep it, hence fewer FFTs per iteration. The operator is compressed only where that
        is predicted to be faster (:func:`psfmap.operators.cost.cheapest`: maps with many
        cells on frames of moderate size); the PSF field's relative error is at most
        ``√(1 − energy)`` (3.2 % at the default 0.999), and Richardson–Lucy keeps ``H x`` at
        least a tenth of the image there (``COMPRESSED_FLOOR``: the compression's negative
        lobes would otherwise let it diverge). ``None``: always the exact operator.
    compress : float, optional
        Deprecated name of ``energy`` (one release).
    tile : int or None
        Restore frames larger than ``tile × tile`` pixels (``tile`` ≥ 32) in tiles of at
        most that size, each with ``overlap`` pixels of context on every side (together at
        least a PSF wide): the memory then depends on the tile size, not on the frame size.
        The map is still estimated on the whole frame and every tile is restored with the
        whole-frame operator restricted to it
        (``PSFMap.operator(region=...)``), so the PSF at every pixel is the same; only the
        solver's view ends at the tile's context border. Default 2048 (smaller frames are
        restored in one piece); None: always one piece.
    overlap : int
        Context around each tile, in pixels (default 64; see ``benchmarks/RESULTS.md`` for
        the difference from a one-piece restoration).
    return_map : bool
        Return a :class:`BlindResult` (``restored``, ``psf_map``) instead of the image.

    Returns
    -------
    restored : same kind, shape and dtype as ``image`` (or a :class:`BlindResult`, whose
        ``psf_map`` is a list of maps for a stack).
    """
    from psfmap._chunks import is_dask

    if is_dask(image):
        return _deblur_frames_lazily(image, model=model, iterations=iterations, tv=tv,
                                     window=window, stride=stride, grid=grid, median=median,
                                     psf_map=psf_map, energy=energy, compress=compress,
                                     tile=tile, overlap=overlap, batch_size=batch_size,
                                     return_map=return_map)
    kind = ArrayKind(image)
    tensor = _as_image(image)
    iterations = check_iterations(iterations)
    tv = check_positive(tv, "tv", allow_zero=True)
    if compress is not None:
        warnings.warn("deblur(compress=...) is deprecated; use energy=", DeprecationWarning,
                      stacklevel=2)
        energy = compress
    if energy is not None and not 0 < check_positive(energy, "energy") <= 1:
        raise ValueError(f"energy must be an energy fraction in (0, 1], got {energy!r}")
    tile, overlap = check_tiling(tile, overlap)
    if bool((tensor < 0).any()):
        raise ValueError("image has negative values; Richardson–Lucy needs a non-negative image")
    frames = _frames(tensor)
    if psf_map is None:
        maps = estimate(
            tensor, model, window, stride, grid=grid, median=median, batch_size=batch_size
        )
        maps = maps if tensor.ndim > 2 else [maps]
    else:
        maps = _maps_for_frames(psf_map, len(frames), tuple(tensor.shape[-2:]))
        warn_out_of_range(maps, "psf_map")
        for index, one in enumerate(maps):  # estimated maps were flagged by estimate()
            number, count = _in_stack(index, len(maps))
            _flag(one, f"psf_map[{number}]: " if count > 1 else "psf_map: ",
                  "restoring with a PSF map flagged as unreliable: ")
    restored = each_frame(
        frames, lambda index, frame: _restore_frame(frame, maps[index], iterations, tv, energy,
                                                    tile, overlap)
    )
    restored = kind.restore(torch.stack(restored).reshape(tensor.shape))
    if return_map:
        return BlindResult(restored=restored, psf_map=maps if tensor.ndim > 2 else maps[0])
    return restored


def _deblur_frames_lazily(image: Any, *, return_map: bool, **settings: Any) -> Any:
    """``deblur`` of a dask array: a lazy dask array of the same shape and chunks, every frame
    deblurred in memory as ``deblur`` would (its map estimated on the whole frame, or the
    given map, or its own of a list of maps), frames in parallel. A frame split into chunks
    is gathered into one chunk first (with a warning): blind estimation needs the whole
    frame; for frames larger than memory, estimate a map and pass
    ``deconvolve(dask_array, psf_map)``. Warnings and errors name a frame by its place in
    the whole stack, as in memory."""
    import numpy as np

    if return_map:
        raise ValueError("return_map=True needs an in-memory image; a dask array gives a lazy "
                         "restored array only (estimate the maps with psfmap.estimate)")
    if image.ndim < 2:
        raise ValueError(f"image must be a dask array (..., H, W), got shape {image.shape}")
    leading = image.shape[:-2]
    count = math.prod(leading)
    maps = settings.pop("psf_map", None)
    if maps is not None and not isinstance(maps, PSFMap):  # a list or a file: checked now
        maps = _maps_for_frames(maps, count, tuple(image.shape[-2:]))
    original = image.chunks
    if len(original[-2]) > 1 or len(original[-1]) > 1:
        warnings.warn(
            f"deblur {'estimates' if maps is None else 'restores with'} each frame's PSF map "
            f"on the whole frame; the frames of "
            f"{image.shape[-2]}x{image.shape[-1]} px stored in chunks of "
            f"{max(original[-2])}x{max(original[-1])} px are gathered into one chunk each "
            f"(for frames larger than memory: {'psfmap.estimate, then ' if maps is None else ''}"
            "psfmap.deconvolve of the dask array)", UserWarning, stacklevel=3)
        image = image.rechunk(original[:-2] + ((image.shape[-2],), (image.shape[-1],)))
    dtype = np.float64 if image.dtype == np.float64 else np.float32

    def block(frames: Any, block_info: dict | None = None) -> Any:
        frames = np.asarray(frames, dtype=dtype)
        local_shape = frames.shape[:-2]
        starts = ([start for start, _ in block_info[0]["array-location"][:-2]]
                  if block_info is not None else [0] * len(leading))

        def in_stack(index: int) -> int:  # the chunk's frame index → the stack's (C order)
            if not leading:
                return index
            local = np.unravel_index(index, local_shape)
            return int(np.ravel_multi_index([s + i for s, i in zip(starts, local, strict=True)],
                                            leading))

        own = maps
        if isinstance(maps, list):
            own = [maps[in_stack(index)] for index in range(math.prod(local_shape))]
            own = own if local_shape else own[0]
        with stack_frames(in_stack, count):
            return np.asarray(deblur(frames, psf_map=own, **settings), dtype=dtype)

    result = image.map_blocks(block, dtype=dtype,
                              meta=np.empty((0,) * image.ndim, dtype))
    return result if result.chunks == original else result.rechunk(original)
