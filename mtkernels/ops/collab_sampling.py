"""Sampling on top of a backend's collab kernels, without materialising the vocabulary.

Kernels (each one pass over the M inputs; ``sw = weights / temperature``, ``(B, M)``):

    topk(logits, sw, V, k)                       -> values (B, k) f32 desc, ids (B, k) i64, lse (B,) f32
    threshold_mass(logits, sw, V, theta, lse)    -> (B, T) f32: Σ_{z_j >= theta_bt} exp(z_j - lse_b)
    gumbel_argmax(logits, sw, V, theta, keys)    -> ids (B,) i64, z (B,) f32: argmax_{z_j >= theta_b} z_j + G(key_b, j)

Two paths:
* top-k on (the usual case): one ``topk`` pass gives k candidates; top-p, min-p and the draw
  happen on those (B, k) values with the spec's own filter.
* top-k off: survivors are ``{z >= theta}``. min-p is a logit threshold (``z_max + log min_p``);
  top-p's threshold is found exactly by a 16-way search over the float's order-preserving 32-bit
  key, one ``threshold_mass`` pass per step: at most 8 passes. On CPU tensors the first pass keeps
  1024 candidates, which settle top-p without a search whenever their mass reaches top_p (peaked
  LLM distributions), and the search stops as soon as every row has converged. The draw is one ``gumbel_argmax`` pass, and
  log-probabilities one more ``threshold_mass`` pass.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from ..gumbel import gumbel_noise

Tensor = torch.Tensor
SEARCH_POINTS = 15  # thresholds per pass: each pass narrows the key interval 16-fold
MAX_SEARCH_PASSES = 8  # 16**8 == 2**32 keys
TOP_P_CANDIDATES = 1024  # first-pass width on CPU tensors


def float_to_key(x: Tensor) -> Tensor:
    """Order-preserving map of float32 to [0, 2**32) as int64 (-inf < ... < +inf)."""
    bits = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return torch.where(bits >= 0x80000000, bits ^ 0xFFFFFFFF, bits | 0x80000000)


def key_to_float(key: Tensor) -> Tensor:
    bits = torch.where(key >= 0x80000000, key & 0x7FFFFFFF, key ^ 0xFFFFFFFF)
    bits = torch.where(bits >= 0x80000000, bits - 2**32, bits)  # as signed int32
    return bits.to(torch.int32).view(torch.float32)


def sample_candidates(values: Tensor, ids: Tensor, top_k: Optional[Tensor], top_p: Optional[Tensor],
                      min_p: Optional[Tensor], greedy: bool, keys: Tensor) -> Tuple[Tensor, Tensor]:
    """Filter and draw among k candidates ``(B, k)``, sorted by descending value (equal values:
    lowest id first); returns (ids (B,), logprobs (B,)). Filters that are None are off.

    The spec's filters on a sorted list: top-k is a prefix; top-p keeps the prefix whose mass
    before each token is below top_p; min-p's ``prob >= min_p * max prob`` is the logit test
    ``z >= z_max + log(min_p)`` (renormalisation cancels). The first candidate always survives.
    """
    keep = values > float("-inf")
    if top_k is not None:
        keep &= torch.arange(values.shape[1], device=values.device) < top_k.unsqueeze(1)
    if top_p is not None:
        probs = torch.softmax(values.masked_fill(~keep, float("-inf")), dim=1)
        keep &= ((torch.cumsum(probs, dim=1) - probs) < top_p.unsqueeze(1)) | (top_p.unsqueeze(1) >= 1.0)
    if min_p is not None:
        keep &= values >= values[:, :1] + torch.log(min_p).unsqueeze(1)
    keep[:, 0] = True
    kept = values.masked_fill(~keep, float("-inf"))
    if greedy:
        pick = torch.zeros_like(ids[:, :1])
    else:
        pick = torch.argmax(kept + gumbel_noise(keys, ids), dim=1, keepdim=True)
    token = ids.gather(1, pick).squeeze(1)
    logprob = kept.gather(1, pick).squeeze(1) - torch.logsumexp(kept, dim=1)
    return token, logprob


def top_p_bounds(values: Tensor, lse: Tensor, top_p: Tensor) -> Tuple[Tensor, Tensor]:
    """Key bounds ``(lo, hi)`` of top-p's threshold from the k best values ``(B, k)``.

    Where the candidates' mass reaches top_p the answer is among them (``hi == lo + 1``); else
    every token above the last candidate is a candidate, so ``mass(> values[:, -1]) < top_p``.
    """
    probs = torch.exp(values - lse.unsqueeze(1))
    n_kept = ((torch.cumsum(probs, dim=1) - probs) < top_p.unsqueeze(1)).sum(1, keepdim=True)
    found = probs.sum(1) >= top_p
    at_crossing = float_to_key(values.gather(1, (n_kept - 1).clamp_min(0)).squeeze(1))
    lo = torch.where(found, at_crossing, float_to_key(torch.full_like(lse, float("-inf"))))
    hi = torch.where(found, at_crossing, float_to_key(values[:, -1])) + 1
    return lo, hi


def top_p_threshold(mass: Callable[[Tensor], Tensor], lo: Tensor, hi: Tensor, top_p: Tensor) -> Tensor:
    """The largest ``theta`` with ``Σ_{z >= theta} p >= top_p``, exactly, as a ``(B,)`` float32.

    ``mass(thresholds (B, T)) -> (B, T)``. Invariant on the keys: ``mass(lo) >= top_p > mass(hi)``.
    """
    steps = torch.arange(1, SEARCH_POINTS + 1, device=lo.device, dtype=torch.int64)
    for _ in range(MAX_SEARCH_PASSES):
        if lo.device.type == "cpu" and bool((hi - lo <= 1).all()):
            break  # a free check on the CPU; on a GPU the fixed pass count avoids a sync
        points = lo.unsqueeze(1) + ((hi - lo).unsqueeze(1) * steps) // (SEARCH_POINTS + 1)
        reached = mass(key_to_float(points)) >= top_p.unsqueeze(1)
        lo = torch.maximum(lo, torch.where(reached, points, lo.unsqueeze(1)).amax(1))
        hi = torch.minimum(hi, torch.where(reached, hi.unsqueeze(1), points).amin(1))
        hi = torch.maximum(hi, lo + 1)  # float sums need not be exactly monotone
    return key_to_float(lo)


def sample_full_vocab(kernels, logits, sw, vocab_size: int, top_p: Optional[Tensor], min_p: Optional[Tensor],
                      greedy: bool, keys: Tensor, need_logprobs: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Top-k off: survivors ``{z >= theta}`` over the whole vocabulary (top_p/min_p None = off).

    Returns ``(ids (B,), logprobs (B,) or zeros when not asked for, lse (B,))``."""
    # On CPU tensors a wider first pass usually settles top-p without any search pass; on a
    # GPU the search runs a fixed number of passes anyway, so the cheapest first pass wins.
    width = min(vocab_size, TOP_P_CANDIDATES) if top_p is not None and sw.device.type == "cpu" else 1
    values, ids, lse = kernels["topk"](logits, sw, vocab_size, width)
    z_max, token, z_token = values[:, 0], ids[:, 0], values[:, 0]
    if greedy and not need_logprobs:
        return token, torch.zeros_like(lse), lse

    def mass(thresholds: Tensor) -> Tensor:
        return kernels["threshold_mass"](logits, sw, vocab_size, thresholds.contiguous(), lse)

    theta = torch.full_like(z_max, float("-inf"))
    if top_p is not None:
        theta = top_p_threshold(mass, *top_p_bounds(values, lse, top_p), top_p)
        theta = torch.where(top_p >= 1.0, float("-inf"), theta)  # rows with top-p off
    if min_p is not None:
        theta = torch.maximum(theta, z_max + torch.log(min_p))
    theta = torch.minimum(theta, z_max)  # the arg-max always survives
    if not greedy:
        token, z_token = kernels["gumbel_argmax"](logits, sw, vocab_size, theta, keys)
    if not need_logprobs:
        return token, torch.zeros_like(lse), lse
    kept_mass = mass(theta.unsqueeze(1)).squeeze(1)
    return token, z_token - lse - torch.log(kept_mass), lse
