"""Input checks shared by every verb: one sentence naming the argument, what it got, what it
expected (DESIGN.md, "The shape of a verb")."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def describe(value: Any) -> str:
    """Short description of a value for error messages."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__}"


def as_tensor(
    value: Any,
    name: str,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Convert NumPy arrays, tensors and nested sequences to a floating tensor.

    Integer and boolean inputs become ``torch.get_default_dtype()`` (float32 by default);
    float64 is kept unless ``dtype`` says otherwise. Other array-likes (dask, xarray, zarr:
    anything with ``__array__``) are read into memory with ``np.asarray``.
    """
    if isinstance(value, torch.Tensor):
        tensor = value
    elif isinstance(value, (np.ndarray, np.generic, list, tuple, float, int)) or hasattr(
        value, "__array__"
    ):
        array = np.asarray(value)
        if array.dtype == object or not (
            np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
        ):
            raise TypeError(f"{name} must be numeric, got {describe(value)}")
        if np.iscomplexobj(array):
            raise TypeError(f"{name} must be real, got complex values")
        if not array.dtype.isnative:  # big-endian TIFFs read by tifffile: torch refuses them
            array = array.astype(array.dtype.newbyteorder("="))
        if not array.flags.c_contiguous or not array.flags.writeable:
            # torch warns about (and cannot guard) a read-only buffer: a copy is cheaper
            array = np.array(array, order="C")
        tensor = torch.from_numpy(array)
        if isinstance(value, (list, tuple, float, int)) and dtype is None:
            # Python numbers and lists follow torch's default dtype (float32), like torch.tensor
            dtype = torch.get_default_dtype()
    else:
        raise TypeError(f"{name} must be a NumPy array or torch tensor, got {describe(value)}")
    if tensor.is_complex():
        raise TypeError(f"{name} must be real, got complex values")
    if dtype is None:
        dtype = tensor.dtype if tensor.dtype.is_floating_point else torch.get_default_dtype()
        if dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32
    return tensor.to(dtype=dtype, device=device)


def check_finite(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """Raise ``ValueError`` if ``tensor`` holds NaN or infinite values."""
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or infinite values; expected finite numbers")
    return tensor


def check_ndim(tensor: torch.Tensor, name: str, ndim: int | tuple[int, ...], what: str) -> None:
    """Raise ``ValueError`` unless ``tensor.ndim`` is one of ``ndim`` (``what`` names the axes)."""
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if tensor.ndim not in allowed:
        raise ValueError(f"{name} must have shape {what}, got shape {tuple(tensor.shape)}")


def check_pair(
    value: Any, name: str, axes: str = "(H, W)", *, square: bool = False
) -> tuple[int, int]:
    """Parse a pair of positive integers: an image shape ``(H, W)``, a grid ``(gy, gx)``...

    With ``square``, one integer ``n`` means ``(n, n)`` (a grid of n × n cells). Values that
    are not whole numbers (``2.5``) are refused rather than truncated.
    """
    given = value
    if square and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    try:
        first, second = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair {axes}, got {given!r}") from None
    pair = []
    for item in (first, second):
        if isinstance(item, (bool, str)) or not isinstance(item, (int, float, np.number)) \
                or not float(item).is_integer() or item < 1:
            raise ValueError(f"{name} must be two positive integers {axes}, got {given!r}")
        pair.append(int(item))
    return pair[0], pair[1]


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """``value`` as a float: ``TypeError`` unless it is a number (not a string or a bool),
    ``ValueError`` unless it is finite and > 0 (or >= 0)."""
    if isinstance(value, (str, bytes, bool)):  # float("0.1") and float(True) would pass
        raise TypeError(f"{name} must be a number, got {describe(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {describe(value)}") from None
    if not np.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return number


def check_psf(psf: torch.Tensor, name: str = "psf") -> torch.Tensor:
    """PSFs (any leading dims) must be finite, non-negative and not all zero."""
    check_finite(psf, name)
    if bool((psf < 0).any()):
        raise ValueError(f"{name} has negative values; a PSF must be non-negative")
    if bool((psf.flatten(-2).sum(-1) <= 0).any()):
        raise ValueError(f"{name} is all zero; a PSF must have positive total intensity")
    return psf


class ArrayKind:
    """Remembers whether a verb received NumPy or torch, to return the same kind."""

    def __init__(self, value: Any):
        self.numpy = not isinstance(value, torch.Tensor)
        self.numpy_dtype = value.dtype if isinstance(value, np.ndarray) else None
        self.torch_dtype = value.dtype if isinstance(value, torch.Tensor) else None
        self.device = value.device if isinstance(value, torch.Tensor) else None

    def restore(self, tensor: torch.Tensor) -> Any:
        """Convert a result back to the caller's kind (floating dtypes preserved)."""
        if not self.numpy:
            if self.torch_dtype is not None and self.torch_dtype.is_floating_point:
                tensor = tensor.to(self.torch_dtype)
            return tensor.to(self.device) if self.device is not None else tensor
        array = tensor.detach().cpu().numpy()
        if self.numpy_dtype is not None and np.issubdtype(self.numpy_dtype, np.floating):
            array = array.astype(self.numpy_dtype, copy=False)
        return array


def check_seed(seed: Any, name: str = "seed", *, draw: bool = False) -> Any:
    """A seed: ``None``, an integer in ``[0, 2⁶³)``, or a generator.

    With ``draw``, a ``torch.Generator`` or NumPy ``Generator`` draws an integer seed, which is
    returned so that it can be recorded and the run replayed; otherwise a NumPy generator is
    returned as it is.
    """
    if seed is None:
        return None
    if isinstance(seed, torch.Generator):
        if not draw:
            raise TypeError(f"{name} must be an integer or a numpy.random.Generator here, "
                            "got a torch.Generator")
        return int(torch.randint(0, 2**31 - 1, (1,), generator=seed))
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**31 - 1)) if draw else seed
    if isinstance(seed, np.random.SeedSequence):  # e.g. a spawned child: NumPy takes it as is
        return int(seed.generate_state(1)[0] >> 1) if draw else seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= 0 or a generator, got {describe(seed)}")
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"{name} must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)


