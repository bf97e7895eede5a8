"""Small, CPU-friendly ResNet that regresses PSF-model parameters and a validity logit.

Design for a 2-core CPU (issue 5 §0): a plain ResNet fed raw pixels learns slowly and
generalises badly, while a blur is a simple pattern in the local log power spectrum: for a
Gaussian of width σ, ``log |Y(ν)|² = log |F(ν)|² − 4π²σ²|ν|² + …`` until the noise floor.
:class:`PhysicsFeatures` therefore turns each patch into

* three image channels for the convolutional trunk: the normalised patch, its centred log
  power spectrum (Hann window) and the radial frequency ``|ν|`` (so that translation-invariant
  convolutions know where they are in frequency space);
* a vector of polar spectrum features: the mean log power in ``n_radii × n_sectors`` bins of
  radius and orientation (orientation over ``[0, π)``; the spectrum of a real patch is
  centro-symmetric), which carries the radial fall-off and its anisotropy directly to the
  regression head.

The trunk is a ResNet of basic blocks (He et al., CVPR 2016) with configurable width and depth;
its globally pooled features are concatenated with the polar features and mapped by a small
MLP to the outputs (Shajkofci & Liebling, IEEE TIP 2020, §III-B: N parameters + validity).

Periodic parameters (astigmatism ``axis`` ∈ [0, π), with its power ``cylinder``) are regressed
as the Cartesian point ``m (cos 2πu, sin 2πu)`` (``m``, ``u`` the normalised power and axis),
i.e. the Noll coefficients ``a6, a5`` up to scale: it is continuous across ``axis = 0 ≡ π`` and
degenerates gracefully when the power vanishes. :meth:`PSFRegressor.forward` decodes it so the
network always returns ``N + 1`` outputs: N parameters normalised to ``[0, 1]`` over the family
range, then the validity logit.

An optional uncertainty head (``uncertainty=True``) maps the same pooled features and the
decoded estimate to a log-variance per parameter, ``s = log σ²`` of the normalised estimate's
error; it is fitted after the main network, which it leaves unchanged, by
:func:`psfmap.training.loop.fit_uncertainty` (Gaussian negative log-likelihood, Kendall &
Gal, NeurIPS 2017).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

UNCERTAINTY_HIDDEN = 64
DEFAULT_NETWORK = {
    "width": 16,
    "blocks": [1, 1, 1],
    "hidden": 128,
    "n_radii": 16,
    "n_sectors": 8,
}


class PhysicsFeatures(nn.Module):
    """Patch ``(B, p, p)`` -> trunk channels ``(B, 3, p, p)`` and polar features ``(B, R·S)``.

    The patch is normalised to zero mean and unit variance, multiplied by a 2-D Hann window
    ``w``, and its power spectrum ``P = |FFT(w x)|² / Σw²`` (1 for white unit noise) is taken
    in log: ``L = log(P + 10⁻³) / 4``.
    """

    def __init__(self, patch_size: int, n_radii: int = 16, n_sectors: int = 8):
        super().__init__()
        p = patch_size
        hann = torch.hann_window(p, periodic=False, dtype=torch.float64)
        window = hann[:, None] * hann[None, :]
        self.register_buffer("window", (window / window.pow(2).sum().sqrt()).float(),
                             persistent=False)
        freq = torch.fft.fftshift(torch.fft.fftfreq(p, dtype=torch.float64))
        fy, fx = torch.meshgrid(freq, freq, indexing="ij")
        radius = torch.sqrt(fx**2 + fy**2)
        self.register_buffer("radius", (radius / 0.5).float()[None], persistent=False)
        angle = torch.remainder(torch.atan2(fy, fx), math.pi)
        r_bin = torch.floor(radius / 0.5 * n_radii).long()  # up to the Nyquist circle
        s_bin = torch.clamp(torch.floor(angle / math.pi * n_sectors).long(), max=n_sectors - 1)
        inside = (r_bin < n_radii) & (radius > 0)
        index = (r_bin * n_sectors + s_bin)[inside]
        pooling = torch.zeros(p * p, n_radii * n_sectors, dtype=torch.float64)
        pixels = torch.arange(p * p)[inside.flatten()]
        pooling[pixels, index] = 1.0
        counts = pooling.sum(0)
        # empty bins (near the centre) borrow the closest radial bin of the same sector
        for column in torch.nonzero(counts == 0).flatten().tolist():
            r, s = divmod(column, n_sectors)
            for other in range(r + 1, n_radii):
                if counts[other * n_sectors + s] > 0:
                    pooling[:, column] = pooling[:, other * n_sectors + s]
                    break
        pooling = pooling / pooling.sum(0).clamp_min(1)
        self.register_buffer("pooling", pooling.float(), persistent=False)
        self.patch_size = p
        self.n_polar = n_radii * n_sectors

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = patches - patches.mean((-2, -1), keepdim=True)
        std = x.pow(2).mean((-2, -1), keepdim=True).sqrt()
        x = x / torch.where(std > 1e-6, std, torch.ones_like(std))
        power = torch.fft.fft2(x * self.window).abs().pow(2)
        log_power = torch.fft.fftshift(torch.log(power + 1e-3), dim=(-2, -1)) / 4
        polar = log_power.flatten(1) @ self.pooling
        radius = self.radius.expand_as(x)
        return torch.stack([x, log_power, radius], dim=1), polar

    def inference_forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` for inference, equal up to float32 rounding, with fewer passes.

        For an even side ``p`` the centred spectrum comes straight out of the FFT: by the
        modulation theorem ``FFT(x · (−1)^(m+n))[k] = X[k − p/2]``, which is ``fftshift(X)``,
        so the checkerboard sign is folded into the Hann window (exact: ±1 factors). The power
        is ``Re² + Im²`` (no square root), and the two image channels are returned as
        ``(B, 2, p, p)`` in channels-last memory: the radial channel is the same for every
        patch, and its share of the stem convolution is a constant (:class:`FusedTrunk`).
        """
        x = patches - patches.mean((-2, -1), keepdim=True)
        std = x.pow(2).mean((-2, -1), keepdim=True).sqrt()
        x = x / torch.where(std > 1e-6, std, torch.ones_like(std))
        p = self.patch_size
        if p % 2:
            spectrum = torch.fft.fftshift(torch.fft.fft2(x * self.window), dim=(-2, -1))
        else:
            sign = 1 - 2 * ((torch.arange(p)[:, None] + torch.arange(p)[None, :]) % 2)
            spectrum = torch.fft.fft2(x * (self.window * sign.to(self.window.dtype)))
        power = spectrum.real.square() + spectrum.imag.square()
        log_power = torch.log(power + 1e-3).mul_(0.25)
        polar = log_power.flatten(1) @ self.pooling
        # stacked last, then viewed as (B, 2, p, p): channels-last memory, as the stem wants
        return torch.stack([x, log_power], dim=-1).permute(0, 3, 1, 2), polar


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convolutions with batch norm and an identity shortcut."""

    def __init__(self, channels_in: int, channels_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                nn.BatchNorm2d(channels_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution with bias equal to ``norm(conv(x))`` in eval mode (computed in float64).

    ``BN(Wx) = γ (Wx − μ) / √(σ² + ε) + β = (s W) x + (β − s μ)``, ``s = γ / √(σ² + ε)``.
    """
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    weight = conv.weight.double() * scale[:, None, None, None]
    bias = norm.bias.double() - scale * norm.running_mean.double()
    if conv.bias is not None:
        bias = bias + scale * conv.bias.double()
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, bias=True)
    fused.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    fused.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    return fused.to(conv.weight.device)


