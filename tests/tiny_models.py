"""Tiny random-initialised Hugging Face causal LMs and a byte-level BPE tokenizer trained on the fly,
saved to and loaded back from a directory, as a user's local model directories would be.

    dirs = save_collab_models(tmp_path)        # {"large": ..., "small_src": ..., "small_tgt": ...}
    model = transformers.AutoModelForCausalLM.from_pretrained(dirs["large"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Optional

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Llama-3's chat format, reduced to what a translation prompt uses.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CORPUS = [
    "Translate the following sentence from Japanese to English.",
    "Translate the following sentence from German to English.",
    "The weather is nice today. I went to the station by train.",
    "Das Wetter ist heute schön. Ich bin mit dem Zug zum Bahnhof gefahren.",
    "今日は晴れです。電車で駅に行きました。私は日本語を勉強しています。",
    "猫が好きです。東京は大きな都市です。ありがとうございます。",
    "Japanese: English: German: system user assistant",
] * 4


def train_tokenizer(texts: Iterable[str] = CORPUS, vocab_size: int = 600) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Llama-3's special tokens and chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                                eos_token="<|eot_id|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(vocab_size: int, hidden: int = 32, layers: int = 2, seed: int = 0, eos_token_id: Optional[int] = None,
               bos_token_id: Optional[int] = None) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512, eos_token_id=eos_token_id,
                                      bos_token_id=bos_token_id, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # larger logits than the default init: distributions far from uniform
        model.lm_head.weight.mul_(20.0)
    return model.eval()


def save_collab_models(root: Path, vocab_extra: Dict[str, int] = None, tokenizer=None) -> Dict[str, str]:
    """A large model (hidden 48, 3 layers) and two small ones (hidden 32, 2 layers), each saved with
    the same tokenizer. ``vocab_extra[name]`` pads that model's vocabulary by that many rows (as
    models of one tokenizer family often differ in padded vocabulary size)."""
    tokenizer = tokenizer or train_tokenizer()
    vocab_extra = vocab_extra or {}
    sizes = {"large": (48, 3, 1), "small_src": (32, 2, 2), "small_tgt": (32, 2, 3)}
    dirs = {}
    for name, (hidden, layers, seed) in sizes.items():
        model = tiny_llama(len(tokenizer) + vocab_extra.get(name, 0), hidden, layers, seed,
                           eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
        path = Path(root) / name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[name] = str(path)
    return dirs