# more iterations than this are a mistake (10**30 would never end): at ~0.1 s per RL-TV
# iteration on 2048², the bound is hours of work, far beyond any solver's convergence
MAX_ITERATIONS = 100_000


def check_iterations(iterations: Any, name: str = "iterations") -> int:
    """An iteration count: an integer (Python or NumPy, not a bool) from 1 to
    ``MAX_ITERATIONS`` (100 000)."""
    if isinstance(iterations, bool) or not hasattr(iterations, "__index__"):
        raise TypeError(f"{name} must be an integer >= 1, got {describe(iterations)}")
    value = int(iterations.__index__())
    if not 1 <= value <= MAX_ITERATIONS:
        raise ValueError(
            f"{name} must be an integer from 1 to {MAX_ITERATIONS} (MAX_ITERATIONS), got {value}"
        )
    return value


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int: a Python or NumPy integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def power_of_two_exponents(frames: torch.Tensor) -> torch.Tensor:
    """Per frame (B, H, W) -> (B, 1, 1) int64: the exponent ``e`` with ``max|frame| = m · 2^e``,
    ``m`` in [0.5, 1) (0 for an all-zero frame), so that ``frame · 2^-e`` has its maximum in
    [0.5, 1). Scaling by a power of two is exact in floating point (no rounding), so solvers
    that work on the scaled frames give the same numbers as on the originals, without the
    overflow of FFT sums near the dtype's maximum or the underflow of subnormal images."""
    peak = frames.detach().abs().amax(dim=(-2, -1), keepdim=True)
    return torch.frexp(peak).exponent.to(torch.int64)


def times_power_of_two(tensor: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """``tensor · 2^exponents`` (exponents broadcastable), in two exact steps: one factor
    ``2^e`` may not exist in the dtype (float32 subnormals need 2^149, beyond its maximum)."""
    if not bool((exponents != 0).any()):
        return tensor
    half = torch.div(exponents, 2, rounding_mode="floor")
    for part in (half, exponents - half):
        tensor = tensor * torch.pow(2.0, part.to(torch.float64)).to(tensor.dtype)
    return tensor


def fit_output(
    tensor: torch.Tensor, kind: ArrayKind, what: str, compute_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Clamp a non-negative result to the largest finite value of the dtype it is returned in
    (``kind``'s floating dtype, else ``compute_dtype`` or ``tensor``'s), with a
    ``RuntimeWarning``: restoring an image near the dtype's maximum can sharpen peaks beyond
    it, and +inf is no answer. The result is in ``compute_dtype`` when given."""
    import warnings

    dtype = compute_dtype or tensor.dtype
    if kind.torch_dtype is not None and kind.torch_dtype.is_floating_point:
        dtype = kind.torch_dtype
    elif kind.numpy_dtype is not None and np.issubdtype(kind.numpy_dtype, np.floating):
        dtype = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
                 np.dtype(np.float64): torch.float64}.get(np.dtype(kind.numpy_dtype), dtype)
    largest = torch.finfo(dtype).max
    over = tensor > largest
    if bool(over.any()):
        warnings.warn(
            f"{what} exceeds the largest {dtype} value ({largest:.4g}) at {int(over.sum())} "
            f"pixel(s), clipped to it; pass a float64 image to keep the peaks",
            RuntimeWarning, stacklevel=3,
        )
        tensor = torch.clamp(tensor, max=largest)
    return tensor if compute_dtype is None else tensor.to(compute_dtype)
