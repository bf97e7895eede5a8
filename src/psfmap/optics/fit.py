"""Calibration: fit a microscope's physical parameters to observed images by gradient descent.

The loss is the normalised mean squared error between simulated and observed images,

    NMSE = mean_n ‖ s_n − o_n ‖² / ‖ o_n ‖²,

minimised with Adam over the named parameters only (WaveBlocks, Page Vizcaíno et al., ICASSP
2020, §3). With ``photometric=True`` each simulated image is first replaced by its
least-squares affine match ``a s_n + b`` to ``o_n`` (closed form, differentiable), so that an
unknown exposure and background need no parameters (real data).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from psfmap._validation import as_tensor, check_finite, check_int, describe
from psfmap.optics.microscope import Microscope


def nmse(simulated: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """``‖s − o‖² / ‖o‖²`` per image (over the last two axes)."""
    error = ((simulated - observed) ** 2).sum(dim=(-2, -1))
    return error / (observed**2).sum(dim=(-2, -1)).clamp(min=torch.finfo(observed.dtype).tiny)


def affine_match(simulated: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """``a s + b`` with ``(a, b)`` the least-squares fit to ``observed``, per image."""
    s_mean = simulated.mean(dim=(-2, -1), keepdim=True)
    o_mean = observed.mean(dim=(-2, -1), keepdim=True)
    ds = simulated - s_mean
    variance = (ds**2).sum(dim=(-2, -1), keepdim=True)
    covariance = (ds * (observed - o_mean)).sum(dim=(-2, -1), keepdim=True)
    slope = covariance / variance.clamp(min=torch.finfo(simulated.dtype).tiny)
    return slope * ds + o_mean


@dataclass
class FitReport:
    """What :func:`fit` did: the loss per step, the parameters before and after, the PSFs.

    ``loss[0]`` is the starting loss; ``after`` holds the best parameters seen (those left in
    the microscope).
    """

    params: list[str]
    loss: list[float]
    before: dict[str, torch.Tensor]
    after: dict[str, torch.Tensor]
    steps: int
    stopped_early: bool
    initial_psf: torch.Tensor
    fitted_psf: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        return min(self.loss)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: parameters before/after (lists), loss curve, steps."""
        def plain(values):
            return {k: (v.tolist() if v.ndim else float(v)) for k, v in values.items()
                    if k in self.params}
        return {"params": self.params, "before": plain(self.before), "after": plain(self.after),
                "loss": self.loss, "final_loss": self.final_loss, "steps": self.steps,
                "stopped_early": self.stopped_early}

    def figure(self):
        """Matplotlib figure: the PSF before and after, the recovered phase mask when one was
        fitted, and the loss curve (log scale)."""
        from matplotlib.figure import Figure

        masks = [p for p in self.params if p.endswith(".phase")]
        panels = 3 + len(masks)
        figure = Figure(figsize=(3.2 * panels, 3.2), layout="constrained")
        axes = figure.subplots(1, panels)
        for axis, psf, title in ((axes[0], self.initial_psf, "PSF before (ideal)"),
                                 (axes[1], self.fitted_psf, "PSF after (recovered)")):
            image = psf if psf.ndim == 2 else psf[psf.shape[0] // 2]
            axis.imshow(image.detach().cpu().numpy() ** 0.5, cmap="magma")
            axis.set_title(title + " (√)")
            axis.set_axis_off()
        for axis, name in zip(axes[2:-1], masks):
            shown = axis.imshow(torch.remainder(self.after[name], 2 * math.pi).cpu().numpy(),
                                cmap="twilight")
            axis.set_title(f"recovered {name}")
            axis.set_axis_off()
            figure.colorbar(shown, ax=axis, shrink=0.8, label="rad")
        axes[-1].semilogy(self.loss)
        axes[-1].set_xlabel("step")
        axes[-1].set_ylabel("NMSE")
        axes[-1].set_title("loss")
        return figure


def fit(
    microscope: Microscope,
    objects: Any,
    images: Any,
    params: Sequence[str],
    *,
    depths: Any = None,
    steps: int = 200,
    lr: float | Mapping[str, float] = 0.05,
    patience: int = 30,
    tolerance: float = 1e-4,
    photometric: bool = False,
    progress: bool | None = None,
) -> FitReport:
    """Fit the named parameters of ``microscope`` so that it reproduces ``images``.

    Parameters
    ----------
    microscope : Microscope
        Modified in place: it ends with the best parameters found.
    objects : array or tensor (N, H, W) or (H, W), or None
        The objects imaged (a resolution target...), or ``None`` when ``images`` are PSFs
        (isolated beads, already cropped to the camera PSF's size).
    images : array or tensor (N, H, W) or (H, W)
        Observed images, one per object / depth.
    params : sequence of str
        Names ``block.parameter`` to fit (see :meth:`Microscope.parameter_names`); the others
        stay frozen.
    depths : sequence of float, optional
        Focus offset of each image (µm), e.g. ``(-50, 0, 50)`` for three defocused images.
    steps : int
        Most Adam steps.
    lr : float or dict
        Learning rate, or one per parameter name (Adam's step is about ``lr`` in the
        parameter's own unit: µm for a distance, waves for Zernike coefficients).
    patience, tolerance : int, float
        Stop when the loss has not improved by a relative ``tolerance`` for ``patience`` steps.
    photometric : bool
        Match each simulated image's exposure and background to the observed one in closed
        form (for real data in arbitrary units).
    progress : bool, optional
        Show a tqdm bar (default: only when stderr is a terminal).

    Returns
    -------
    FitReport
    """
    if not isinstance(microscope, Microscope):
        raise TypeError(f"microscope must be a psfmap.optics.Microscope, got "
                        f"{describe(microscope)}")
    if isinstance(params, str):
        params = [params]
    params = list(params)
    if not params:
        raise ValueError("params must name at least one parameter to fit, e.g. "
                         f"{microscope.parameter_names()[:3]}")
    microscope.set_trainable(params)  # refuses names the microscope does not have
    steps = check_int(steps, "steps")
    patience = check_int(patience, "patience")
    rates = _rates(lr, params)
    parameter = next(microscope.parameters())
    dtype, device = parameter.dtype, parameter.device
    images = check_finite(as_tensor(images, "images", dtype=dtype, device=device), "images")
    if images.ndim not in (2, 3):
        raise ValueError(f"images must be (N, H, W) or (H, W), got {describe(images)}")
    if objects is not None:
        objects = check_finite(as_tensor(objects, "objects", dtype=dtype, device=device),
                               "objects")
    offsets = None
    if depths is not None:
        offsets = as_tensor(depths, "depths", dtype=dtype, device=device).reshape(-1)
        if images.ndim != 3 or len(offsets) != images.shape[0]:
            raise ValueError(f"depths has {len(offsets)} values but images holds "
                             f"{images.shape[0] if images.ndim == 3 else 1} images; expected "
                             "one focus offset per image")

    def loss_now() -> torch.Tensor:
        simulated = microscope(objects, offsets)
        if simulated.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"the microscope simulates {tuple(simulated.shape[-2:])} images "
                             f"but images are {tuple(images.shape[-2:])}; crop the images or "
                             "set the camera's crop")
        if photometric:
            simulated = affine_match(simulated, images)
        return nmse(simulated, images).mean()

    before = microscope.values()
    with torch.no_grad():
        initial_psf = microscope.psf(offsets).detach().clone()
    groups = [{"params": [microscope.parameter(name)], "lr": rates[name]} for name in params]
    optimiser = torch.optim.Adam(groups)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    from tqdm.auto import tqdm

    history: list[float] = []
    best, best_state, since = math.inf, microscope.values(), 0
    stopped = False
    with tqdm(total=steps, desc="fit", disable=not show, leave=False) as bar:
        for _ in range(steps):
            optimiser.zero_grad()
            loss = loss_now()
            if not torch.isfinite(loss):
                raise ValueError("the loss became NaN or infinite; lower the learning rate "
                                 f"(lr={lr}) or start nearer the solution")
            loss.backward()
            value = float(loss.detach())
            history.append(value)
            if value < best * (1 - tolerance):
                best, best_state, since = value, microscope.values(), 0
            else:
                since += 1
                if since >= patience:
                    stopped = True
                    break
            optimiser.step()
            bar.update(1)
            bar.set_postfix(nmse=f"{value:.3g}")
    with torch.no_grad():
        final = float(loss_now())
        if final < best:
            best, best_state = final, microscope.values()
        history.append(final)
        for name, value in best_state.items():
            microscope.parameter(name).copy_(value)
        fitted_psf = microscope.psf(offsets).detach().clone()
    microscope.set_trainable([])
    return FitReport(params=params, loss=history, before=before, after=microscope.values(),
                     steps=len(history) - 1, stopped_early=stopped, initial_psf=initial_psf,
                     fitted_psf=fitted_psf)


def _rates(lr: float | Mapping[str, float], params: list[str]) -> dict[str, float]:
    if isinstance(lr, Mapping):
        missing = [p for p in params if p not in lr]
        extra = sorted(set(lr) - set(params))
        if missing or extra:
            raise ValueError(f"lr must give a rate for each fitted parameter: missing "
                             f"{missing}, not fitted {extra}")
        rates = {p: float(lr[p]) for p in params}
    else:
        rates = {p: float(lr) for p in params}
    for name, rate in rates.items():
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"lr for {name} must be a finite number > 0, got {rate!r}")
    return rates
