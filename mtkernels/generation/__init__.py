"""Collaborative decoding of Hugging Face causal LMs with the fused collab ops.

    from mtkernels.generation import CollabGenerator
    gen = CollabGenerator(large, [small_src, small_tgt], weights=[1.0, 1.0, 1.0], tokenizer=tok)
    out = gen.generate(input_ids, attention_mask, max_new_tokens=64)                # greedy
    out = gen.generate(input_ids, max_new_tokens=64, temperature=0.7, top_p=0.9, seed=0)
    out = gen.generate(input_ids, max_new_tokens=64, num_beams=4, length_penalty=1.0)
    texts = gen.translate(["今日は晴れです。"], src_lang="ja", tgt_lang="en")

Modules: ``collab_generator`` (the class), ``model_set`` (M models, one KV cache each),
``sampling_loop`` (greedy / sampling), ``beam_search``, ``keys`` (sampling keys from (seed,
sentence, step)), ``prompts`` and ``languages`` (translation prompts), ``stopping`` (EOS, stop
strings), ``vocab_check`` (same tokenizer everywhere), ``row_params``.
"""

from .collab_generator import CollabGenerator
from .keys import step_keys
from .languages import language_name
from .model_set import ModelSet

__all__ = ["CollabGenerator", "ModelSet", "language_name", "step_keys"]
