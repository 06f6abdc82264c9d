"""Checking and normalising the arguments of the collab ops, before any kernel runs.

Scalars are checked here, as the kernels will see them: in float32. Tensor arguments get their
shape, dtype and device checked here; their values are checked by the op body when they are on
the CPU (so the checks also run in code compiled by ``torch.compile``, where this module's Python
runs only while tracing), and here in eager mode otherwise (one device sync; under ``torch.compile``
the op body marks the rows of invalid GPU values instead, as it marks rows with no distribution).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import struct
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from .arg_checks import FLOAT_DTYPES

Tensor = torch.Tensor
# Widest candidate list of the fused top-k kernels (Triton, and kMaxTopK in csrc/cuda/collab.cuh,
# which a test checks against this); wider k is still exact, through the logits kernel and a sort.
MAX_TOP_K = 1024

# Tensor parameters whose values the op body still has to check: the bits of the ops' `unchecked`.
CHECK_WEIGHTS, CHECK_TEMPERATURE, CHECK_TOP_P, CHECK_MIN_P, CHECK_KEYS = 1, 2, 4, 8, 16
KEY_LIMIT = 2**32  # sampling keys are 32-bit: (B,) int64 values in [0, 2**32)


@dataclasses.dataclass(frozen=True)
class CollabInputs:
    """The collab ops' common arguments, normalised (the family's typed options)."""

    logits: List[Tensor]  # M tensors (B, V_m), unit stride along the vocabulary
    weights: Tensor  # (B, M) floating point, on the logits' device
    temperature: Tensor  # (B,) floating point, on the logits' device
    vocab_size: int
    unchecked: int  # CHECK_* bits of weights / temperature

    @property
    def batch(self) -> int:
        return self.logits[0].shape[0]

    @property
    def device(self) -> torch.device:
        return self.logits[0].device


def float32_value(value: float) -> float:
    """``value`` rounded to float32 (±inf past its range), as the kernels see it."""
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def is_finite(t):
    """Elementwise, for Python numbers and tensors alike (range checks are written once for both)."""
    return (t == t) & (abs(t) < math.inf)


# name -> (what a valid value is, predicate on (value, value in float32)); the predicates work on
# Python floats and on tensors alike.
RANGES: Dict[str, Tuple[str, Callable]] = {
    "weights": ("finite in float32 (and not 0 there unless 0)", lambda v, v32: is_finite(v32) & ((v32 != 0) | (v == 0))),
    "temperature": ("finite and > 0 in float32", lambda v, v32: is_finite(v32) & (v32 > 0)),
    "top_p": ("in (0, 1] (in float32)", lambda v, v32: (v32 > 0) & (v32 <= 1)),
    "min_p": ("in [0, 1) (in float32)", lambda v, v32: (v32 >= 0) & (v32 < 1)),
    # integer keys: the float32 copy the other checks look at plays no part
    "keys": ("a 32-bit key in [0, 2**32)", lambda v, v32: (v >= 0) & (v < KEY_LIMIT)),
}
_CHECK_BITS = {"weights": CHECK_WEIGHTS, "temperature": CHECK_TEMPERATURE, "top_p": CHECK_TOP_P, "min_p": CHECK_MIN_P,
               "keys": CHECK_KEYS}


def _scalar_hint(value: float, v32: float) -> str:
    if math.isfinite(value) and not math.isfinite(v32):
        return f" ({value!r} overflows float32)"
    if value != 0 and v32 == 0:
        return f" ({value!r} is 0 in float32)"
    return ""


def check_scalar(name: str, value) -> float:
    """A Python number argument as the float32 value the kernels will use; raises if out of range."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name}: expected a float or a (B,) tensor, got {type(value).__name__}")
    value = float(value)
    v32 = float32_value(value)
    expected, ok = RANGES[name]
    if not ok(value, v32):
        raise ValueError(f"{name}: must be {expected}, got {value!r}{_scalar_hint(value, v32)}")
    return v32


