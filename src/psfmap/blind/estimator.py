"""PSFEstimator: regress PSF-model parameters and a validity score from image patches.

Shajkofci & Liebling, "Spatially-variant CNN-based point spread function estimation for
blind deconvolution and depth estimation in optical microscopy", IEEE TIP 2020: a CNN maps a
``p × p`` patch to the N parameters of a PSF family plus ``a0``, the probability that the patch
carries enough texture for the estimate to be trusted. The network here is the CPU-sized,
spectrum-aware ResNet of :mod:`psfmap.blind.network`.

Examples
--------
>>> import numpy as np
>>> import psfmap
>>> estimator = psfmap.PSFEstimator.pretrained("gaussian1")
>>> estimator.family.names, estimator.patch_size
(('width',), 64)
>>> patches = np.random.default_rng(0).poisson(50.0, size=(3, 64, 64)).astype(np.float32)
>>> params, validity = estimator.predict(patches)        # (B, 64, 64) -> (B, 1), (B,)
>>> params.shape, validity.shape
((3, 1), (3,))
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psfmap._validation import ArrayKind, as_tensor, check_finite, check_int, describe
from psfmap.blind.checkpoint import load_checkpoint
from psfmap.blind.network import PSFRegressor, weights_version
from psfmap.blind.psf_maps import deviation_at_most, pool_patches, subpatch_offsets
from psfmap.psf import PSFFamily, model_from_config

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"


def pretrained_names() -> list[str]:
    """Names of the shipped models (``src/psfmap/pretrained/<name>.pt``)."""
    return sorted(path.stem for path in PRETRAINED.glob("*.pt"))


class PSFEstimator:
    """A trained PSF-parameter regressor bound to its PSF family.

    Parameters
    ----------
    network : PSFRegressor
        The trained network (put in eval mode).
    config : dict
        The training config stored with the weights (``family``, ``data``, ``network``...).

    Attributes
    ----------
    family : PSFFamily
        The ``psfmap.psf.model`` whose parameters are regressed, with its ranges.
    patch_size : int
        Side ``p`` of the square patches ``predict`` expects.
    config : dict
        Full training configuration; ``metrics`` holds the validation figures when loaded
        from a file.
    """

    def __init__(self, network: PSFRegressor, config: Mapping[str, Any]):
        if not isinstance(network, PSFRegressor):
            raise TypeError(f"network must be a PSFRegressor, got {describe(network)}")
        if not isinstance(config, Mapping) or "family" not in config:
            raise ValueError("config must be a training config with a 'family' entry")
        self.network = network.eval()
        self.config = dict(config)
        self.family: PSFFamily = model_from_config(config["family"])
        self.patch_size = int(network.patch_size)
        self.metrics: dict[str, Any] = {}
        self._fused: tuple[tuple, Any] | None = None
        if network.n_params != self.family.n_params:
            raise ValueError(
                f"network regresses {network.n_params} parameters but the family "
                f"{self.family.name!r} has {self.family.n_params}"
            )

    def __repr__(self) -> str:
        return f"PSFEstimator({self.family!r}, patch_size={self.patch_size})"

    @property
    def name(self) -> str:
        return self.family.name

    @property
    def device(self) -> torch.device:
        """Where the network runs (``predict`` moves the patches there)."""
        return next(self.network.parameters()).device

    def to(self, device: torch.device | str) -> PSFEstimator:
        """This estimator on ``device`` (e.g. ``"cuda"``): ``self`` when already there, else
        a copy (estimators are shared, e.g. by the cache behind ``psfmap.estimate``)."""
        device = torch.device(device)
        if device == self.device:
            return self
        moved = PSFEstimator(copy.deepcopy(self.network).to(device), self.config)
        moved.metrics = self.metrics
        return moved

    # ------------------------------------------------------------ loading
    @classmethod
    def load(
        cls, path: str | Path, model: str | None = None, *, device: torch.device | str = "cpu"
    ) -> PSFEstimator:
        """Load a weights file written by :func:`psfmap.training.loop.train`.

        ``model``, when given, must match the family the weights regress; a file for another
        model or from a newer format raises ``ValueError``. The network is put on ``device``.
        """
        network, config, metrics = load_checkpoint(path)
        found = config.get("family", {}).get("name")
        if model is not None and found != model:
            raise ValueError(
                f"weights file {str(path)!r} is for the model {found!r}, expected {model!r}"
            )
        estimator = cls(network, config)
        estimator.metrics = metrics
        return estimator.to(device)

    @classmethod
    def pretrained(cls, name: str, *, device: torch.device | str = "cpu") -> PSFEstimator:
        """A shipped model (``gaussian1``, ``gaussian2``, ``zernike1``, ``zernike3``), its
        network on ``device``."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a model name string, got {describe(name)}")
        path = PRETRAINED / f"{name}.pt"
        if not path.is_file():
            available = ", ".join(pretrained_names()) or "none"
            raise ValueError(f"no pretrained model {name!r}; available: {available}")
        return cls.load(path, model=name, device=device)

    # ------------------------------------------------------------ inference
    @property
    def has_uncertainty(self) -> bool:
        """Whether the network predicts its own error (``predict(..., return_std=True)``)."""
        return self.network.uncertainty_head is not None

    def predict(
        self, patches: Any, batch_size: int = 512, *, return_std: bool = False
    ) -> tuple[Any, ...]:
        """Estimate PSF parameters and validity for a batch of patches.

        Parameters
        ----------
        patches : array or tensor (B, w, w) or (w, w)
            Raw image patches (any intensity scale: each patch is normalised to zero mean and
            unit variance) of side ``w = patch_size``, or windows of any larger side ``w``:
            a window is cut into ``⌈w / p⌉²`` patches of the network's side ``p`` (evenly
            spread, overlapping when ``w`` is not a multiple of ``p``) whose estimates are
            averaged, weighted by their validity (astigmatism through its Noll
            coefficients, :meth:`~psfmap.psf.PSFFamily.to_linear`), as the windows of
            :meth:`psf_map` are; the validity is the patches' mean. With an uncertainty head
            the weights are validity × precision (:func:`~psfmap.blind.psf_maps.
            pool_patches`).
        batch_size : int
            Patches per forward pass.
        return_std : bool
            Also return ``std``, the network's own estimate of its error (needs
            :attr:`has_uncertainty`).

        The network computes in float32 on :attr:`device` whatever the input's dtype and
        device; the results come back in the input's.

        Returns
        -------
        params : (B, N)
            Parameters in the family's units, clipped to ``[family.low, family.high]``.
        validity : (B,)
            In ``[0, 1]``; 1 means the patch has enough texture to trust ``params``
            (exactly 0 for constant patches).
        std : (B, N), with ``return_std``
            Predicted standard deviation of each parameter's error, in the family's units
            (for a window, that of the pooled estimate).
            Same kind (NumPy or torch) and floating dtype as ``patches``.
        """
        kind = ArrayKind(patches)
        tensor = check_finite(as_tensor(patches, "patches"), "patches")
        single = tensor.ndim == 2
        if single:
            tensor = tensor[None]
        p = self.patch_size
        side = tensor.shape[-1] if tensor.ndim == 3 else -1
        if tensor.ndim != 3 or tensor.shape[-2] != side or side < p:
            raise ValueError(
                f"patches must have shape (B, {p}, {p}) for this model (or (B, w, w) with "
                f"w > {p}), got {tuple(tensor.shape if not single else tensor.shape[1:])}"
            )
        batch_size = check_int(batch_size, "batch_size")
        if return_std and not self.has_uncertainty:
            raise ValueError(
                f"the {self.family.name} weights have no uncertainty head, so return_std is "
                "not available; fit one with psfmap.training.loop.fit_uncertainty"
            )
        offsets = subpatch_offsets(side, p)
        n_params = self.family.n_params
        with_std = self.has_uncertainty and (return_std or len(offsets) > 1)
        params, validity, sigma = self._predict_patches(tensor, offsets, with_std, batch_size)
        if len(offsets) > 1:
            m = len(offsets) ** 2
            linear, pooled_validity, pooled_sigma = pool_patches(
                self.family.to_linear(params.reshape(-1, m, n_params).numpy()),
                validity.reshape(-1, m).numpy(),
                None if sigma is None else sigma.reshape(-1, m, n_params).numpy())
            params = torch.from_numpy(np.clip(self.family.from_linear(linear),
                                              self.family.low, self.family.high))
            validity = torch.from_numpy(pooled_validity)
            sigma = None if pooled_sigma is None else torch.from_numpy(pooled_sigma)
        results = [params, validity]
        if return_std:
            span = torch.as_tensor(self.family.high - self.family.low, dtype=torch.float64)
            results.append(sigma * span)
        results = [r.to(dtype=tensor.dtype, device=tensor.device) for r in results]
        if single:
            results = [r[0] for r in results]
        return tuple(kind.restore(r) for r in results)

    def _inference_trunk(self):
        """``pooled_features`` of the network: a cached :class:`~psfmap.blind.network.
        FusedTrunk` (batch norms folded, channels-last convolutions) in eval mode, rebuilt
        when any weight changed (tensor version counters); the network itself in train mode."""
        network = self.network
        if network.training:
            return network.pooled_features
        key = weights_version(network)
        if self._fused is None or self._fused[0] != key:
            fused = network.fused_for_inference()
            self._fused = (key, fused)
        return self._fused[1]

    def _predict_patches(
        self, tensor: torch.Tensor, offsets: np.ndarray, with_std: bool, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Network estimates of checked patches or windows ``(B, w, w)``, per patch of side
        ``p`` (windows cut at ``offsets``): unit-free parameters in the family's units,
        validity and normalised σ (``None`` without ``with_std``), float64 on the CPU."""
        p = self.patch_size
        # each window scaled to a maximum of 1 in its own precision first: the network works in
        # float32, where 1e-7-scale or 1e20-scale pixels would underflow or overflow
        flat = tensor.flatten(1)
        peak = torch.maximum(flat.amin(1).abs(), flat.amax(1).abs())[:, None, None]
        inputs = (tensor / torch.where(peak > 0, peak, torch.ones_like(peak))).to(
            dtype=torch.float32, device=self.device)
        if len(offsets) > 1:
            inputs = torch.stack([inputs[:, y:y + p, x:x + p] for y in offsets for x in offsets],
                                 dim=1).reshape(-1, p, p)
        n_params = self.family.n_params
        network = self.network
        outputs = [inputs.new_zeros(0, n_params + 1)]
        log_variances = [inputs.new_zeros(0, n_params)]
        with torch.inference_mode():
            trunk = self._inference_trunk()
            for start in range(0, inputs.shape[0], batch_size):
                features = trunk(inputs[start:start + batch_size])
                outputs.append(network.outputs(features))
                if with_std:
                    log_variances.append(network.log_variance(
                        features, outputs[-1][:, :-1].clamp(0.0, 1.0)))
            out = torch.cat(outputs)
            sigma = torch.exp(0.5 * torch.cat(log_variances).double()) if with_std else None
            unit = out[:, :-1].double().clamp(0.0, 1.0)
            validity = torch.sigmoid(out[:, -1].double())
            # a constant patch (std <= 1e-6 x its largest magnitude) carries no information
            # whatever the network says
            flat = inputs.flatten(1)
            scale = flat.abs().amax(1) if len(inputs) else inputs.new_zeros(0)
            constant = deviation_at_most(flat.cpu(), 1e-6 * (scale.cpu().double() + 1e-30),
                                         unbiased=False, dtype=torch.float32)
            validity = torch.where(constant.to(validity.device), 0.0, validity)
            # the family and the pooling work in NumPy/float64 on the CPU
            unit, validity = unit.cpu(), validity.cpu()
            sigma = None if sigma is None else sigma.cpu()
            params = self.family.denormalize(unit)
        return params, validity, sigma

    def psf_map(self, image, window=None, stride=None, **kw):
        """Sliding-window PSF map of ``image`` (:func:`psfmap.identify.estimate_psf_map`)."""
        from psfmap.blind.psf_maps import estimate_psf_map

        return estimate_psf_map(image, self, window, stride, **kw)
