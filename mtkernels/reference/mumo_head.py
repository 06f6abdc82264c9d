"""The MuMo head ops (docs/mumo_head.md) in plain PyTorch: the concatenated logits in full, then
softmax / top-k / cross-entropy, autograd for the gradients. The executable spec that the fused
backends are tested against.

``z = [hidden · W_multiᵀ + b_multi ; mono_features · W_monoᵀ + b_mono]``, ``(N, V_multi + V_mono)``;
each block's GEMM runs in its weight's dtype (as a linear layer under autocast), then float32.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

Tensor = torch.Tensor


def block_logits(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``(N, V)`` ``x @ weight.T + bias`` computed in the weight's dtype, returned in float32 (float64
    stays float64, for gradcheck)."""
    bias = None if bias is None else bias.to(weight.dtype)
    out = torch.nn.functional.linear(x.to(weight.dtype), weight, bias)
    return out.to(torch.promote_types(out.dtype, torch.float32))


def concatenated_logits(hidden, multi_weight, mono_features, mono_weight, multi_bias=None, mono_bias=None) -> Tensor:
    """``(N, V_multi + V_mono)``: the base head's logits, then the monolingual head's."""
    multi = block_logits(hidden, multi_weight, multi_bias)
    mono = block_logits(mono_features, mono_weight, mono_bias)
    return torch.cat([multi, mono.to(multi.dtype)], dim=1)


def head_topk(hidden, multi_weight, mono_features, mono_weight, k: int, temperature: float = 1.0,
              multi_bias=None, mono_bias=None) -> Tuple[Tensor, Tensor, Tensor]:
    """``(probs (N, k) f32, ids (N, k) i64, lse (N,) f32)``: the k largest of ``softmax(z / T)``,
    descending, equal values lowest id first; ``lse = logsumexp(z / T)``. Computed in float64."""
    z = concatenated_logits(hidden, multi_weight, mono_features, mono_weight, multi_bias, mono_bias)
    z = z.detach().double() / temperature
    lse = torch.logsumexp(z, dim=1)
    values, ids = torch.sort(z, dim=1, descending=True, stable=True)
    probs = torch.exp(values[:, :k] - lse.unsqueeze(1))
    return probs.float(), ids[:, :k], lse.float()


def cross_entropy(hidden, multi_weight, mono_features, mono_weight, targets, multi_bias=None, mono_bias=None,
                  ignore_index: int = -100, reduction: str = "mean", num_items_in_batch=None) -> Tensor:
    """The head's loss: per valid row ``lse(z) − z[target]``; ``mean`` over valid rows (or over
    ``num_items_in_batch``; a denominator of 0 gives 0), ``sum``, or ``none`` ``(N,)`` with 0 on
    ignored rows. ``hidden``, ``multi_weight`` and ``multi_bias`` are constants (detached): gradients
    reach only ``mono_features``, ``mono_weight`` and ``mono_bias``."""
    z = concatenated_logits(hidden.detach(), multi_weight.detach(), mono_features, mono_weight,
                            None if multi_bias is None else multi_bias.detach(), mono_bias)
    valid = targets != ignore_index
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    rows = torch.logsumexp(z, dim=1) - z.gather(1, safe.unsqueeze(1)).squeeze(1)
    rows = torch.where(valid, rows, torch.zeros_like(rows))
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    denominator = valid.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch)
    denominator = denominator.to(device=total.device, dtype=total.dtype)
    return torch.where(denominator > 0, total / denominator.clamp_min(1e-30), torch.zeros_like(total))


def ce_rows(logits: Tensor, targets: Tensor, grad_scale: Tensor, ignore_index: int, compute_grad: bool) -> Tensor:
    """The ``mumo_head`` ``ce_rows`` row kernel's definition, in float64.

    logits ``(r, V)`` float32, targets ``(r,)`` int64 (``ignore_index`` or in ``[0, V)``), grad_scale
    ``(r,)`` float32. Returns loss ``(r,)`` float32: ``lse − logits[target]`` (0 on ignored rows, NaN on
    a row that is ``-inf`` everywhere). With ``compute_grad`` the logits are overwritten with
    ``(softmax − onehot(target)) · grad_scale`` (0 on ignored rows)."""
    valid = targets != ignore_index
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    with torch.no_grad():
        x = logits.double()
        lse = torch.logsumexp(x, dim=1)
        loss = torch.where(valid, lse - x.gather(1, safe.unsqueeze(1)).squeeze(1), torch.zeros_like(lse))
        if compute_grad:
            grad = torch.exp(x - lse.unsqueeze(1))
            grad.scatter_add_(1, safe.unsqueeze(1), -torch.ones_like(lse).unsqueeze(1))
            grad = torch.where(valid.unsqueeze(1), grad * grad_scale.double().unsqueeze(1), torch.zeros_like(grad))
            logits.copy_(grad)
    return loss.float()