def fold_blocks(blocks: Any) -> nn.ModuleList:
    """Inference copies of :class:`BasicBlock` s with their batch norms folded into the
    convolutions (``conv1``, ``conv2``, ``shortcut`` or None); run by
    :func:`run_folded_blocks`."""
    folded = nn.ModuleList()
    for block in blocks:
        fused = nn.Module()
        fused.conv1 = fold_batch_norm(block.conv1, block.bn1)
        fused.conv2 = fold_batch_norm(block.conv2, block.bn2)
        fused.shortcut = (None if isinstance(block.shortcut, nn.Identity)
                          else fold_batch_norm(block.shortcut[0], block.shortcut[1]))
        folded.append(fused)
    return folded


def weights_version(module: nn.Module) -> tuple:
    """A key that changes whenever any weight or buffer of ``module`` is replaced or changed
    in place (tensor version counters): when an inference copy must be built again."""
    return tuple((id(t), t._version) for t in (*module.parameters(), *module.buffers()))


def run_folded_blocks(x: torch.Tensor, blocks: nn.ModuleList) -> torch.Tensor:
    """``x`` through :func:`fold_blocks`' blocks, activations in place."""
    for block in blocks:
        out = block.conv2(torch.relu_(block.conv1(x)))
        x = torch.relu_(out.add_(x if block.shortcut is None else block.shortcut(x)))
    return x