def bad_rows(name: str, value: Tensor) -> Tensor:
    """``(B,)`` bool: rows of a ``(B,)`` or ``(B, M)`` parameter tensor out of its range in float32."""
    ok = RANGES[name][1](value, value if name == "keys" else value.to(torch.float32))
    return ~(ok if ok.dim() == 1 else ok.all(1))


def _raise_bad_rows(name: str, bad: Tensor) -> None:
    rows = bad.nonzero().flatten().tolist()
    raise ValueError(f"{name}: every value must be {RANGES[name][0]}; rows {rows[:10]}{'...' if len(rows) > 10 else ''} "
                     f"are not")


def check_in_op(unchecked: int, **params: Optional[Tensor]) -> Optional[Tensor]:
    """The op body's value checks of the tensor parameters whose ``unchecked`` bit is set. CPU
    tensors: raise ValueError naming the parameter. GPU tensors (no host sync): returns the
    ``(B,)`` mask of invalid rows, for the caller to mark, or None when nothing is checked."""
    invalid = None
    for name, value in params.items():
        if value is None or not unchecked & _CHECK_BITS[name]:
            continue
        bad = bad_rows(name, value)
        if value.device.type == "cpu":
            if bool(bad.any()):
                _raise_bad_rows(name, bad)
        else:
            invalid = bad if invalid is None else invalid | bad
    return invalid


def _checked_here(name: str, value: Tensor, device: torch.device) -> bool:
    """Eager mode: checks a parameter tensor now unless the op body will (tensor and logits on the
    CPU). Returns True when it did."""
    if torch.compiler.is_compiling() or (value.device.type == "cpu" and device.type == "cpu"):
        return False
    bad = bad_rows(name, value)  # before the copy to the GPU; a GPU tensor costs one sync
    if bool(bad.any()):
        _raise_bad_rows(name, bad)
    return True


