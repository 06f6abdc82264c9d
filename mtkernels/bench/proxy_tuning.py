"""Collaborative decoding the way it is usually written with Hugging Face models (proxy-tuning,
Liu et al. 2024; Collab-MT): one forward per model per step, each with its own KV cache
(``DynamicCache``), the weighted sum of the last-position logits in eager PyTorch, Hugging Face's
``TemperatureLogitsWarper`` → ``TopKLogitsWarper`` → ``TopPLogitsWarper`` → ``MinPLogitsWarper``
(sort-based), softmax and ``torch.multinomial``.

    out = proxy_tuning_generate([large, expert, anti_expert], [1.0, 1.0, -1.0], input_ids,
                                attention_mask=mask, max_new_tokens=64, top_p=0.9,
                                generator=torch.Generator().manual_seed(0))   # (B, T + new)

It is the baseline the generation benchmark (``mtkernels.bench.generation``) times
``mtkernels.generation.CollabGenerator`` against, and a plain reference for users. Prompts may be
left-padded (``attention_mask`` 0 on the left); rows that have produced ``eos_token_id`` are filled
with ``pad_token_id`` afterwards, and the loop stops early once every row has.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, List, Optional, Sequence

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import (MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

Tensor = torch.Tensor
# (per-model last-position logits [(B, V_m)], weights) -> next tokens (B,) int64
Combine = Callable[[List[Tensor], Sequence[float]], Tensor]


def warpers(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> List[Callable]:
    """Hugging Face's logits warpers in ``generate``'s order; a parameter at its "off" value adds none."""
    out: List[Callable] = []
    if temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        out.append(TopKLogitsWarper(top_k=top_k))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=top_p))
    if min_p > 0.0:
        out.append(MinPLogitsWarper(min_p=min_p))
    return out


def combined_logits(logits: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """``Σ_m w_m · x_m`` as ``(B, V)`` float32 over the vocabulary all models share (``V = min_m V_m``)."""
    vocab = min(x.shape[-1] for x in logits)
    z = logits[0][:, :vocab].float() * weights[0]
    for x, w in zip(logits[1:], weights[1:]):
        z = z + x[:, :vocab].float() * w
    return z


def hf_combine(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
               greedy: bool = False, generator: Optional[torch.Generator] = None) -> Combine:
    """The per-step combination: weighted sum, then argmax (``greedy``) or the warpers, softmax and
    ``torch.multinomial`` (drawing from ``generator``)."""
    chain = warpers(temperature, top_k, top_p, min_p)

    def combine(logits: List[Tensor], weights: Sequence[float]) -> Tensor:
        z = combined_logits(logits, weights)
        if greedy:
            return z.argmax(dim=-1)
        no_ids = torch.empty((z.shape[0], 0), dtype=torch.long, device=z.device)  # unused by these warpers
        for warper in chain:
            z = warper(no_ids, z)
        probs = torch.softmax(z, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
    return combine


def argmax_combine(logits: List[Tensor], weights: Sequence[float]) -> Tensor:
    """The cheapest stand-in for a combination: the large model's argmax (for timing the forwards alone)."""
    return logits[0].argmax(dim=-1)


@functools.lru_cache(maxsize=None)
def _forward_params(cls) -> frozenset:
    return frozenset(inspect.signature(cls.forward).parameters)


def _step_logits(model, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache) -> Tensor:
    """One forward with the model's cache; the last position's logits ``(B, V_m)``."""
    params = _forward_params(type(model))
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
              "use_cache": True}
    kwargs["cache" if "cache" in params else "past_key_values"] = cache  # renamed in transformers 5.x
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1  # no (B, T, V) logits for the prompt
    return model(**kwargs).logits[:, -1, :]


@torch.inference_mode()
def proxy_tuning_generate(models: Sequence[torch.nn.Module], weights: Sequence[float], input_ids: Tensor,
                          attention_mask: Optional[Tensor] = None, *, max_new_tokens: int,
                          temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                          greedy: bool = False, generator: Optional[torch.Generator] = None,
                          eos_token_id: Optional[int] = None, pad_token_id: Optional[int] = None,
                          combine: Optional[Combine] = None) -> Tensor:
    """``(B, T + n)`` int64: the prompt followed by ``n <= max_new_tokens`` new tokens per row.

    ``models``: M causal LMs sharing a tokenizer (vocabularies may differ in padding), the large
    one first; ``weights``: one per model. ``combine`` replaces the per-step combination (default
    ``hf_combine`` of the sampling arguments)."""
    if len(models) != len(weights) or not models:
        raise ValueError(f"need one weight per model, got {len(weights)} weights for {len(models)} models")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    combine = combine or hf_combine(temperature, top_k, top_p, min_p, greedy, generator)
    batch = input_ids.shape[0]
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.dtype)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    caches = [DynamicCache(config=m.config) for m in models]
    logits = [_step_logits(m, input_ids, mask, position_ids, c) for m, c in zip(models, caches)]
    tokens = [input_ids]
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    pad = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)
    for step in range(max_new_tokens):
        nxt = combine(logits, weights).to(input_ids.dtype)
        if eos_token_id is not None:
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            finished |= nxt == eos_token_id
        tokens.append(nxt[:, None])
        if step == max_new_tokens - 1 or (eos_token_id is not None and bool(finished.all())):
            break
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        position_ids = position_ids[:, -1:] + 1
        logits = [_step_logits(m, nxt[:, None], mask, position_ids, c) for m, c in zip(models, caches)]
    return torch.cat(tokens, dim=1)


__all__ = ["argmax_combine", "combined_logits", "hf_combine", "proxy_tuning_generate", "warpers"]
