"""MuMo verification scores (docs/mumo_verify.md) in plain PyTorch: the executable spec.

Materialises the float32 log-softmax of every position, which the fused backends avoid. For row b,
candidate c of length ``l = lengths[b, c]`` and its base-vocabulary tokens ``ids[b, c, :l]``:

    σ[b, c] = (1 / l) · Σ_{j < l} log_softmax(logits[b, c, j, :])[ids[b, c, j]]

Positions ``j >= l`` are padding: their ids and logits are never part of the score.
"""

from __future__ import annotations

from typing import Optional

import torch

Tensor = torch.Tensor


def position_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``(B, K, L)`` bool: position j of candidate c is inside its length."""
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(-1)


def verify_scores(logits: Tensor, candidate_ids: Tensor, lengths: Tensor) -> Tensor:
    """σ ``(B, K)`` float32 from ``logits (B, K, L, V)``, ``candidate_ids (B, K, L)``, ``lengths (B, K)``."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    picked = log_p.gather(-1, candidate_ids.long().unsqueeze(-1)).squeeze(-1)  # (B, K, L)
    inside = position_mask(lengths, logits.shape[2])
    # where, not a product: a padding position's -inf must not turn the sum into NaN
    total = torch.where(inside, picked.double(), torch.zeros((), dtype=torch.float64, device=picked.device)).sum(-1)
    return (total / lengths.double()).float()


def head_logits(hidden: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """float32 of ``hidden @ weight.T + bias`` computed in the weight's dtype (the GEMM the fused
    form replaces): ``hidden (..., H)``, ``weight (V, H)``, ``bias (V,)`` -> ``(..., V)``."""
    bias = None if bias is None else bias.to(weight.dtype)
    return torch.nn.functional.linear(hidden.to(weight.dtype), weight, bias).float()


def verify_scores_fused(hidden: Tensor, weight: Tensor, candidate_ids: Tensor, lengths: Tensor,
                        bias: Optional[Tensor] = None, node_index: Optional[Tensor] = None) -> Tensor:
    """σ ``(B, K)`` from hidden states: ``hidden (B, K, L, H)``, or with ``node_index (B, K, L)`` the
    trie form ``hidden (B, nodes, H)``, position j of candidate c reading node ``node_index[b, c, j]``."""
    logits = head_logits(hidden, weight, bias)
    if node_index is not None:
        b, k, length = node_index.shape
        rows = torch.arange(b, device=hidden.device).view(b, 1, 1)
        logits = logits[rows, node_index.long()]  # (B, K, L, V)
    return verify_scores(logits, candidate_ids, lengths)
