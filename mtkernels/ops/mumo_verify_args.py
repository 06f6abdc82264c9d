"""Checking the arguments of the MuMo verification ops before any kernel runs.

Shapes, dtypes and devices are checked by the public functions; index values (ids in the
vocabulary, lengths in 1..L, nodes in range) by :func:`check_values`, which the torch ops call
first: on CPU tensors it raises ValueError, elsewhere (no host sync) it asserts on the device.
"""

from __future__ import annotations

from typing import Optional

import torch

from .arg_checks import FLOAT_DTYPES, values_in_range

Tensor = torch.Tensor
INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _tensor(t, name: str, shape_text: str) -> Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor {shape_text}, got {type(t).__name__}")
    return t


def float_tensor(t, name: str, shape_text: str, dim: int, device=None, ref_name: str = "") -> Tensor:
    """A floating tensor of ``dim`` dimensions (float32, bfloat16 or float16) on ``device``."""
    _tensor(t, name, shape_text)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected {shape_text} float32, bfloat16 or float16, got dtype {t.dtype}")
    if t.dim() != dim:
        raise ValueError(f"{name}: expected shape {shape_text}, got {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: on {t.device}, but {ref_name} is on {device}")
    return t


def index_tensor(t, name: str, shape: tuple, shape_text: str, device, ref_name: str) -> Tensor:
    """An integer tensor of exactly ``shape`` on ``device``."""
    _tensor(t, name, shape_text)
    if t.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name}: expected an integer tensor {shape_text}, got dtype {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {shape_text} = {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: on {t.device}, but {ref_name} is on {device}")
    return t


def check_candidates(candidate_ids, lengths, batch: int, k: int, max_len: int, device, ref_name: str) -> None:
    index_tensor(candidate_ids, "candidate_ids", (batch, k, max_len), "(B, K, L)", device, ref_name)
    index_tensor(lengths, "lengths", (batch, k), "(B, K)", device, ref_name)


def _in_range(t: Tensor, lo: int, hi: int, name: str, what: str) -> None:
    """Every value of ``t`` in [lo, hi]: ValueError on CPU, a device-side assertion elsewhere."""
    values_in_range(t, (t >= lo) & (t <= hi), f"{name}: {what} must be in [{lo}, {hi}]",
                    f"{name}: {what} out of [{lo}, {hi}]")


def check_values(candidate_ids: Tensor, lengths: Tensor, vocab: int, node_index: Optional[Tensor] = None,
                 nodes: int = 0) -> None:
    """lengths in [1, L], every id in [0, V) (padding ids too: they index the vocabulary), and
    every node index in [0, nodes)."""
    _in_range(lengths, 1, candidate_ids.shape[-1], "lengths", "each candidate's length")
    _in_range(candidate_ids, 0, vocab - 1, "candidate_ids", "token ids (padding included)")
    if node_index is not None:
        _in_range(node_index, 0, nodes - 1, "node_index", "node indices")


def check_logits(logits) -> None:
    float_tensor(logits, "logits", "(B, K, L, V)", 4)
    if logits.shape[1] < 1 or logits.shape[2] < 1 or logits.shape[3] < 1:
        raise ValueError(f"logits: expected (B, K, L, V) with K, L, V >= 1, got {tuple(logits.shape)}")


def check_fused(hidden, weight, bias, node_index, candidate_ids, lengths) -> tuple:
    """Shapes, dtypes, devices of the fused form; returns ``(B, K, L, H, V)``."""
    if node_index is None:
        float_tensor(hidden, "hidden", "(B, K, L, H)", 4)
        batch, k, max_len, h = hidden.shape
    else:
        float_tensor(hidden, "hidden", "(B, nodes, H) (trie form, node_index given)", 3)
        batch, _nodes, h = hidden.shape
        if not isinstance(node_index, torch.Tensor) or node_index.dim() != 3:
            raise ValueError(f"node_index: expected (B, K, L), got {getattr(node_index, 'shape', type(node_index))}")
        k, max_len = node_index.shape[1], node_index.shape[2]
        index_tensor(node_index, "node_index", (batch, k, max_len), "(B, K, L)", hidden.device, "hidden")
        if _nodes < 1 and batch * k * max_len > 0:
            raise ValueError(f"hidden: expected (B, nodes, H) with nodes >= 1, got {tuple(hidden.shape)}")
    if k < 1 or max_len < 1:
        raise ValueError(f"hidden / node_index: expected K, L >= 1, got K={k}, L={max_len}")
    device = hidden.device
    float_tensor(weight, "weight", f"(V, {h})", 2, device, "hidden")
    if weight.shape[1] != h or weight.shape[0] < 1:
        raise ValueError(f"weight: expected (V, H) = (V, {h}) with V >= 1 to match hidden, got {tuple(weight.shape)}")
    vocab = weight.shape[0]
    if bias is not None:
        float_tensor(bias, "bias", f"({vocab},)", 1, device, "hidden")
        if bias.shape[0] != vocab:
            raise ValueError(f"bias: expected shape ({vocab},) to match weight (V, H), got {tuple(bias.shape)}")
    check_candidates(candidate_ids, lengths, batch, k, max_len, device, "hidden")
    return batch, k, max_len, h, vocab