class FusedTrunk(nn.Module):
    """Inference-only copy of a :class:`PSFRegressor`'s features, stem and trunk.

    Batch normalisations are folded into the preceding convolutions
    (:func:`fold_batch_norm`), activations run in place, and the stem's response to the
    radial channel, the same for every patch, is computed once and added as a constant.
    ``forward(patches)`` equals :meth:`PSFRegressor.pooled_features` in eval mode up to
    float32 rounding. Built by :meth:`PSFRegressor.fused_for_inference`; the source network
    is left unchanged, and the copy does not follow later changes of its weights.
    """

    def __init__(self, network: PSFRegressor):
        super().__init__()
        self.features = network.features
        conv, norm = network.stem[0], network.stem[1]
        stem = fold_batch_norm(conv, norm)
        # split the stem: image channels (patch, log spectrum) and the constant radius
        self.stem = nn.Conv2d(2, conv.out_channels, conv.kernel_size, conv.stride,
                              conv.padding, bias=False).to(conv.weight.device)
        self.stem.weight = nn.Parameter(stem.weight[:, :2].detach().clone(),
                                        requires_grad=False)
        with torch.no_grad():
            radius = network.features.radius[None]  # (1, 1, p, p)
            constant = torch.nn.functional.conv2d(
                radius.double(), stem.weight[:, 2:].double(), stem.bias.double(),
                conv.stride, conv.padding)
        self.register_buffer("stem_constant", constant.to(conv.weight.dtype),
                             persistent=False)
        self.blocks = fold_blocks(network.trunk)
        self.eval()
        # channels-last convolutions: measured ~1.5x faster on CPU (oneDNN), same results
        self.to(memory_format=torch.channels_last)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        channels, polar = self.features.inference_forward(patches)
        channels = channels.contiguous(memory_format=torch.channels_last)  # no copy if so
        x = torch.relu_(self.stem(channels).add_(self.stem_constant))
        x = run_folded_blocks(x, self.blocks)
        return torch.cat([x.mean((-2, -1)), polar], dim=1)


