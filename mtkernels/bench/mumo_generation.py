"""MuMo generation on a synthetic Japanese corpus: the trie forward against K separate forwards,
and new base tokens/s (and morphemes/s) of ``MuMoGenerator`` against plain greedy decoding of the
same base model.

The set-up is built on the fly, nothing is downloaded: a byte-level BPE base tokenizer trained on
English text (so a Japanese character is its three UTF-8 bytes and a word six or more base tokens,
the extreme of an English-centric LLM's fragmentation), the monolingual vocabulary from the corpus's words, a small random Llama
trained on the corpus (a random model would rank multi-token words below its best single token, so
verification would rarely accept one), then a MuMo head trained briefly beside it. The corpus is a
dozen sentences repeated: the figures measure the mechanism (tokens per step, the cost of a trie
step), not translation quality; they are labelled synthetic wherever they are quoted.

    setup = build(QUICK)                 # tokenizer, vocabulary, trained base model and head
    records = run(DEFAULT)               # what `mtkernels bench` prints
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..mumo import MuMoGenerator

# Word-segmented sentences (spaces mark word boundaries; the texts join them).
SENTENCES = [
    "今日 は 天気 が いい ので 友達 と 公園 へ 散歩 に 行き ました 。",
    "毎朝 電車 で 会社 に 通って います 。",
    "私 は 日本語 を 勉強 して います 。",
    "昨日 の 夜 は 家族 と レストラン で 晩ご飯 を 食べ ました 。",
    "東京 は 大きな 都市 です が 京都 は 静か な 町 です 。",
    "図書館 で 新聞 と 雑誌 を 読み ました 。",
    "先生 に 質問 を したら 丁寧 に 答えて くれ ました 。",
    "週末 は 映画 を 見たり 音楽 を 聞いたり します 。",
    "この 料理 は 野菜 と 魚 で 作り ました 。",
    "明日 は 雨 が 降る かもしれ ません 。",
    "駅 の 近く に 新しい ホテル が あります 。",
    "翻訳 の 仕事 は 難しい です が 面白い です 。",
]
ENGLISH = [
    "The weather is nice today, so I went for a walk in the park with a friend.",
    "Every morning I take the train to the office and read the newspaper.",
    "Translate the following sentence from Japanese to English, please.",
    "We study languages, music, history and the economy at the university.",
] * 8


def corpus() -> List[str]:
    """The synthetic corpus: each sentence with its words joined."""
    return [s.replace(" ", "") for s in SENTENCES]


def corpus_words() -> List[str]:
    return sorted({w for s in SENTENCES for w in s.split()})


@dataclasses.dataclass(frozen=True)
class MuMoBenchConfig:
    hidden: int = 256
    layers: int = 4
    base_steps: int = 300
    head_steps: int = 200
    batch_sizes: Sequence[int] = (1, 8)
    new_tokens: int = 32
    k: int = 10
    repeats: int = 3
    seed: int = 0


DEFAULT = MuMoBenchConfig()
QUICK = MuMoBenchConfig(hidden=64, layers=2, base_steps=150, head_steps=60, batch_sizes=(1, 4), new_tokens=12,
                        repeats=1)


@dataclasses.dataclass
class Setup:
    tokenizer: object
    vocab: object
    model: torch.nn.Module
    head: torch.nn.Module
    base_losses: List[float]
    head_losses: List[float]


def train_tokenizer(texts: Sequence[str], vocab_size: int = 420):
    """A byte-level BPE tokenizer trained on ``texts`` (EOS ``</s>``, no pad: padding uses EOS)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")


