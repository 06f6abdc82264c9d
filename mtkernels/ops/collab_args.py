"""Checking and normalising the arguments of the collab ops, before any kernel runs."""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import List, Optional, Union

import torch

Tensor = torch.Tensor
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_TOP_K = 1024  # widest candidate list the fused top-k path is tuned and tested for


@dataclasses.dataclass
class CollabInputs:
    logits: List[Tensor]  # M tensors (B, V_m), unit stride along the vocabulary
    weights: Tensor  # (B, M) float32
    temperature: Tensor  # (B,) float32
    vocab_size: int

    @property
    def batch(self) -> int:
        return self.logits[0].shape[0]

    @property
    def device(self) -> torch.device:
        return self.logits[0].device


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


def normalize_weights(weights, num_models: int, batch: int, device: torch.device) -> Tensor:
    if weights is None:
        weights = [1.0] * num_models
    if _is_tensor(weights):
        w = weights
    elif isinstance(weights, (list, tuple)) and all(isinstance(v, numbers.Real) for v in weights):
        if len(weights) != num_models or not all(math.isfinite(v) for v in weights):
            raise ValueError(f"weights: expected {num_models} finite floats, got {list(weights)}")
        return constant_rows(tuple(float(v) for v in weights), batch, device, torch.float32)
    else:
        raise TypeError("weights: expected M floats, a (M,) tensor or a (B, M) tensor")
    if not w.is_floating_point():
        raise TypeError(f"weights: expected a floating-point tensor, got {w.dtype}")
    if w.dim() == 1 and w.shape[0] == num_models:
        w = w.unsqueeze(0).expand(batch, num_models)
    elif not (w.dim() == 2 and tuple(w.shape) == (batch, num_models)):
        raise ValueError(f"weights: expected shape ({num_models},) or ({batch}, {num_models}) for M={num_models} "
                         f"models and batch B={batch}, got {tuple(w.shape)}")
    if w.device.type != "cpu" and w.device != device:
        raise ValueError(f"weights: on {w.device}, but logits are on {device}")
    _check_values(w, "weights", is_finite, "finite")  # before the copy to the GPU
    return w.to(device=device, dtype=torch.float32).contiguous()


def is_finite(t):
    """Elementwise, for Python numbers and tensors alike (range checks are written once for both)."""
    return (t == t) & (abs(t) < math.inf)


def _check_values(t: Tensor, name: str, ok, expected: str) -> None:
    """Range check of a tensor argument with an elementwise predicate ``ok``. For a CUDA tensor
    this costs one device sync; scalar arguments (the common case) never do."""
    if torch.compiler.is_compiling():
        return
    if not bool(ok(t).all()):
        raise ValueError(f"{name}: every value must be {expected}")


def per_row(value, name: str, batch: int, device: torch.device, dtype, check, expected: str) -> Tensor:
    """A scalar or a (B,) tensor as a (B,) tensor of ``dtype`` on ``device``, range-checked."""
    if _is_tensor(value):
        if value.dim() == 0:
            value = value.reshape(1).expand(batch)
        if value.dim() != 1 or value.shape[0] != batch:
            raise ValueError(f"{name}: expected a scalar or a ({batch},) tensor, got shape {tuple(value.shape)}")
        if dtype.is_floating_point != value.is_floating_point() or value.dtype == torch.bool:
            kind = "floating-point" if dtype.is_floating_point else "integer"
            raise TypeError(f"{name}: expected an {kind} tensor, got {value.dtype}")
        if value.device.type != "cpu" and value.device != device:
            raise ValueError(f"{name}: on {value.device}, but logits are on {device}")
        _check_values(value.to(dtype), name, check, expected)  # before the copy to the GPU
        return value.to(device=device, dtype=dtype)
    want = numbers.Real if dtype.is_floating_point else numbers.Integral
    if not isinstance(value, want) or isinstance(value, bool):
        raise TypeError(f"{name}: expected a {'float' if dtype.is_floating_point else 'int'} or a ({batch},) tensor, "
                        f"got {type(value).__name__}")
    if not bool(check(value)):
        raise ValueError(f"{name}: must be {expected}, got {value}")
    return constant_rows(value, batch, device, dtype)


def collab_inputs(logits, weights, temperature, vocab_size) -> CollabInputs:
    xs = normalize_logits(logits)
    batch, device = xs[0].shape[0], xs[0].device
    v = normalize_vocab_size(vocab_size, xs)
    w = normalize_weights(weights, len(xs), batch, device)
    tau = per_row(temperature, "temperature", batch, device, torch.float32,
                  lambda t: is_finite(t) & (t > 0), "finite and > 0")
    return CollabInputs(xs, w, tau, v)


def top_k_arg(top_k: Union[int, Tensor], batch: int, vocab_size: int, device, allow_zero: bool):
    """``(per-row (B,) int64, K = the candidate width)``. Per-row values must all be >= 1."""
    low = 0 if allow_zero else 1
    if _is_tensor(top_k):
        rows = per_row(top_k, "top_k", batch, device, torch.int64,
                       lambda t: (t >= 1) & (t <= vocab_size),
                       f"in [1, vocab size {vocab_size}] (turn top-k off for a whole batch with top_k=0)")
        # The candidate width is a shape, so a per-row tensor costs one read of its max.
        return rows, int(rows.max())
    if not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool):
        raise TypeError(f"top_k: expected an int or a ({batch},) int tensor, got {type(top_k).__name__}")
    if not low <= top_k <= vocab_size:
        raise ValueError(f"top_k: must be in [{low}, vocab size {vocab_size}]"
                         f"{' (0 = off)' if allow_zero else ''}, got {top_k}")
    return constant_rows(int(top_k), batch, device, torch.int64), int(top_k)


def is_off(value, off: float) -> bool:
    """True when a filter parameter is a Python scalar equal to its 'off' value."""
    return not _is_tensor(value) and float(value) == off


def check_generator(generator: Optional[torch.Generator], device: torch.device) -> None:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        # A CPU generator serves any device (its keys are copied over; the same seed then gives the
        # same tokens on every device); a GPU generator must be on the logits' device type.
        if generator.device.type not in ("cpu", device.type):
            raise ValueError(f"generator: on {generator.device}, but logits are on {device}")

