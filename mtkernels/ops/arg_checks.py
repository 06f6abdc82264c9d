"""Tensor argument checks shared by the op families: each raises a ValueError or TypeError naming the
argument and the expected shape / dtype / range, before any kernel runs."""

from __future__ import annotations

from typing import Optional

import torch

Tensor = torch.Tensor
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def float_matrix(t, name: str, shape_text: str, device=None, ref: str = "the input",
                 vocab_dim: Optional[int] = None) -> None:
    """A 2-D float32 / bfloat16 / float16 tensor on ``device`` (that of the argument named ``ref``);
    ``vocab_dim``, when given, is the dimension that must be non-empty."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor {shape_text}, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name}: expected shape {shape_text}, got {tuple(t.shape)}")
    if vocab_dim is not None and t.shape[vocab_dim] < 1:
        raise ValueError(f"{name}: expected shape {shape_text} with a non-empty vocabulary, got {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: dtype must be float32, bfloat16 or float16, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: on {t.device}, but {ref} is on {device}")


def values_in_range(values: Tensor, ok: Tensor, message: str, device_message: str) -> None:
    """Every entry of the boolean ``ok`` (computed from ``values``) must hold. On CPU tensors, outside
    ``torch.compile``, a ValueError: ``message`` followed by up to five offending values. Elsewhere a
    device-side assertion with ``device_message`` (no host sync, no graph break)."""
    if values.numel() == 0:
        return
    if values.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(ok.all()):
            raise ValueError(f"{message}, got {values[~ok][:5].tolist()}")
    else:
        torch._assert_async(ok.all(), device_message)