@functools.lru_cache(maxsize=256)
def constant_rows(value, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(B,)`` filled with a scalar, or ``(B, M)`` with a tuple of M scalars, built once per
    (value, shape, device). Decoding calls the ops with the same scalars at every step, and these
    small tensors otherwise cost as much as a B = 1 kernel. Never modified (ops do not write to
    their inputs). Filled on the device: a copy from host memory would synchronise with a GPU."""
    if isinstance(value, tuple):
        return torch.stack([torch.full((batch,), v, dtype=dtype, device=device) for v in value], dim=1)
    return torch.full((batch,), value, dtype=dtype, device=device)


def _is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


def normalize_logits(logits) -> List[Tensor]:
    if _is_tensor(logits):
        if logits.dim() == 3:
            tensors = list(logits.unbind(0))
        elif logits.dim() == 2:
            tensors = [logits]
        else:
            raise ValueError(f"logits: expected a (M, B, V) or (B, V) tensor or a sequence of (B, V_m) tensors, "
                             f"got a tensor of shape {tuple(logits.shape)}")
    elif isinstance(logits, (list, tuple)):
        tensors = list(logits)
    else:
        raise TypeError(f"logits: expected a tensor or a sequence of tensors, got {type(logits).__name__}")
    if not tensors:
        raise ValueError("logits: need at least one model's logits (M >= 1)")
    first = tensors[0]
    for m, x in enumerate(tensors):
        if not _is_tensor(x):
            raise TypeError(f"logits[{m}]: expected a tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"logits[{m}]: expected shape (B, V_m), got {tuple(x.shape)}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"logits[{m}]: dtype must be float32, bfloat16 or float16, got {x.dtype}")
        if x.device != first.device:
            raise ValueError(f"logits[{m}]: on {x.device}, but logits[0] is on {first.device}")
        if x.shape[0] != first.shape[0]:
            raise ValueError(f"logits[{m}]: batch size {x.shape[0]} differs from logits[0]'s {first.shape[0]}")
        if x.shape[1] < 1 or x.shape[0] < 1:
            raise ValueError(f"logits[{m}]: empty shape {tuple(x.shape)}")
    # Kernels need unit stride along the vocabulary; any row stride is fine.
    return [x if x.stride(1) == 1 else x.contiguous() for x in tensors]


def normalize_vocab_size(vocab_size: Optional[int], logits: List[Tensor]) -> int:
    shared = min(x.shape[1] for x in logits)
    if vocab_size is None:
        return shared
    if not isinstance(vocab_size, numbers.Integral) or isinstance(vocab_size, bool):
        raise TypeError(f"vocab_size: expected an int, got {type(vocab_size).__name__}")
    if not 1 <= vocab_size <= shared:
        raise ValueError(f"vocab_size: must be in [1, min_m V_m = {shared}], got {vocab_size}")
    return int(vocab_size)


def normalize_weights(weights, num_models: int, batch: int, device: torch.device) -> Tuple[Tensor, int]:
    """``((B, M) weights on the logits' device, unchecked bits)``."""
    if weights is None:
        weights = [1.0] * num_models
    if isinstance(weights, (list, tuple)) and all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                                  for v in weights):
        if len(weights) != num_models:
            raise ValueError(f"weights: expected {num_models} floats (one per model), got {len(weights)}: {list(weights)}")
        values = []
        for m, v in enumerate(weights):
            v32 = float32_value(float(v))
            if not RANGES["weights"][1](float(v), v32):
                raise ValueError(f"weights: every weight must be {RANGES['weights'][0]}; weights[{m}] = {v!r}"
                                 f"{_scalar_hint(float(v), v32)}")
            values.append(v32)
        return constant_rows(tuple(values), batch, device, torch.float32), 0
    if not _is_tensor(weights):
        raise TypeError(f"weights: expected M floats, a (M,) tensor or a (B, M) tensor, got {type(weights).__name__}")
    w = weights
    if not w.is_floating_point():
        raise TypeError(f"weights: expected a floating-point tensor, got {w.dtype}")
    if w.dim() == 1 and w.shape[0] == num_models:
        w = w.unsqueeze(0).expand(batch, num_models)
    elif not (w.dim() == 2 and tuple(w.shape) == (batch, num_models)):
        raise ValueError(f"weights: expected shape ({num_models},) or ({batch}, {num_models}) for M={num_models} "
                         f"models and batch B={batch}, got {tuple(w.shape)}")
    if w.device.type != "cpu" and w.device != device:
        raise ValueError(f"weights: on {w.device}, but logits are on {device}")
    checked = _checked_here("weights", w, device)
    return w.to(device=device), 0 if checked else CHECK_WEIGHTS


def per_row_tensor(value: Tensor, name: str, batch: int, device: torch.device, floating: bool) -> Tensor:
    """A scalar or ``(B,)`` tensor parameter as ``(B,)`` on ``device`` (dtype kept), shape-checked."""
    if value.dim() == 0:
        value = value.reshape(1).expand(batch)
    if value.dim() != 1 or value.shape[0] != batch:
        raise ValueError(f"{name}: expected a scalar or a ({batch},) tensor, got shape {tuple(value.shape)}")
    if floating != value.is_floating_point() or value.dtype == torch.bool:
        raise TypeError(f"{name}: expected a{' floating-point' if floating else 'n integer'} tensor, got {value.dtype}")
    if value.device.type != "cpu" and value.device != device:
        raise ValueError(f"{name}: on {value.device}, but logits are on {device}")
    return value.to(device=device)


def float_param(value, name: str, batch: int, device: torch.device) -> Tuple[Tensor, int]:
    """temperature / top_p / min_p: ``((B,) tensor on device, unchecked bit)``. Scalars are checked
    here and become float32; tensors keep their dtype until the op body converts them."""
    if _is_tensor(value):
        value = per_row_tensor(value, name, batch, device, floating=True)
        return value, 0 if _checked_here(name, value, device) else _CHECK_BITS[name]
    return constant_rows(check_scalar(name, value), batch, device, torch.float32), 0


def collab_inputs(logits, weights, temperature, vocab_size) -> CollabInputs:
    xs = normalize_logits(logits)
    batch, device = xs[0].shape[0], xs[0].device
    v = normalize_vocab_size(vocab_size, xs)
    w, w_unchecked = normalize_weights(weights, len(xs), batch, device)
    tau, tau_unchecked = float_param(temperature, "temperature", batch, device)
    return CollabInputs(xs, w, tau, v, w_unchecked | tau_unchecked)


def top_k_arg(top_k: Union[int, Tensor], batch: int, vocab_size: int, device, allow_zero: bool):
    """``(per-row (B,) int64, K = the candidate width)``. Per-row values must all be >= 1. A tensor
    is checked here (its max, the candidate width, is read on the host anyway)."""
    low = 0 if allow_zero else 1
    if _is_tensor(top_k):
        rows = per_row_tensor(top_k, "top_k", batch, device, floating=False).to(torch.int64)
        if not torch.compiler.is_compiling() and not bool(((rows >= 1) & (rows <= vocab_size)).all()):
            raise ValueError(f"top_k: every value must be in [1, vocab size {vocab_size}] "
                             f"(turn top-k off for a whole batch with top_k=0)")
        # The candidate width is a shape, so a per-row tensor costs one read of its max.
        return rows, int(rows.max())
    if not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool):
        raise TypeError(f"top_k: expected an int or a ({batch},) int tensor, got {type(top_k).__name__}")
    if not low <= top_k <= vocab_size:
        raise ValueError(f"top_k: must be in [{low}, vocab size {vocab_size}]"
                         f"{' (0 = off)' if allow_zero else ''}, got {top_k}")
    return constant_rows(int(top_k), batch, device, torch.int64), int(top_k)


