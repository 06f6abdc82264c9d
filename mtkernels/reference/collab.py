"""Collaborative decoding, docs/collab.md, in plain PyTorch: the executable form of the spec.

Everything here materialises the combined logits ``z (B, V)`` and sorts; it is written to be
read, not to be fast. Arguments are already normalised by ``mtkernels.ops.collab``:

    logits        list of M tensors (B, V_m), any of fp32 / bf16 / fp16, V_m >= vocab_size
    weights       (B, M) float32
    temperature   (B,) float32, > 0
    top_k         (B,) int64, 0 = off          top_p (B,) float32 in (0, 1]
    min_p         (B,) float32 in [0, 1)       keys  (B,) int64, one 32-bit Gumbel key per row
"""

from __future__ import annotations

from typing import List, Tuple

import torch

from ..gumbel import gumbel_noise

Tensor = torch.Tensor


def combined_logits(logits: List[Tensor], weights: Tensor, temperature: Tensor, vocab_size: int) -> Tensor:
    """``z = (Σ_m w_m · x_m[:, :V]) / τ`` in float64, ``(B, V)``.

    A token that is ``-inf`` in any model is masked (``z = -inf``), whatever the sign of that
    model's weight: a negative weight must not turn a banned token into a certain one.
    """
    xs = [x[:, :vocab_size].double() for x in logits]
    masked = torch.zeros_like(xs[0], dtype=torch.bool)
    for x in xs:
        masked |= x == float("-inf")
    z = sum(w.double().unsqueeze(1) * x.masked_fill(masked, 0.0) for w, x in zip(weights.unbind(1), xs))
    z = z / temperature.double().unsqueeze(1)
    return z.masked_fill(masked, float("-inf"))


def sort_descending(z: Tensor) -> Tuple[Tensor, Tensor]:
    """Sort each row by value, descending; equal values keep ascending token ids."""
    return torch.sort(z, dim=-1, descending=True, stable=True)


def softmax_topk(logits, weights, temperature, vocab_size: int, k: int) -> Tuple[Tensor, Tensor, Tensor]:
    """``(probs (B, k) fp32, ids (B, k) int64, lse (B,) fp32)`` of ``softmax(z)``'s k best tokens."""
    z = combined_logits(logits, weights, temperature, vocab_size)
    lse = torch.logsumexp(z, dim=-1)
    values, ids = sort_descending(z)
    probs = torch.exp(values[:, :k] - lse.unsqueeze(1))
    return probs.float(), ids[:, :k], lse.float()


def filter_mask(z: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor) -> Tensor:
    """Surviving tokens ``(B, V)`` bool after top-k, then top-p, then min-p (Hugging Face order).

    top-k keeps exactly k tokens (equal values: lowest ids first); top-p keeps the smallest
    prefix, by descending probability over what top-k kept, whose mass reaches top_p; min-p keeps
    ``prob >= min_p * max prob`` over what is left. The arg-max token always survives.
    """
    values, order = sort_descending(z)
    rank = torch.arange(z.shape[1], device=z.device).unsqueeze(0)
    keep_sorted = (top_k.unsqueeze(1) == 0) | (rank < top_k.unsqueeze(1))
    keep_sorted &= values > float("-inf")
    keep_sorted[:, 0] = True

    probs = torch.softmax(values.masked_fill(~keep_sorted, float("-inf")), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    keep_sorted &= (mass_before < top_p.double().unsqueeze(1)) | (top_p.unsqueeze(1) >= 1.0)

    probs = torch.softmax(values.masked_fill(~keep_sorted, float("-inf")), dim=-1)
    keep_sorted &= probs >= min_p.double().unsqueeze(1) * probs[:, :1]
    keep_sorted[:, 0] = True

    keep = torch.zeros_like(keep_sorted)
    return keep.scatter(1, order, keep_sorted)


def sample(logits, weights, temperature, vocab_size: int, top_k, top_p, min_p, greedy: bool, keys) -> Tuple[Tensor, Tensor]:
    """Token ids ``(B,)`` int64 and their log-probabilities ``(B,)`` fp32 under the filtered,
    renormalised distribution. Sampling is ``argmax_j (z_j + G(key_b, j))`` over the survivors;
    greedy is ``argmax_j z_j`` (lowest id on ties)."""
    z = combined_logits(logits, weights, temperature, vocab_size)
    keep = filter_mask(z, top_k, top_p, min_p)
    kept = z.masked_fill(~keep, float("-inf"))
    if greedy:
        ids = sort_descending(z)[1][:, 0]
    else:
        token_ids = torch.arange(z.shape[1], device=z.device).expand_as(z)
        perturbed = kept + gumbel_noise(keys, token_ids).double()
        ids = sort_descending(perturbed)[1][:, 0]
    logprobs = torch.gather(kept, 1, ids.unsqueeze(1)).squeeze(1) - torch.logsumexp(kept, dim=-1)
    return ids, logprobs.float()
