"""Translation prompts and left padding.

The default prompt is Llama-3's translation prompt: a system message
``"Translate the following sentence from {src} to {tgt}."`` and a user message
``"{src}:{text}\\n{tgt}:"``, through the tokenizer's chat template with
``add_generation_prompt=True``; a tokenizer without a chat template gets the plain text
``"{system}\\n{user}"`` (with the tokenizer's usual special tokens, e.g. BOS).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from .languages import language_name

Tensor = torch.Tensor
SYSTEM_PROMPT = "Translate the following sentence from {src} to {tgt}."
USER_PROMPT = "{src}:{text}\n{tgt}:"


def translation_messages(text: str, src_lang: str, tgt_lang: str) -> List[Dict[str, str]]:
    """The chat messages of one sentence; languages as codes or names."""
    src, tgt = language_name(src_lang), language_name(tgt_lang)
    return [{"role": "system", "content": SYSTEM_PROMPT.format(src=src, tgt=tgt)},
            {"role": "user", "content": USER_PROMPT.format(src=src, tgt=tgt, text=text)}]


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_ids(tokenizer, messages: List[Dict[str, str]]) -> List[int]:
    """Token ids of a prompt: the chat template with the generation prompt, or, without a
    template, ``"{system}\\n{user}"`` encoded with the tokenizer's special tokens."""
    if has_chat_template(tokenizer):
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        ids = out["input_ids"] if hasattr(out, "keys") else out
    else:
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        user = "\n".join(m["content"] for m in messages if m["role"] != "system")
        ids = tokenizer(f"{system}\n{user}" if system else user, add_special_tokens=True)["input_ids"]
    if isinstance(ids, Tensor):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):  # a batch of one
        ids = ids[0]
    return [int(i) for i in ids]


def translation_prompts(tokenizer, texts: Sequence[str], src_lang: str, tgt_lang: str) -> List[List[int]]:
    """One prompt (a list of ids) per text."""
    return [prompt_ids(tokenizer, translation_messages(t, src_lang, tgt_lang)) for t in texts]


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> Tuple[Tensor, Tensor]:
    """``(input_ids (B, L), attention_mask (B, L))`` int64, each row right-aligned (left padding),
    L the longest sequence."""
    if not sequences:
        raise ValueError("left_pad: no sequences")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.int64)
    mask = torch.zeros((len(sequences), width), dtype=torch.int64)
    for row, seq in enumerate(sequences):
        if len(seq) == 0:
            raise ValueError(f"left_pad: sequence {row} is empty")
        ids[row, width - len(seq):] = torch.as_tensor(list(seq), dtype=torch.int64)
        mask[row, width - len(seq):] = 1
    return ids, mask
