"""The non-circulant scheme shared by the solvers: reconstruct on an extended domain, crop.

A blurred image of size H × W also holds light from sources up to a PSF half-width ``m`` outside
the field. Modelling the object on the extended domain (H + 2m) × (W + 2m) and observing only the
centre,

    A = C ∘ H_ext,   A* = H_ext* ∘ C*,

where ``H_ext = operator.extended(m)`` (the same operator on the padded domain, weights
edge-replicated) and ``C`` keeps rows ``m .. m + H - 1`` and columns ``m .. m + W - 1`` (``C*``
pads with zeros), lets the solver explain the light entering from outside instead of forcing it
onto the border pixels, which is what causes edge ringing with circular or zero boundaries
(Bertero & Boccacci 2005, "A simple method for the reduction of boundary effects in the
Richardson–Lucy approach to image deconvolution", A&A 437:369–374).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from psfmap._validation import as_tensor, check_psf, describe
from psfmap.operators.base import LinearOperator

# Richardson–Lucy's numerical guards, shared by the 2-D and the 3-D solvers:
# the TV-RL denominator is kept >= this fraction of H*1 (positivity, bounded step)
DENOMINATOR_FLOOR = 0.1
# extended-domain pixels that see less than this fraction of their PSF inside the field
# (H*1 against H_ext*1, the PSF's mass on the whole extended domain) are left out (kept at 0):
# they carry almost no information;
# and where a PSF has small negative lobes (a calibrated eigen-PSF family), H*1 there can be a
# cancellation of positive and negative parts, a tiny positive number by which RL's update
# H*(y / Hx) / H*1 is no longer a weighted mean of ratios: it grew 10^5 per iteration from
# such pixels (beads12 family members, 1.5 % negative mass) until the estimate overflowed
UNOBSERVED = 1e-2
# a restored frame's model flux sum(H x) outside [1 / DIVERGED, DIVERGED] times the data's
# sum(y - b) means the iteration diverged (or collapsed to zero): refused, never returned
DIVERGED = 100.0
# negative pixels down to -ROUNDOFF × max|image| are numerical noise, clipped to 0
ROUNDOFF = 1e-5


def is_compressed(operator: Any) -> bool:
    """Whether ``operator`` is a low-rank compression (``compression_error > 0``), whose
    eigen-PSFs have negative lobes by construction."""
    return (getattr(operator, "compression_error", None) or 0) > 0


def check_flag(value: Any, name: str) -> bool:
    """``value`` as a bool (a Python or NumPy bool; ``TypeError`` naming ``name`` otherwise)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {describe(value)}")


def check_operator(operator: Any, name: str = "operator") -> Any:
    """Accept anything with ``forward`` and ``adjoint`` methods."""
    methods = (getattr(operator, "forward", None), getattr(operator, "adjoint", None))
    if not all(callable(method) for method in methods):
        raise TypeError(
            f"{name} must be a linear operator with forward() and adjoint() methods "
            f"(e.g. psfmap.operators.Convolution), got {describe(operator)}"
        )
    return operator


def as_operator(
    operator: Any, image_shape: tuple[int, int], name: str = "operator",
    dtype: torch.dtype | None = None,
) -> Any:
    """An operator; a PSF (h, w) -> Convolution; a PSF grid (gy, gx, h, w) -> from_psf_grid;
    a PSFMap made for this image size -> its operator, rendered in ``dtype`` (the image's:
    float64 PSFs for a float64 image)."""
    from psfmap.operators.psf_map import PSFMap

    if isinstance(operator, PSFMap):
        operator.check_covers(image_shape, name)
        return operator.operator(tuple(image_shape), dtype=dtype)
    if isinstance(operator, (np.ndarray, torch.Tensor)):
        from psfmap.operators import Convolution, from_psf_grid

        psf = as_tensor(operator, name)
        if psf.ndim == 2:
            # checked before normalising: dividing by a negative sum would hide the sign
            return Convolution(check_psf(psf, name) / psf.sum())
        if psf.ndim == 4:
            return from_psf_grid(psf, tuple(image_shape))
        raise ValueError(
            f"{name} given as an array must be a PSF (h, w) or a PSF grid (gy, gx, h, w), "
            f"got shape {tuple(psf.shape)}"
        )
    return check_operator(operator, name)


def _shape(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value)
    except TypeError:
        return None


