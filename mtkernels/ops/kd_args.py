"""Checking the tensor arguments of the self-evolution KD loss, before any kernel runs (the
constants are checked by :class:`~mtkernels.ops.kd_options.KDOptions`)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional

import torch

from .arg_checks import FLOAT_DTYPES, float_matrix, values_in_range
from .kd_options import KDOptions, check_ignore_index

Tensor = torch.Tensor


@dataclasses.dataclass
class KDArgs:
    num_items: Optional[Tensor]  # () float32 on the inputs' device, or None


def _is_dtensor(t) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _matrix(t, name: str, shape_text: str, device=None, vocab_dim: Optional[int] = None):
    """A 2-D floating tensor; ``vocab_dim``, when given, is the dimension that must be non-empty."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor {shape_text}, got {type(t).__name__}")
    if _is_dtensor(t):  # e.g. an FSDP2 (fully_shard) parameter read outside the module's forward
        raise TypeError(f"{name}: a DTensor (a sharded parameter, e.g. of fully_shard, read outside the module's "
                        f"forward); compute the loss inside a forward, or a method registered with "
                        f"torch.distributed.fsdp.register_fsdp_forward_method, where the weight is whole")
    float_matrix(t, name, shape_text, device, "student_input", vocab_dim)


def _bias(b, name: str, rows: int, device):
    if b is None:
        return
    if not isinstance(b, torch.Tensor) or b.dim() != 1 or b.shape[0] != rows:
        raise ValueError(f"{name}: expected shape ({rows},), got {getattr(b, 'shape', type(b).__name__)}")
    if b.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: dtype must be float32, bfloat16 or float16, got {b.dtype}")
    if b.device != device:
        raise ValueError(f"{name}: on {b.device}, but student_input is on {device}")


def check_labels(labels, n: int, vocab: Optional[int], ignore_index: int, device) -> None:
    """``vocab`` None: shape, dtype and device only (the vocabulary-parallel form checks the range
    against the global vocabulary once every rank's slice size is known)."""
    check_ignore_index(ignore_index)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels: expected a ({n},) int64 tensor, got {type(labels).__name__}")
    if labels.dtype != torch.int64 or labels.dim() != 1:
        raise ValueError(f"labels: expected a ({n},) int64 tensor, got {tuple(labels.shape)} {labels.dtype}")
    if labels.shape[0] != n:
        raise ValueError(f"labels: expected {n} labels, one per row, got {labels.shape[0]}; labels must already be "
                         f"aligned with the rows: for a causal LM shift them (labels[..., 1:]) and drop the last "
                         f"position's hidden state or logits")
    if labels.device != device:
        raise ValueError(f"labels: on {labels.device}, but the logits/inputs are on {device}")
    if vocab is None:
        return
    in_range = (labels == ignore_index) | ((labels >= 0) & (labels < vocab))
    values_in_range(labels, in_range, f"labels: must be in [0, {vocab}) or ignore_index={ignore_index}",
                    "labels: out of [0, vocab) and not ignore_index")


NUM_ITEMS_EXPECTED = "a non-negative whole count (an int, or a one-element tensor holding one)"


def _is_count(v: float) -> bool:
    return math.isfinite(v) and v >= 0 and v == math.floor(v)


