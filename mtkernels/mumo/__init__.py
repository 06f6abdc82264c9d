"""MuMo: a monolingual-vocabulary head beside a base LLM, for faster generation in languages the
base tokenizer splits finely (Japanese, Korean).

    vocab = MonoVocab.from_words(words, base_tokenizer)            # words of two or more base tokens
    head = MuMoHead(base_model, vocab)                               # W_mono rows: means of base rows
    targets = vocab.training_targets(input_ids, num_base_tokens=V)   # forward maximum matching
    train_head(base_model, head, tokenizer, texts, steps=1500, batch_size=16)
    out = MuMoGenerator(base_model, head, tokenizer, k=10).generate(input_ids, max_new_tokens=64)
"""

import importlib

from .head import MuMoHead
from .morphemes import morphemes
from .scripts import JAPANESE, KOREAN, PRESETS
from .segment import Unit
from .vocab import MonoVocab

# Generation and training pull in mtkernels.generation: imported on first access, so that the
# `mtkernels` command (which defines `mtkernels mumo`) starts without them.
_LAZY = {"GenerationStats": "generator", "MuMoGenerator": "generator", "TrainResult": "train", "train_head": "train"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["JAPANESE", "KOREAN", "PRESETS", "GenerationStats", "MonoVocab", "MuMoGenerator", "MuMoHead",
           "TrainResult", "Unit", "morphemes", "train_head"]
