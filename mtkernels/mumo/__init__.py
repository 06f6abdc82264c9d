"""MuMo: a monolingual-vocabulary head beside a base LLM, for faster generation in languages the
base tokenizer splits finely (Japanese, Korean).

    vocab = MonoVocab.from_words(words, base_tokenizer)            # words of two or more base tokens
    head = MuMoHead(base_model, vocab)                               # W_mono rows: means of base rows
    targets = vocab.training_targets(input_ids, num_base_tokens=V)   # forward maximum matching
    train_head(base_model, head, tokenizer, texts, steps=1500, batch_size=16)
    out = MuMoGenerator(base_model, head, tokenizer, k=10).generate(input_ids, max_new_tokens=64)
"""

from .generator import GenerationStats, MuMoGenerator
from .head import MuMoHead
from .morphemes import morphemes
from .scripts import JAPANESE, KOREAN, PRESETS
from .segment import Unit
from .train import TrainResult, train_head
from .vocab import MonoVocab

__all__ = ["JAPANESE", "KOREAN", "PRESETS", "GenerationStats", "MonoVocab", "MuMoGenerator", "MuMoHead",
           "TrainResult", "Unit", "morphemes", "train_head"]
