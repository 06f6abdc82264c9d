"""The proxy-tuning loop (mtkernels.bench.proxy_tuning) against a naive loop, and the generation
benchmark's records (mtkernels.bench.generation), on tiny random models."""

import argparse
import dataclasses
import importlib.util
import json

import pytest
import torch

from mtkernels.bench import generation as gen
from mtkernels.bench.proxy_tuning import argmax_combine, combined_logits, proxy_tuning_generate

from .tiny_models import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = [1.0, 0.5, -0.5]
PROMPTS = [[5, 6, 7, 8, 9], [11, 12], [20, 21, 22]]


@pytest.fixture(scope="module")
def models():
    # the second small model's head is padded by 4 rows: only the shared 100 ids can be produced
    return [tiny_llama(100, 48, 3, 1), tiny_llama(100, 32, 2, 2), tiny_llama(104, 32, 2, 3)]




def _left_padded(prompts, pad=0):
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def _naive_greedy(models, prompt, steps):
    """One row, no padding, no cache: the whole sequence through every model at each step."""
    seq = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(steps):
            z = combined_logits([m(seq).logits[:, -1] for m in models], WEIGHTS)
            seq = torch.cat([seq, z.argmax(-1, keepdim=True)], dim=1)
    return seq[0, len(prompt):].tolist()


def test_greedy_matches_naive_loop_with_left_padding(models):
    ids, mask = _left_padded(PROMPTS)
    out = proxy_tuning_generate(models, WEIGHTS, ids, mask, max_new_tokens=6, greedy=True)
    assert out.shape == (3, ids.shape[1] + 6) and torch.equal(out[:, :ids.shape[1]], ids)
    for row, prompt in enumerate(PROMPTS):
        assert out[row, ids.shape[1]:].tolist() == _naive_greedy(models, prompt, 6)
    assert int(out.max()) < 100