def num_items_tensor(num_items_in_batch, device) -> Optional[Tensor]:
    """``num_items_in_batch`` as a () float32 tensor on ``device`` (None stays None).

    Hugging Face's Trainer passes the count of label tokens of the accumulated batch, possibly 0
    (every label ignored), as an int or a (possibly GPU) tensor. On a CPU tensor the value is checked
    here; on a GPU or under torch.compile by a device-side assertion (no host sync, no graph break)."""
    if num_items_in_batch is None:
        return None
    if isinstance(num_items_in_batch, torch.Tensor):
        t = num_items_in_batch
        if t.numel() != 1:
            raise ValueError(f"num_items_in_batch: expected {NUM_ITEMS_EXPECTED}, got a tensor of shape {tuple(t.shape)}")
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"num_items_in_batch: expected {NUM_ITEMS_EXPECTED}, got a {t.dtype} tensor")
        t = t.reshape(()).to(device=device, dtype=torch.float64)
        if t.device.type == "cpu" and not torch.compiler.is_compiling():
            if not _is_count(float(t)):
                raise ValueError(f"num_items_in_batch: must be {NUM_ITEMS_EXPECTED}, got {float(t)!r}")
        else:
            ok = torch.isfinite(t) & (t >= 0) & (t == torch.floor(t))
            torch._assert_async(ok, f"num_items_in_batch: must be {NUM_ITEMS_EXPECTED}")
        return t.to(torch.float32)
    if not isinstance(num_items_in_batch, numbers.Real) or isinstance(num_items_in_batch, bool):
        raise TypeError(f"num_items_in_batch: expected {NUM_ITEMS_EXPECTED}, got {type(num_items_in_batch).__name__}")
    if not _is_count(float(num_items_in_batch)):
        raise ValueError(f"num_items_in_batch: must be {NUM_ITEMS_EXPECTED}, got {num_items_in_batch!r}")
    return torch.tensor(float(num_items_in_batch), device=device)


def check(student_input, student_weight, teacher_input, teacher_weight, labels, teacher_logits, student_bias,
          teacher_bias, options: KDOptions, num_items_in_batch, return_stats, check_label_range: bool = True) -> KDArgs:
    _matrix(student_input, "student_input", "(N, H_s)")
    device = student_input.device
    n, hidden = student_input.shape
    _matrix(student_weight, "student_weight", "(V_s, H_s)", device, vocab_dim=0)
    if student_weight.shape[1] != hidden:
        raise ValueError(f"student_weight: expected (V_s, {hidden}) to match student_input (N, H_s), "
                         f"got {tuple(student_weight.shape)}")
    _bias(student_bias, "student_bias", student_weight.shape[0], device)
    if teacher_logits is not None:
        if teacher_input is not None or teacher_weight is not None:
            raise ValueError("teacher_logits: pass either teacher_logits or teacher_input and teacher_weight, not both")
        _matrix(teacher_logits, "teacher_logits", f"({n}, V_t)", device, vocab_dim=1)
        if teacher_logits.shape[0] != n:
            raise ValueError(f"teacher_logits: expected ({n}, V_t), got {tuple(teacher_logits.shape)}")
        vocab_t = teacher_logits.shape[1]
    else:
        if teacher_input is None or teacher_weight is None:
            raise ValueError("teacher_input and teacher_weight are required unless teacher_logits is given")
        _matrix(teacher_input, "teacher_input", f"({n}, H_t)", device)
        _matrix(teacher_weight, "teacher_weight", "(V_t, H_t)", device, vocab_dim=0)
        if teacher_input.shape[0] != n or teacher_weight.shape[1] != teacher_input.shape[1]:
            raise ValueError(f"teacher_input / teacher_weight: expected ({n}, H_t) and (V_t, H_t), got "
                             f"{tuple(teacher_input.shape)} and {tuple(teacher_weight.shape)}")
        _bias(teacher_bias, "teacher_bias", teacher_weight.shape[0], device)
        vocab_t = teacher_weight.shape[0]
    check_labels(labels, n, min(student_weight.shape[0], vocab_t) if check_label_range else None,
                 options.ignore_index, device)
    if not isinstance(return_stats, bool):
        raise TypeError("return_stats: expected a bool")
    return KDArgs(num_items_tensor(num_items_in_batch, device))


def check_logits(student_logits, teacher_logits) -> None:
    _matrix(student_logits, "student_logits", "(N, V_s) or (B, T, V_s)", vocab_dim=1)
    _matrix(teacher_logits, "teacher_logits", "(N, V_t) or (B, T, V_t)", student_logits.device, vocab_dim=1)
    if teacher_logits.shape[0] != student_logits.shape[0]:
        raise ValueError(f"teacher_logits: {teacher_logits.shape[0]} rows, student_logits has {student_logits.shape[0]}")
