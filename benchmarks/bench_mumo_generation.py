"""MuMo generation on the synthetic Japanese corpus of ``mtkernels.bench.mumo_generation``, CPU:
one verification step as a forward over the candidates' trie on the KV cache against K separate
forwards from scratch, and whole ``generate`` calls of ``MuMoGenerator`` against plain greedy
decoding (``model.generate``) of the same base model, batch 1 and 8, 32 new tokens.

``extra_info`` holds new base tokens/s, morphemes/s (when fugashi + unidic-lite are installed),
tokens per step and the ratio to the plain run of the same batch size. The corpus is synthetic:
the ratio measures the mechanism, not translation quality.

    pytest benchmarks/ --benchmark-only -k mumo_generation      # about a minute on 2 cores
"""

import functools

import pytest
import torch

from mtkernels.bench import mumo_generation as mg
from mtkernels.bench.measure import peak_memory_mb

CONFIG = mg.DEFAULT
_TOKENS_PER_S = {}


@functools.lru_cache(maxsize=None)
def setup():
    torch.manual_seed(0)
    return mg.build(CONFIG)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is fastest and steadiest
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method", ["trie_forward", "separate_forwards"])
def test_mumo_generation_trie_step(benchmark, method):
    s = setup()
    gen, ids, mask, cache, cands, trie = mg.trie_inputs(s, 1, CONFIG.k)
    fns = mg.trie_step_functions(s, gen, ids, mask, cache, cands, trie)
    benchmark.group = "mumo trie step"
    benchmark.pedantic(fns[method], rounds=5, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update({"nodes": int(trie.num_nodes.max()), "candidate_tokens": int(trie.lengths.sum()),
                                 "peak_mb": peak_memory_mb(fns[method], "cpu")})


@pytest.mark.parametrize("batch", CONFIG.batch_sizes, ids=[f"B{b}" for b in CONFIG.batch_sizes])
@pytest.mark.parametrize("method", ["plain_greedy", "mumo_generator"])
def test_mumo_generation(benchmark, method, batch):
    s = setup()
    ids, mask = mg.prompts(s, batch)
    gen = mg.MuMoGenerator(s.model, s.head, s.tokenizer, k=CONFIG.k) if method == "mumo_generator" else None
    if gen is None:
        fn = functools.partial(mg.plain_greedy, s, ids, mask, CONFIG.new_tokens)
    else:
        fn = functools.partial(gen.generate, ids, mask, max_new_tokens=CONFIG.new_tokens)
    with torch.no_grad():
        benchmark.group = f"mumo generation B{batch}"
        out = benchmark.pedantic(fn, rounds=CONFIG.repeats, warmup_rounds=1, iterations=1)
    P = ids.shape[1]
    seconds = benchmark.stats.stats.median
    n_tokens = mg._new_tokens(out, P, s.tokenizer.eos_token_id)
    morph = mg._morphemes(mg._new_text(s, out, P))
    info = {"new_tokens": n_tokens, "tokens_per_s": n_tokens / seconds,
            "morphemes_per_s": None if morph is None else morph / seconds,
            "tokens_per_step": gen.last_stats.tokens_per_step if gen else 1.0}
    _TOKENS_PER_S[(method, batch)] = info["tokens_per_s"]
    plain = _TOKENS_PER_S.get(("plain_greedy", batch))
    if method == "mumo_generator" and plain:
        info["speedup_vs_plain_greedy"] = info["tokens_per_s"] / plain
    benchmark.extra_info.update(info)