def train_language_model(model, tokenizer, texts: Sequence[str], *, steps: int, lr: float = 3e-3,
                         batch_size: int = 8, seed: int = 0) -> List[float]:
    """Next-token training of ``model`` on ``texts`` (each followed by EOS); returns the losses."""
    gen = torch.Generator().manual_seed(seed)
    rows = [tokenizer.encode(t, add_special_tokens=False) + [tokenizer.eos_token_id] for t in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        pick = torch.randint(0, len(rows), (batch_size,), generator=gen).tolist()
        width = max(len(rows[i]) for i in pick)
        ids = torch.full((batch_size, width), tokenizer.eos_token_id, dtype=torch.int64)
        labels = torch.full((batch_size, width), -100, dtype=torch.int64)
        for b, i in enumerate(pick):
            ids[b, : len(rows[i])] = torch.tensor(rows[i])
            labels[b, : len(rows[i])] = torch.tensor(rows[i])
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def build(config: MuMoBenchConfig = DEFAULT) -> Setup:
    """Tokenizer, vocabulary, a base model trained on the corpus, and a head trained beside it."""
    import transformers

    from ..mumo import MonoVocab, MuMoHead, train_head

    tokenizer = train_tokenizer(ENGLISH)
    vocab = MonoVocab.from_words(corpus_words(), tokenizer)
    torch.manual_seed(config.seed)
    model_config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden, intermediate_size=2 * config.hidden,
        num_hidden_layers=config.layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(model_config)
    base_losses = train_language_model(model, tokenizer, corpus(), steps=config.base_steps, seed=config.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    head = MuMoHead(model, vocab)
    result = train_head(model, head, tokenizer, corpus(), steps=config.head_steps, batch_size=8, lr=3e-3,
                        progress=False, seed=config.seed)
    return Setup(tokenizer, vocab, model, head, base_losses, result.losses)


def prompts(setup: Setup, batch: int):
    """The first two words of the corpus's sentences, cycled to ``batch`` rows, left-padded."""
    from ..generation.prompts import left_pad

    starts = ["".join(s.split()[:2]) for s in SENTENCES]
    ids = [setup.tokenizer.encode(starts[i % len(starts)], add_special_tokens=False) for i in range(batch)]
    return left_pad(ids, setup.tokenizer.eos_token_id)


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def plain_greedy(setup: Setup, ids, mask, new_tokens: int):
    return setup.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                pad_token_id=setup.tokenizer.eos_token_id, eos_token_id=setup.tokenizer.eos_token_id)


def _new_text(setup: Setup, out, prompt_len: int) -> List[str]:
    return setup.tokenizer.batch_decode(out[:, prompt_len:], skip_special_tokens=True)


def _morphemes(texts: Sequence[str]) -> Optional[int]:
    from ..mumo import morphemes

    try:
        return sum(morphemes(t, "ja") for t in texts)
    except ImportError:
        return None


def _new_tokens(out, prompt_len: int, eos: int) -> int:
    """Base tokens generated, up to and including each row's EOS."""
    total = 0
    for row in out[:, prompt_len:].tolist():
        total += row.index(eos) + 1 if eos in row else len(row)
    return total


def generation_records(setup: Setup, config: MuMoBenchConfig) -> List[Dict]:
    """Per batch size: plain greedy and MuMoGenerator, new tokens/s and morphemes/s side by side."""
    gen = MuMoGenerator(setup.model, setup.head, setup.tokenizer, k=config.k)
    eos = setup.tokenizer.eos_token_id
    records = []
    for batch in config.batch_sizes:
        ids, mask = prompts(setup, batch)
        P = ids.shape[1]
        methods = {"plain_greedy": lambda: plain_greedy(setup, ids, mask, config.new_tokens),
                   "mumo_generator": lambda: gen.generate(ids, mask, max_new_tokens=config.new_tokens)}
        outs = {name: fn() for name, fn in methods.items()}
        tokens_per_step = gen.last_stats.tokens_per_step
        times = {name: _median_ms(fn, config.repeats, warmup=0) for name, fn in methods.items()}
        for name in methods:
            texts = _new_text(setup, outs[name], P)
            n_tokens = _new_tokens(outs[name], P, eos)
            n_morph = _morphemes(texts)
            seconds = times[name] / 1e3
            records.append({"bench": "mumo_generation", "method": name, "batch": batch,
                            "new_tokens": n_tokens, "ms": times[name], "tokens_per_s": n_tokens / seconds,
                            "morphemes": n_morph, "morphemes_per_s": None if n_morph is None else n_morph / seconds,
                            "tokens_per_step": tokens_per_step if name == "mumo_generator" else 1.0,
                            "sample": texts[0]})
        plain, mumo = records[-2], records[-1]
        mumo["speedup_tokens_per_s"] = mumo["tokens_per_s"] / plain["tokens_per_s"]
        if plain["morphemes_per_s"] and mumo["morphemes_per_s"]:
            mumo["speedup_morphemes_per_s"] = mumo["morphemes_per_s"] / plain["morphemes_per_s"]
    return records


def trie_inputs(setup: Setup, batch: int, k: int):
    """One step's state: a prefilled cache and the trie of the head's top-k for ``batch`` prompts."""
    from ..generation.model_set import new_cache
    from ..mumo.trie import build_tries

    gen = MuMoGenerator(setup.model, setup.head, setup.tokenizer, k=k)
    ids, mask = prompts(setup, batch)
    cache = new_cache(setup.model)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        hidden = gen._decode(ids, mask, positions, cache)[:, -1]
        cands = gen.candidates(hidden, [64] * batch)
    return gen, ids, mask, cache, cands, build_tries(cands)


def trie_step_functions(setup: Setup, gen, ids, mask, cache, cands, trie) -> Dict[str, Callable[[], None]]:
    """One verification step two ways: a forward over the trie on (a copy of) the cache, and K
    separate forwards, each candidate from scratch on prompt + candidate (a loop without trie or
    cache)."""
    import copy

    from ..mumo.tree_cache import tree_attention_mask

    attn = setup.model.config._attn_implementation
    tree_mask = tree_attention_mask(mask, trie.tree_mask, attn, torch.float32)
    positions = mask.sum(-1, keepdim=True) + trie.depth
    decoder = setup.model.get_decoder()

    def trie_forward():
        with torch.no_grad():
            gen._decode(trie.tokens, tree_mask, positions, copy.deepcopy(cache))

    def separate_forwards():
        with torch.no_grad():
            for b in range(ids.shape[0]):
                prompt = ids[b][mask[b].bool()].tolist()
                for c in cands[b]:
                    decoder(input_ids=torch.tensor([prompt + c]))

    return {"trie_forward": trie_forward, "separate_forwards": separate_forwards}


def trie_records(setup: Setup, config: MuMoBenchConfig, batch: int = 1) -> List[Dict]:
    """Time and peak memory of one verification step, trie forward against separate forwards."""
    from .measure import peak_memory_mb

    gen, ids, mask, cache, cands, trie = trie_inputs(setup, batch, config.k)
    fns = trie_step_functions(setup, gen, ids, mask, cache, cands, trie)
    out = []
    for name, fn in fns.items():
        out.append({"bench": "mumo_trie", "method": name, "batch": batch, "k": config.k,
                    "nodes": int(trie.num_nodes.max()), "candidate_tokens": int(trie.lengths.sum()),
                    "ms": _median_ms(fn, max(3, config.repeats)), "peak_mb": peak_memory_mb(fn, "cpu")})
    out[0]["speedup"] = out[1]["ms"] / out[0]["ms"]
    return out


def run(config: MuMoBenchConfig = DEFAULT, on_record: Optional[Callable[[Dict], None]] = None,
        setup: Optional[Setup] = None) -> List[Dict]:
    setup = setup or build(config)
    records = []
    for r in trie_records(setup, config) + generation_records(setup, config):
        records.append(r)
        if on_record is not None:
            on_record(r)
    return records


def format_table(records: Sequence[Dict]) -> str:
    lines = ["MuMo generation (synthetic Japanese corpus, CPU)",
             f"{'case':<22}{'batch':>6}{'ms':>10}{'tok/s':>10}{'morph/s':>10}{'tok/step':>10}{'ratio':>8}"]
    for r in records:
        if r["bench"] == "mumo_trie":
            lines.append(f"{r['method']:<22}{r['batch']:>6}{r['ms']:>10.2f}{'':>10}{'':>10}{'':>10}"
                         f"{(('x%.2f' % r['speedup']) if 'speedup' in r else ''):>8}")
        else:
            morph = "" if r["morphemes_per_s"] is None else f"{r['morphemes_per_s']:.1f}"
            ratio = f"x{r['speedup_tokens_per_s']:.2f}" if "speedup_tokens_per_s" in r else ""
            lines.append(f"{r['method']:<22}{r['batch']:>6}{r['ms']:>10.1f}{r['tokens_per_s']:>10.1f}{morph:>10}"
                         f"{r['tokens_per_step']:>10.2f}{ratio:>8}")
    return "\n".join(lines)


def write_json(path: str, records: Sequence[Dict], config: MuMoBenchConfig) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    meta = {"config": dataclasses.asdict(config), "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
            "corpus": "synthetic: 12 Japanese sentences, repeated", "timing": "median of `repeats` whole calls"}
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "records": list(records)}, f, indent=1, ensure_ascii=False)
