"""Checking the arguments of the MuMo head ops (docs/mumo_head.md), before any kernel runs."""

from __future__ import annotations

import numbers

import torch

from .arg_checks import FLOAT_DTYPES, float_matrix, values_in_range
from .collab_args import MAX_TOP_K
from .kd_options import REDUCTIONS, _real, _temperature_ok, check_ignore_index

Tensor = torch.Tensor
_DTYPES_TEXT = "float32, bfloat16 or float16"


def _matrix(t, name: str, shape_text: str, device=None) -> None:
    float_matrix(t, name, shape_text, device, "hidden")


def _bias(b, name: str, rows: int, device) -> None:
    if b is None:
        return
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"{name}: expected a ({rows},) tensor or None, got {type(b).__name__}")
    if b.dim() != 1 or b.shape[0] != rows:
        raise ValueError(f"{name}: expected shape ({rows},), got {tuple(b.shape)}")
    if b.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: dtype must be {_DTYPES_TEXT}, got {b.dtype}")
    if b.device != device:
        raise ValueError(f"{name}: on {b.device}, but hidden is on {device}")


def check_head(hidden, multi_weight, mono_features, mono_weight, multi_bias, mono_bias) -> int:
    """The two blocks' tensors; returns the vocabulary ``V_multi + V_mono``."""
    _matrix(hidden, "hidden", "(N, H)")
    device = hidden.device
    n, h = hidden.shape
    _matrix(multi_weight, "multi_weight", f"(V_multi, {h})", device)
    if multi_weight.shape[1] != h or multi_weight.shape[0] < 1:
        raise ValueError(f"multi_weight: expected (V_multi, {h}) with V_multi >= 1 to match hidden (N, H) = "
                         f"{tuple(hidden.shape)}, got {tuple(multi_weight.shape)}")
    _matrix(mono_features, "mono_features", f"({n}, d_mono)", device)
    if mono_features.shape[0] != n:
        raise ValueError(f"mono_features: expected ({n}, d_mono), one row per row of hidden, got "
                         f"{tuple(mono_features.shape)}")
    d_mono = mono_features.shape[1]
    _matrix(mono_weight, "mono_weight", f"(V_mono, {d_mono})", device)
    if mono_weight.shape[1] != d_mono:
        raise ValueError(f"mono_weight: expected (V_mono, {d_mono}) to match mono_features (N, d_mono) = "
                         f"{tuple(mono_features.shape)}, got {tuple(mono_weight.shape)}")
    _bias(multi_bias, "multi_bias", multi_weight.shape[0], device)
    _bias(mono_bias, "mono_bias", mono_weight.shape[0], device)
    return multi_weight.shape[0] + mono_weight.shape[0]


def check_k(k, vocab: int) -> int:
    if not isinstance(k, numbers.Integral) or isinstance(k, bool):
        raise TypeError(f"k: expected an int, got {type(k).__name__}")
    limit = min(vocab, MAX_TOP_K)
    if not 1 <= k <= limit:
        raise ValueError(f"k: must be in [1, min(V_multi + V_mono, {MAX_TOP_K})] = [1, {limit}], got {k}")
    return int(k)


def check_temperature(temperature) -> float:
    return _real(temperature, "temperature", _temperature_ok,
                 "> 0, with it and its reciprocal finite in float32 (about 3e-39 to 3.4e38)")


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_targets(targets, n: int, vocab: int, ignore_index, device) -> int:
    """``targets (N,)`` int64 in ``[0, vocab)`` or ``ignore_index``; returns ``ignore_index`` as an int.
    Values are checked here on CPU tensors, by a device-side assertion elsewhere (no host sync)."""
    ignore_index = check_ignore_index(ignore_index)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets: expected a ({n},) int64 tensor, got {type(targets).__name__}")
    if targets.dtype != torch.int64:
        raise TypeError(f"targets: expected a ({n},) int64 tensor, got dtype {targets.dtype}")
    if targets.dim() != 1 or targets.shape[0] != n:
        raise ValueError(f"targets: expected shape ({n},), one per row of hidden, got {tuple(targets.shape)}")
    if targets.device != device:
        raise ValueError(f"targets: on {targets.device}, but hidden is on {device}")
    in_range = (targets == ignore_index) | ((targets >= 0) & (targets < vocab))
    values_in_range(targets, in_range,
                    f"targets: must be in [0, V_multi + V_mono) = [0, {vocab}) or ignore_index={ignore_index}",
                    "targets: out of [0, V_multi + V_mono) and not ignore_index")
    return ignore_index