def test_top_k_1_sampling_is_greedy_and_seeded_runs_repeat(models):
    ids, mask = _left_padded(PROMPTS)
    greedy = proxy_tuning_generate(models, WEIGHTS, ids, mask, max_new_tokens=5, greedy=True)
    top1 = proxy_tuning_generate(models, WEIGHTS, ids, mask, max_new_tokens=5, top_k=1, temperature=0.7,
                                 generator=torch.Generator().manual_seed(3))
    assert torch.equal(greedy, top1)
    runs = [proxy_tuning_generate(models, WEIGHTS, ids, mask, max_new_tokens=5, top_p=0.9,
                                  generator=torch.Generator().manual_seed(11)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_eos_rows_get_padding_and_the_loop_stops(models):
    ids, mask = _left_padded(PROMPTS)
    free = proxy_tuning_generate(models, WEIGHTS, ids, mask, max_new_tokens=6, greedy=True)[:, ids.shape[1]:]
    eos = int(free[0, 1])  # row 0's second token
    out = proxy_tuning_generate(models, WEIGHTS, ids, mask, max_new_tokens=6, greedy=True, eos_token_id=eos,
                                pad_token_id=99)[:, ids.shape[1]:]
    for row in range(3):
        tokens = free[row].tolist()
        if eos in tokens:
            stop = tokens.index(eos)
            assert out[row, :stop + 1].tolist() == tokens[:stop + 1]
            assert (out[row, stop + 1:] == 99).all()
        else:
            assert out[row].tolist() == tokens[:out.shape[1]]
    single = proxy_tuning_generate(models, WEIGHTS, ids[:1], mask[:1], max_new_tokens=6, greedy=True, eos_token_id=eos)
    assert single.shape[1] == ids.shape[1] + 2  # stopped once its only row ended


def test_argmax_combine_is_the_large_models_greedy(models):
    ids, mask = _left_padded(PROMPTS)
    out = proxy_tuning_generate(models, WEIGHTS, ids, mask, max_new_tokens=4, combine=argmax_combine)
    alone = proxy_tuning_generate(models[:1], [1.0], ids, mask, max_new_tokens=4, greedy=True)
    assert torch.equal(out, alone)


def test_forward_timer_counts_each_forward_once(models):
    ids, mask = _left_padded(PROMPTS)
    with gen.ForwardTimer(models) as timer:
        proxy_tuning_generate(models, WEIGHTS, ids, mask, max_new_tokens=4, greedy=True)
    assert timer.calls == 3 * 4  # prefill + 3 steps per model; the decoder / lm_head inside are not recounted
    assert timer.total_s > 0
    with torch.no_grad():
        models[0](ids)
    assert timer.calls == 12  # hooks removed on exit


TINY = dataclasses.replace(gen.QUICK, vocab=512, batches=(1, 3), prompt_len=4, new_tokens=3, repeats=1)
RECORD_FIELDS = {"section", "method", "title", "B", "V", "M", "models", "device", "dtype", "prompt_len", "new_tokens",
                 "weights", "temperature", "top_k", "top_p", "seed", "time_s", "tokens_per_s", "first_token_s",
                 "decode_ms_per_step", "decode_forward_ms_per_step", "decode_rest_ms_per_step", "decode_tokens_per_s",
                 "decode_forward_fraction", "speedup_vs_proxy_tuning", "decode_speedup_vs_proxy_tuning",
                 "forward_calls", "runs_s"}
HAS_COLLAB = importlib.util.find_spec("mtkernels.generation") is not None


def test_bench_records(tmp_path):
    config = dataclasses.replace(TINY, methods=(gen.PROXY, gen.COLLAB, gen.FLOOR))
    records = gen.run(config)
    methods = [gen.PROXY, gen.COLLAB, gen.FLOOR] if HAS_COLLAB else [gen.PROXY, gen.FLOOR]
    assert [(r["B"], r["method"]) for r in records] == [(b, m) for b in config.batches for m in methods]
    for r in records:
        assert RECORD_FIELDS <= set(r), RECORD_FIELDS - set(r)
        assert r["section"] == "generation" and r["V"] == 512 and r["M"] == 3 and r["new_tokens"] == 3
        assert r["time_s"] > 0 and r["tokens_per_s"] == pytest.approx(r["B"] * 3 / r["time_s"])
        assert r["decode_ms_per_step"] is not None and r["decode_forward_ms_per_step"] is not None
        assert r["forward_calls"] >= 3 * 3  # every model, every step (prefill included)
        assert r["speedup_vs_proxy_tuning"] > 0
    assert all(r["speedup_vs_proxy_tuning"] == 1.0 for r in records if r["method"] == gen.PROXY)
    if HAS_COLLAB:
        check = next(r["greedy_check"] for r in records if r["method"] == gen.COLLAB and r["B"] == 1)
        assert check["agree"] == check["tokens"] == config.greedy_check_tokens
    table = gen.format_table(records)
    assert table.count("proxy-tuning loop (HF)") == 2 and "decode tok/s" in table
    path = tmp_path / "generation.json"
    gen.write_json(str(path), records, config)
    data = json.loads(path.read_text())
    assert data["records"] == json.loads(json.dumps(records)) and data["meta"]["config"]["vocab"] == 512


def test_bench_cli_section(tmp_path, monkeypatch, capsys):
    from mtkernels import cli

    monkeypatch.setattr(gen, "QUICK", TINY)
    cli._bench_generation(argparse.Namespace(quick=True, out=str(tmp_path)))
    out = capsys.readouterr().out
    assert "generation, cpu float32, V=512" in out and "new tok/s" in out
    records = json.loads((tmp_path / cli.GENERATION_JSON_NAME).read_text())["records"]
    assert {r["method"] for r in records} == ({gen.PROXY, gen.COLLAB} if HAS_COLLAB else {gen.PROXY})


def test_both_methods_make_exactly_new_tokens(models):
    """Sanity of the benchmark's pairing: both methods make exactly new_tokens tokens from the same prompts."""
    if not HAS_COLLAB:
        pytest.skip("mtkernels.generation is not in this tree")
    config = dataclasses.replace(TINY, vocab=100, new_tokens=4)
    ids = torch.randint(0, 100, (2, 4), generator=torch.Generator().manual_seed(0))
    for method in (gen.PROXY, gen.COLLAB):
        out = gen.make_method(method, models, config)(ids)
        assert out.shape == (2, 8) and torch.equal(out[:, :4], ids)
