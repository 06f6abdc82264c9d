"""End-of-sequence and padding ids of a decoder, from its tokenizer(s) and model(s), one rule for
every generator: EOS is every id the tokenizers and the models' generation configs (else configs)
name; padding is the tokenizer's pad id, else the model's, else the tokenizer's EOS, else the
first EOS, else 0 (as Hugging Face pads with EOS when a tokenizer has no pad token)."""

from __future__ import annotations

import numbers
from typing import Iterable, List

import torch


def token_ids(value) -> List[int]:
    """An id, a list of ids, a tensor of ids or None, as a list of ints."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, numbers.Integral):
        return [int(value)]
    return [int(v) for v in value]


def generation_attr(model, name: str):
    """``model.generation_config.<name>``, else ``model.config.<name>``, else None."""
    config = getattr(model, "generation_config", None)
    value = getattr(config, name, None) if config is not None else None
    return value if value is not None else getattr(getattr(model, "config", None), name, None)


def eos_token_ids(models: Iterable, tokenizers: Iterable) -> List[int]:
    """Every EOS id the tokenizers (each once) and the models name, first seen first."""
    eos: List[int] = []
    for tok in {id(t): t for t in tokenizers if t is not None}.values():
        eos += token_ids(getattr(tok, "eos_token_id", None))
    for model in models:
        eos += token_ids(generation_attr(model, "eos_token_id"))
    return list(dict.fromkeys(eos))


def pad_token_id(tokenizer, model, eos: List[int]) -> int:
    for value in (getattr(tokenizer, "pad_token_id", None), generation_attr(model, "pad_token_id"),
                  getattr(tokenizer, "eos_token_id", None)):
        ids = token_ids(value)
        if ids:
            return ids[0]
    return eos[0] if eos else 0
