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
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from psfmap._validation import ArrayKind, as_tensor, check_finite, check_positive, describe
from psfmap.identify.psf_map_estimation import estimate_psf_map
from psfmap.restore import DEFAULT_TV as RESTORE_DEFAULT_TV

DEFAULT_MODEL = "zernike3"
# Shajkofci & Liebling (2020) run RL-TV for 20 iterations with "λ_TV = 0.1", but their TV term
# is the divergence of the L1-normalised image (numerically ~0). With the TV term of Dey et al.
# used here, λ = 0.1 costs 3-4 dB on the Table V protocol against 0.01 (benchmarks/RESULTS.md,
# blind section), so the default is psfmap.restore's λ = 0.01; pass tv=0.1 for the quoted value.
DEFAULT_ITERATIONS = 20
DEFAULT_TV = RESTORE_DEFAULT_TV


@functools.lru_cache(maxsize=8)
def _pretrained(name: str):
    from psfmap.identify.cnn import PSFEstimator

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
    restored : ndarray or Tensor (H, W)
        The deblurred image (same kind and dtype as the input).
    psf_map : PSFMap
        The estimated PSF map that was used.
    """

    restored: Any
    psf_map: Any


def _as_image(image: Any) -> torch.Tensor:
    tensor = check_finite(as_tensor(image, "image"), "image")
    if tensor.ndim != 2:
        raise ValueError(f"image must be a 2-D array (H, W), got shape {tuple(tensor.shape)}")
    return tensor


def estimate(
    image: Any,
    model: Any = DEFAULT_MODEL,
    window: int | None = None,
    stride: int | None = None,
    *,
    grid: tuple[int, int] | None = None,
    median: int = 3,
    batch_size: int = 256,
):
    """Estimate the spatially-variant PSF map of one image, blindly.

    Runs the CNN of the shipped model ``model`` on overlapping windows
    (:func:`~psfmap.identify.psf_map_estimation.estimate_psf_map`: batched inference,
    invalid windows filled by inverse-distance-weighted neighbour averaging, ``median``
    filter of the parameter grid). Shajkofci & Liebling, IEEE TIP 2020.

    Parameters
    ----------
    image : ndarray or Tensor (H, W)
        Blurred image.
    model : str or PSFEstimator
        Shipped model name (``gaussian1``, ``gaussian2``, ``zernike1``, ``zernike3``) or an
        estimator.
    window, stride : int, optional
        Window side and step in pixels (defaults: the model's patch size, half of it).
    grid : (int, int), optional
        Number of windows per axis instead of ``stride``.
    median : int
        Median filter side for the parameter grid (0: none).
    batch_size : int
        Patches per network call.

    Returns
    -------
    PSFMap
        ``.params`` (gy, gx, N), ``.validity``, ``.psfs()``, ``.operator()``, ``.save()``.
    """
    estimator = get_estimator(model)
    tensor = _as_image(image)
    return estimate_psf_map(
        estimator, tensor, window, stride, grid=grid, median=median, batch_size=batch_size
    )


def deblur(
    image: Any,
    model: Any = DEFAULT_MODEL,
    iterations: int = DEFAULT_ITERATIONS,
    tv: float = DEFAULT_TV,
    *,
    window: int | None = None,
    stride: int | None = None,
    grid: tuple[int, int] | None = None,
    median: int = 3,
    psf_map: Any = None,
    batch_size: int = 256,
    return_map: bool = False,
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
       term 0.1 over-smooths (3-4 dB lower ΔSNR on the Table V protocol), so the default is
       λ = 0.01 (``psfmap.restore.DEFAULT_TV``). The image is scaled to a maximum of 1 for
       the solver and back.

    Parameters
    ----------
    image : ndarray or Tensor (H, W)
        Blurred, non-negative image.
    model : str or PSFEstimator
        Shipped model name or estimator.
    iterations : int
        Richardson–Lucy iterations.
    tv : float
        λ_TV (0: plain Richardson–Lucy); default 0.01.
    window, stride, grid, median, batch_size
        Passed to :func:`estimate`.
    psf_map : PSFMap, optional
        Use this map instead of estimating one.
    return_map : bool
        Return a :class:`BlindResult` (``restored``, ``psf_map``) instead of the image.

    Returns
    -------
    restored : same kind and dtype as ``image`` (or a :class:`BlindResult`).
    """
    from psfmap.restore import richardson_lucy

    kind = ArrayKind(image)
    tensor = _as_image(image)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    tv = check_positive(tv, "tv", allow_zero=True)
    if bool((tensor < 0).any()):
        raise ValueError("image has negative values; Richardson–Lucy needs a non-negative image")
    if psf_map is None:
        psf_map = estimate(
            tensor, model, window, stride, grid=grid, median=median, batch_size=batch_size
        )
    operator = psf_map.operator(tuple(tensor.shape))
    scale = float(tensor.max())
    if scale <= 0:
        raise ValueError("image is all zero; nothing to deblur")
    work = tensor.to(operator.dtype) / scale
    restored = richardson_lucy(work, operator, iterations=iterations, tv=tv) * scale
    restored = kind.restore(torch.as_tensor(restored).to(tensor.dtype))
    if return_map:
        return BlindResult(restored=restored, psf_map=psf_map)
    return restored
