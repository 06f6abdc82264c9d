"""Checking that the M models share one vocabulary, before any forward pass.

The collab ops add the models' logits token id by token id, so every id must mean the same token
in every model. Models of one tokenizer family may differ in (padded) vocabulary size: the ops then
use the shared prefix. Models whose tokenizers differ (their vocabularies, or their BOS / EOS / UNK
ids) are refused.

The tokenizers compared are the ones given (one, or one per model) and, for models loaded from a
local directory (``model.name_or_path``) that holds a tokenizer, the one saved there.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

SPECIAL_IDS = ("bos_token_id", "eos_token_id", "unk_token_id")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def model_label(m: int) -> str:
    return "the large model (models[0])" if m == 0 else f"small model {m - 1} (models[{m}])"


def model_directory(model) -> Optional[str]:
    """The local directory a model was loaded from, when it holds a tokenizer."""
    path = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not path or not isinstance(path, str) or not os.path.isdir(path):
        return None
    return path if any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES) else None


def load_directory_tokenizer(path: str, cache: Dict[str, object]):
    if path not in cache:
        from transformers import AutoTokenizer

        cache[path] = AutoTokenizer.from_pretrained(path)
    return cache[path]


def _describe(tokenizer, source: str) -> str:
    return f"{type(tokenizer).__name__} from {source}"


def vocabulary_difference(a, b) -> Optional[str]:
    """None when two tokenizers map ids to the same tokens and agree on the special ids, else
    what differs."""
    if a is b:
        return None
    for name in SPECIAL_IDS:
        x, y = getattr(a, name, None), getattr(b, name, None)
        if x != y:
            return f"{name} {x!r} vs {y!r}"
    va, vb = a.get_vocab(), b.get_vocab()
    if va == vb:
        return None
    ia = {i: t for t, i in va.items()}
    ib = {i: t for t, i in vb.items()}
    for i in sorted(set(ia) | set(ib)):
        if ia.get(i) != ib.get(i):
            return f"vocabularies of {len(va)} and {len(vb)} tokens; id {i} is {ia.get(i)!r} vs {ib.get(i)!r}"
    return f"vocabularies of {len(va)} and {len(vb)} tokens"


def resolve_tokenizers(models: Sequence, tokenizer=None) -> List[Optional[object]]:
    """One tokenizer per model (the prompts' and stop strings' tokenizer), after checking that
    every tokenizer in play has the same vocabulary and special ids.

    Args:
        models: the M models, large first.
        tokenizer: None, one tokenizer (every model), or a list of M (each model's own chat
            template; None entries fall back to the model's directory, then the first given).

    Raises:
        ValueError: naming the two models and what differs.
    """
    count = len(models)
    if isinstance(tokenizer, (list, tuple)):
        if len(tokenizer) != count:
            raise ValueError(f"tokenizer: expected one tokenizer or a list of {count} (one per model), got a list of "
                             f"{len(tokenizer)}")
        given = list(tokenizer)
    else:
        given = [tokenizer] * count
    loaded: Dict[str, object] = {}
    seen = []  # (model index, tokenizer, description)
    for m, model in enumerate(models):
        if given[m] is not None:
            seen.append((m, given[m], _describe(given[m], f"the tokenizer argument for {model_label(m)}")))
        path = model_directory(model)
        if path is not None:
            tok = load_directory_tokenizer(path, loaded)
            seen.append((m, tok, _describe(tok, f"{path} ({model_label(m)})")))
            if given[m] is None:
                given[m] = tok
    if seen:
        ref_m, ref, ref_desc = seen[0]
        for m, tok, desc in seen[1:]:
            diff = vocabulary_difference(ref, tok)
            if diff is not None:
                raise ValueError(
                    f"tokenizers differ: {ref_desc} and {desc} ({diff}). Collaborative decoding adds the models' "
                    f"logits token id by token id, so every model must use the same tokenizer (models of one "
                    f"family whose vocabulary sizes differ only by padding are fine).")
    fallback = next((t for t in given if t is not None), None)
    return [t if t is not None else fallback for t in given]