def filter_param(value, name: str, off: float, batch: int, device: torch.device) -> Tuple[Optional[Tensor], int]:
    """top_p / min_p: ``(None, 0)`` when it is the Python scalar meaning "off", else as float_param."""
    if not _is_tensor(value):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise TypeError(f"{name}: expected a float {RANGES[name][0]} or a ({batch},) tensor, "
                            f"got {type(value).__name__}")
        if float(value) == off:
            return None, 0
    return float_param(value, name, batch, device)


def check_generator(generator: Optional[torch.Generator], device: torch.device) -> None:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        # A CPU generator serves any device (its keys are copied over; the same seed then gives the
        # same tokens on every device); a GPU generator must be on the logits' device type.
        if generator.device.type not in ("cpu", device.type):
            raise ValueError(f"generator: on {generator.device}, but logits are on {device}")


def keys_arg(keys, generator: Optional[torch.Generator], batch: int,
             device: torch.device) -> Tuple[Optional[Tensor], int]:
    """``keys=`` of the sampling op: ``((B,) int64 on the logits' device, unchecked bit)``, or
    ``(None, 0)`` when absent (the keys then come from ``generator``). Shape, dtype and device are
    checked here; values (each in ``[0, 2**32)``) here in eager mode unless keys and logits are
    both on the CPU, where the op body checks them (so the check holds under ``torch.compile``)."""
    if keys is None:
        return None, 0
    if generator is not None:
        raise ValueError("keys: pass either keys= (one 32-bit key per row) or generator=, not both")
    expected = f"a ({batch},) int64 tensor of 32-bit keys in [0, 2**32)"
    if not _is_tensor(keys):
        raise TypeError(f"keys: expected {expected}, got {type(keys).__name__}")
    if keys.dtype != torch.int64:
        raise TypeError(f"keys: expected {expected}, got dtype {keys.dtype}")
    if tuple(keys.shape) != (batch,):
        raise ValueError(f"keys: expected {expected} (one per row), got shape {tuple(keys.shape)}")
    if keys.device.type != "cpu" and keys.device != device:
        raise ValueError(f"keys: on {keys.device}, but logits are on {device} (keys may be on the CPU)")
    checked = _checked_here("keys", keys, device)
    return keys.to(device=device).contiguous(), 0 if checked else CHECK_KEYS
