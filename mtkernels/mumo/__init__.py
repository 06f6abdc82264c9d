"""MuMo: a monolingual-vocabulary head beside a base LLM, for faster generation in languages the
base tokenizer splits finely (Japanese, Korean).

    vocab = MonoVocab.from_words(words, base_tokenizer)            # words of two or more base tokens
    head = MuMoHead(base_model, vocab)                               # W_mono rows: means of base rows
    targets = vocab.training_targets(input_ids, num_base_tokens=V)   # forward maximum matching
"""

from .head import MuMoHead
from .morphemes import morphemes
from .scripts import JAPANESE, KOREAN, PRESETS
from .segment import Unit
from .vocab import MonoVocab

__all__ = ["JAPANESE", "KOREAN", "PRESETS", "MonoVocab", "MuMoHead", "Unit", "morphemes"]