def check_compatible(operator: Any, image_shape: tuple[int, int], name: str = "operator") -> int:
    """Check the operator fits the image; return the margin (PSF half-width) of the extension."""
    op_shape = _shape(getattr(operator, "image_shape", None))
    if op_shape is not None and op_shape != tuple(image_shape):
        raise ValueError(
            f"{name} acts on images of shape {op_shape}, got an image of shape "
            f"{tuple(image_shape)}; build the operator for this image size"
        )
    kernel_shape = _shape(getattr(operator, "kernel_shape", None))
    if kernel_shape is None:
        return 0
    if kernel_shape[0] > image_shape[0] or kernel_shape[1] > image_shape[1]:
        raise ValueError(
            f"{name} has a PSF of shape {kernel_shape}, larger than the image "
            f"{tuple(image_shape)}; expected a PSF no larger than the image (crop the PSF)"
        )
    return max(kernel_shape[0] // 2, kernel_shape[1] // 2)


def match_operator(operator: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """The operator in the image's dtype and on its device (unchanged when it cannot move)."""
    op_dtype = getattr(operator, "dtype", None)
    op_device = getattr(operator, "device", None)
    kernels = getattr(operator, "kernels", None)
    if op_device is None and isinstance(kernels, torch.Tensor):
        op_device = kernels.device
    if (op_dtype is None or op_dtype == dtype) and (op_device is None or op_device == device):
        return operator
    if not callable(getattr(operator, "to", None)):
        return operator
    return operator.to(dtype=dtype, device=device)


class CroppedOperator(LinearOperator):
    """``A = C ∘ H_ext``: the operator on the domain extended by ``margin`` px, output cropped.

    Maps (..., H + 2m, W + 2m) -> (..., H, W); ``adjoint`` is exact (zero-padding then the
    extended operator's adjoint). With ``margin = 0`` it is the operator itself.
    """

    def __init__(self, operator: Any, image_shape: tuple[int, int], margin: int):
        self.margin = int(margin)
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        self.operator = operator
        if self.margin > 0:
            extend = getattr(operator, "extended", None)
            try:
                self.operator = extend(self.margin) if callable(extend) else None
            except NotImplementedError:
                self.operator = None
            if self.operator is None:  # no extension available: image domain only
                self.operator, self.margin = operator, 0
        m = self.margin
        self.domain_shape = (self.image_shape[0] + 2 * m, self.image_shape[1] + 2 * m)

    @property
    def kernel_shape(self) -> tuple[int, int] | None:
        return getattr(self.operator, "kernel_shape", None)

    @property
    def dtype(self) -> torch.dtype | None:
        return getattr(self.operator, "dtype", None)

    @property
    def device(self) -> torch.device | None:
        return getattr(self.operator, "device", None)

    def to(self, dtype: torch.dtype | None = None, device: Any = None) -> CroppedOperator:
        """The same view of the extended operator converted (``margin`` already applied)."""
        view = CroppedOperator.__new__(CroppedOperator)
        view.__dict__.update(self.__dict__)
        view.operator = self.operator.to(dtype=dtype, device=device)
        return view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.operator.forward(x)
        return self.crop(y)

    __call__ = forward

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.operator.adjoint(self.pad(y))

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """Extended domain -> image domain (rows/columns ``m .. m + H - 1``)."""
        m = self.margin
        if m == 0:
            return x
        height, width = self.image_shape
        return x[..., m : m + height, m : m + width]

    def pad(self, y: torch.Tensor) -> torch.Tensor:
        """Image domain -> extended domain, zeros outside (the adjoint of :meth:`crop`)."""
        m = self.margin
        if m == 0:
            return y
        return torch.nn.functional.pad(y, (m, m, m, m))

    def norm_squared(
        self,
        shape: tuple[int, int] | None = None,
        iterations: int = 30,
        seed: int = 0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> float:
        """Power-iteration estimate of ``||A||^2`` for the composed operator itself (its input
        is the extended domain, whatever ``shape`` says)."""
        dtype = dtype or self.dtype or torch.get_default_dtype()
        return LinearOperator.norm_squared(self, self.domain_shape, iterations=iterations,
                                           seed=seed, dtype=dtype, device=device or self.device)


def needs_gradient(operator: Any, *tensors: torch.Tensor) -> bool:
    """Whether autograd must track the solver (an input or the operator's kernels need grad)."""
    if not torch.is_grad_enabled():
        return False
    parameters = [getattr(operator, name, None) for name in ("kernels", "psf")]
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in (*tensors, *parameters))


def solver_context(operator: Any, *tensors: torch.Tensor):
    """``torch.no_grad()`` unless a gradient is needed.

    Not ``torch.inference_mode()``: operators cache kernel spectra on first use, and a tensor
    cached in inference mode can never be used by autograd afterwards ("Inference tensors
    cannot be saved for backward"), which would break a later differentiable use of the
    caller's operator.
    """
    import contextlib

    return contextlib.nullcontext() if needs_gradient(operator, *tensors) else torch.no_grad()


# A local PSF of an operator that is not a compression may have this fraction of its absolute
# mass negative (round-off, the PCA noise of a calibrated family: measured <= 0.6 % on the
# synthetic calibration of tests/calibrate) and still be restored with Richardson–Lucy.
NEGATIVE_MASS_LIMIT = 0.1
# local PSFs sampled on a SAMPLES × SAMPLES grid of the field (corners included)
SAMPLES = 5


def _sample_positions(length: int) -> list[int]:
    return sorted({round(k * (length - 1) / (SAMPLES - 1)) for k in range(SAMPLES)})


def check_nonnegative(
    operator: Any, image_shape: tuple[int, int], name: str = "operator",
    dtype: torch.dtype | None = None, device: torch.device | None = None,
) -> None:
    """Refuse an operator that does not map non-negative images to non-negative ones.

    Richardson–Lucy's multiplicative update needs ``H x >= 0`` and ``H* 1 > 0``: with
    negative PSFs it divides by negative or vanishing models and returns NaN. The local PSFs
    ``operator.psf_at(r, c)`` on a 5 × 5 grid of the field (corners included) must each have
    a positive sum and, unless the operator is a compression, at most 10 % of their absolute
    mass negative. A compression (``op.compress(...)``, ``compression_error > 0``) is the
    low-rank truncation of a non-negative field whose eigen-PSFs have negative lobes by
    construction (rank 2 of an 8 × 8 Gaussian grid, 17 % error: up to 43 % negative mass at
    the corners, and RL on it works): only the sums are checked. An operator without
    ``psf_at`` is checked through ``H 1``, which must be positive somewhere and nowhere below
    -10 % of its maximum.
    """
    with torch.no_grad():
        psf_at = getattr(operator, "psf_at", None)
        shape = _shape(getattr(operator, "image_shape", None)) or tuple(image_shape)
        if not callable(psf_at):
            response = operator.forward(torch.ones(shape, dtype=dtype, device=device))
            peak = float(response.max())
            if not peak > 0 or float(response.min()) < -NEGATIVE_MASS_LIMIT * peak:
                raise ValueError(
                    f"{name} {type(operator).__name__} maps a uniform image to values from "
                    f"{float(response.min()):.3g} to {peak:.3g}; Richardson–Lucy needs an "
                    "operator that maps non-negative images to non-negative ones"
                )
            return
        compressed = is_compressed(operator)
        for row in _sample_positions(shape[0]):
            for col in _sample_positions(shape[1]):
                psf = psf_at(row, col).detach().double()
                total, mass = float(psf.sum()), float(psf.abs().sum())
                negative = float((-psf).clamp(min=0).sum())
                if total <= 0 or (not compressed and negative > NEGATIVE_MASS_LIMIT * mass):
                    raise ValueError(
                        f"{name} has a local PSF at pixel ({row}, {col}) with sum {total:.3g} "
                        f"and {negative / max(mass, 1e-300):.0%} of its mass negative; "
                        "Richardson–Lucy needs non-negative PSFs (expected a positive sum and "
                        f"at most {NEGATIVE_MASS_LIMIT:.0%} negative mass, or a compressed "
                        "operator from op.compress())"
                    )


# a PSF map's parameters more than this fraction of the family's range beyond it are "far
# outside": the CNN's estimates stray a little beyond the trained range, that is expected
OUT_OF_RANGE_MARGIN = 0.5


def warn_out_of_range(psf_map: Any, name: str = "operator") -> None:
    """``UserWarning`` if a ``PSFMap``'s parameters lie far outside its family's range.

    A cell is far outside when one of its parameters lies beyond ``[low, high]`` by more
    than half the range's width: its PSFs are then extrapolated from a model never checked
    there. Anything other than a ``PSFMap`` is ignored.
    """
    import warnings

    from psfmap.operators.psf_map import PSFMap

    maps = psf_map if isinstance(psf_map, (list, tuple)) else [psf_map]
    for one in maps:
        if not isinstance(one, PSFMap):
            continue
        low = np.asarray(one.family.low, dtype=np.float64)
        high = np.asarray(one.family.high, dtype=np.float64)
        margin = OUT_OF_RANGE_MARGIN * (high - low)
        params = one.params.reshape(-1, len(low))
        outside = ((params < low - margin) | (params > high + margin)).any(axis=1)
        if outside.any():
            ranges = ", ".join(f"{n} in [{lo:g}, {hi:g}]"
                               for n, lo, hi in zip(one.names, low, high))
            warnings.warn(
                f"{name}: {outside.mean():.0%} of the PSF map's {len(outside)} cells have "
                f"parameters far outside the family's range ({ranges}); their PSFs are "
                "extrapolated and the restoration may be wrong",
                UserWarning, stacklevel=3,
            )
