"""What the fused ops are measured against, written the way a user would write them in PyTorch.

(a) ``eager_softmax_topk``: weighted sum → /τ → ``torch.softmax`` → ``torch.topk``.
(b) ``hf_sample``: the proxy-tuning-style chain: weighted sum → /τ → Hugging Face's
    ``TopKLogitsWarper`` → ``TopPLogitsWarper`` → softmax → ``torch.multinomial``.
(c) ``compile_eager_softmax_topk``: ``torch.compile`` of (a).
``read_once``: one ``amax`` over each input, the least any op that reads all M inputs can cost.
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

Tensor = torch.Tensor


def eager_combined_logits(logits: Sequence[Tensor], weights: Sequence[float], temperature: float) -> Tensor:
    """``z = Σ_m w_m · x_m / τ`` as ``(B, V)`` float32, from M tensors ``(B, V)`` of any float dtype."""
    z = logits[0].float() * weights[0]
    for x, w in zip(logits[1:], weights[1:]):
        z = z + x.float() * w
    return z / temperature


def eager_softmax_topk(logits: Sequence[Tensor], weights: Sequence[float], temperature: float,
                       k: int) -> Tuple[Tensor, Tensor]:
    """Baseline (a): ``(probs (B, k) fp32, ids (B, k) int64)``, the k most probable tokens."""
    probs = torch.softmax(eager_combined_logits(logits, weights, temperature), dim=-1)
    return torch.topk(probs, k, dim=-1)


def compile_eager_softmax_topk() -> Callable:
    """Baseline (c): a fresh ``torch.compile`` of (a), specialised to the shapes it first sees.

    Dynamo keeps a bounded number of graphs per function, so its caches are reset first: each
    benchmark shape gets its own static graph (what a decoder with a fixed vocabulary would use)
    instead of silently falling back to eager after a few shapes. Call the result once, outside
    any timed region, to compile it.
    """
    torch.compiler.reset()
    return torch.compile(eager_softmax_topk, dynamic=False)


def hf_warpers(top_k: int, top_p: float) -> List[Callable]:
    """Hugging Face's warpers in generation order (top-k, then top-p); 0 / 1.0 leave one out."""
    warpers: List[Callable] = []
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k=top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p))
    return warpers


def hf_filtered_logits(z: Tensor, warpers: Sequence[Callable]) -> Tensor:
    """``z (B, V)`` with the tokens the warpers remove set to ``-inf``."""
    no_input_ids = torch.empty((z.shape[0], 0), dtype=torch.long, device=z.device)  # unused by these warpers
    for warper in warpers:
        z = warper(no_input_ids, z)
    return z


def hf_sample(logits: Sequence[Tensor], weights: Sequence[float], temperature: float,
              warpers: Sequence[Callable]) -> Tensor:
    """Baseline (b): one token per row, ``(B,)`` int64, drawn by ``torch.multinomial``."""
    z = hf_filtered_logits(eager_combined_logits(logits, weights, temperature), warpers)
    return torch.multinomial(torch.softmax(z, dim=-1), num_samples=1).squeeze(1)


def read_once(logits: Sequence[Tensor]) -> List[Tensor]:
    """The read-once floor: one ``amax`` over each input ``(B, V)`` → M tensors.

    ``amax`` is the cheapest full read PyTorch offers (no accumulation dtype, vectorised), so its
    time is the memory-bound limit for anything that must read every input once. On a GPU the
    whole-tensor reduction is used (it spreads over all SMs even when B is small), on the CPU the
    row-wise one (measured faster there).
    """
    if logits[0].device.type == "cuda":
        return [x.amax() for x in logits]
    return [x.amax(dim=-1) for x in logits]