class PSFRegressor(nn.Module):
    """ResNet-style regressor: patches ``(B, p, p)`` -> ``(B, N + 1)``.

    Parameters
    ----------
    patch_size : int
        Side of the square input patches.
    n_params : int
        Number N of PSF parameters.
    width : int
        Channels of the first stage (doubled at every following stage).
    blocks : sequence of int
        Basic blocks per stage; the stem and every stage halve the resolution
        (64² patches: 32² after the stem, then 16², 8², 4²).
    hidden : int
        Width of the MLP head.
    n_radii, n_sectors : int
        Polar binning of the log power spectrum.
    periodic : list of [int, int]
        ``[magnitude, angle]`` parameter columns regressed as a point on the plane
        (see the module docstring).
    uncertainty : bool
        Add the uncertainty head (:meth:`log_variance`).

    Outputs
    -------
    ``forward`` returns N parameters normalised to ``[0, 1]`` (not clamped) and the validity
    logit in the last column; :meth:`embedding` returns the raw head (training target space).
    """

    def __init__(
        self,
        patch_size: int,
        n_params: int,
        *,
        width: int = 16,
        blocks: Sequence[int] = (1, 1, 1),
        hidden: int = 128,
        n_radii: int = 16,
        n_sectors: int = 8,
        periodic: Sequence[Sequence[int]] = (),
        uncertainty: bool = False,
    ):
        super().__init__()
        if n_params < 1:
            raise ValueError(f"n_params must be >= 1, got {n_params}")
        self.patch_size = int(patch_size)
        self.n_params = int(n_params)
        self.periodic = [list(map(int, pair)) for pair in periodic]
        self.features = PhysicsFeatures(patch_size, n_radii, n_sectors)
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        layers: list[nn.Module] = []
        channels = width
        for stage, count in enumerate(blocks):
            out = width * 2**stage
            for block in range(int(count)):
                stride = 2 if block == 0 else 1
                layers.append(BasicBlock(channels, out, stride))
                channels = out
        self.trunk = nn.Sequential(*layers)
        self.n_embedding = n_params + len(self.periodic)
        self.head = nn.Sequential(
            nn.Linear(channels + self.features.n_polar, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, self.n_embedding + 1),
        )
        # built last, so that the main layers start from the same random state either way
        self.uncertainty = bool(uncertainty)
        self.uncertainty_head = nn.Sequential(
            nn.Linear(channels + self.features.n_polar + n_params, UNCERTAINTY_HIDDEN),
            nn.ReLU(),
            nn.Linear(UNCERTAINTY_HIDDEN, n_params),
        ) if self.uncertainty else None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PSFRegressor:
        """Build from a network config (``patch_size``, ``n_params`` and the keywords)."""
        keys = {"patch_size", "n_params", "width", "blocks", "hidden", "n_radii", "n_sectors",
                "periodic", "uncertainty"}
        unknown = set(config) - keys
        if unknown:
            raise ValueError(f"unknown network config fields {sorted(unknown)}")
        kwargs = {k: v for k, v in config.items() if k not in ("patch_size", "n_params")}
        return cls(int(config["patch_size"]), int(config["n_params"]), **kwargs)

    def pooled_features(self, patches: torch.Tensor) -> torch.Tensor:
        """The head's input ``(B, F)``: globally pooled trunk features and polar features."""
        channels, polar = self.features(patches)
        pooled = self.trunk(self.stem(channels)).mean((-2, -1))
        return torch.cat([pooled, polar], dim=1)

    def fused_for_inference(self) -> FusedTrunk:
        """An inference-only :class:`FusedTrunk` computing :meth:`pooled_features` (eval
        mode) faster: batch norms folded, the constant radial channel precomputed."""
        return FusedTrunk(self)

    def embedding(self, patches: torch.Tensor) -> torch.Tensor:
        """Raw head output ``(B, N + n_periodic + 1)``: embedded parameters, validity logit."""
        return self.head(self.pooled_features(patches))

    def log_variance(self, pooled: torch.Tensor, unit_params: torch.Tensor) -> torch.Tensor:
        """``log σ²`` ``(B, N)`` of the normalised estimate's error, from the pooled features
        ``(B, F)`` and the decoded estimate ``(B, N)`` (needs ``uncertainty=True``)."""
        if self.uncertainty_head is None:
            raise ValueError("this network has no uncertainty head")
        return self.uncertainty_head(torch.cat([pooled, unit_params], dim=1))

    def encode(self, unit_params: torch.Tensor) -> torch.Tensor:
        """Normalised parameters ``(B, N)`` -> embedding targets ``(B, N + n_periodic)``.

        For each periodic pair the two columns become ``(m cos 2πu, m sin 2πu)`` and the
        power ``m`` is appended, so it is also regressed directly (it stays well defined
        when the axis is not).
        """
        embedded = unit_params.clone()
        extra = []
        for magnitude, angle in self.periodic:
            m, u = unit_params[:, magnitude], unit_params[:, angle]
            embedded[:, magnitude] = m * torch.cos(2 * math.pi * u)
            embedded[:, angle] = m * torch.sin(2 * math.pi * u)
            extra.append(m[:, None])
        return torch.cat([embedded] + extra, dim=1)

    def decode(self, embedded: torch.Tensor) -> torch.Tensor:
        """Embedding ``(B, N + n_periodic)`` -> normalised parameters ``(B, N)``."""
        params = embedded[:, : self.n_params].clone()
        for i, (magnitude, angle) in enumerate(self.periodic):
            x, y = embedded[:, magnitude], embedded[:, angle]
            params[:, magnitude] = embedded[:, self.n_params + i]
            params[:, angle] = torch.remainder(torch.atan2(y, x) / (2 * math.pi), 1.0)
        return params

    def outputs(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, F)`` -> ``(B, N + 1)``: normalised parameters, validity logit."""
        out = self.head(pooled)
        return torch.cat([self.decode(out[:, :-1]), out[:, -1:]], dim=1)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.outputs(self.pooled_features(patches))
