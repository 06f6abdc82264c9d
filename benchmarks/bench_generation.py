"""End-to-end generation: ``CollabGenerator`` against the proxy-tuning loop of Hugging Face
forwards and warpers (``mtkernels.bench.proxy_tuning``), on the CPU, as ``mtkernels.bench.generation``
defines them: random Llama models with V = 128256 (large: hidden 1024, 8 layers; two small:
hidden 512, 4 layers), weights (1, 1, -1), top-p 0.9, 16 new tokens, batch 1 and 16.

Each benchmark is one whole ``generate`` call (prefill included). ``extra_info`` holds the
end-to-end and decode-step new tokens/s, the decode step's split between model forwards and the
rest (combination, sampling, bookkeeping; from hooks on the models and single-token runs), and
the ratio to the proxy-tuning loop at the same batch size when that ran first in the session.

    pytest benchmarks/ --benchmark-only -k generation                 # about 3 min on 2 idle cores
    pytest benchmarks/ --benchmark-only -k "generation and B1 and not floor"
"""

import pytest
import torch

from mtkernels.bench import generation as gen

CONFIG = gen.BENCH
_TOKENS_PER_S = {}  # (method, B) -> end-to-end and decode tokens/s, for the ratios


@pytest.mark.parametrize("batch", CONFIG.batches, ids=[f"B{b}" for b in CONFIG.batches])
@pytest.mark.parametrize("method", CONFIG.methods)
def test_generation(benchmark, method, batch):
    if method == gen.COLLAB and gen.collab_generator_missing():
        pytest.skip(gen.collab_generator_missing())
    models = gen.models_for(CONFIG)
    ids = gen.prompts(CONFIG, batch)
    fn = gen.make_method(method, models, CONFIG)
    first = gen.make_method(method, models, CONFIG, new_tokens=1)
    full_runs, first_runs = [], []

    def call():
        full_runs.append(gen.timed_run(fn, ids, models, CONFIG.device))

    with torch.inference_mode():
        for _ in range(CONFIG.warmup):
            first(ids)
        first_runs += [gen.timed_run(first, ids, models, CONFIG.device) for _ in range(CONFIG.repeats)]
        benchmark.group = f"generation B{batch} V{CONFIG.vocab} {CONFIG.device}"
        benchmark.pedantic(call, rounds=CONFIG.repeats, warmup_rounds=0, iterations=1)
    record = gen.make_record(method, batch, CONFIG, full_runs, first_runs)
    _TOKENS_PER_S[(method, batch)] = (record["tokens_per_s"], record["decode_tokens_per_s"])
    base = _TOKENS_PER_S.get((gen.PROXY, batch))
    if base is not None:
        record["speedup_vs_proxy_tuning"] = record["tokens_per_s"] / base[0]
        if record["decode_tokens_per_s"] and base[1]:
            record["decode_speedup_vs_proxy_tuning"] = record["decode_tokens_per_s"] / base[1]
    benchmark.extra_info.update({k: v for k, v in record.items() if k != "runs_s"})
