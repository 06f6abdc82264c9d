"""End-to-end generation: new tokens/s of ``mtkernels.generation.CollabGenerator`` against the
proxy-tuning loop of ``mtkernels.bench.proxy_tuning`` (Hugging Face forwards with ``DynamicCache``,
eager weighted sum, HF's top-p warper with its sort, softmax, ``torch.multinomial``), on the same
models, prompts and seed, and how each step's time splits between the model forwards and the rest.

The models are random Llama models built from ``LlamaConfig`` with a Llama-3-sized vocabulary
(V = 128256): a large one (hidden 1024, 8 layers) and two small ones (hidden 512, 4 layers), with
weights (1, 1, -1) as in proxy-tuning. Prompts are random ids; every run produces exactly
``new_tokens`` tokens per row (the models have no EOS token), so both methods do the same forwards.

Each ``lm_head`` is scaled by ``head_scale`` (default 5) after the random init: with the plain
init the combined distribution is nearly flat (top-p 0.9 keeps ~83,000 of the 128,256 tokens),
unlike a trained LM's; at 5 the top-p 0.9 set has a median of ~160 tokens (8 to ~600), the
range sampling from a trained model sees. The kernels' top-p cost depends on it (a flat
distribution takes their multi-pass threshold search); Hugging Face's warper sorts the whole
vocabulary either way. Records carry the measured top-p set sizes (``first_step_top_p_set``).

Timing: a run is one whole ``generate`` call. Per repeat, each method makes one run of
``new_tokens`` tokens and one of a single token (the prefill and the first combination), the
methods interleaved so that changes in the machine's load hit them alike, after ``warmup``
untimed single-token runs. Reported: end-to-end new tokens/s (median full run, prefill
included) and, per decode step, the medians of (full - single) / (new_tokens - 1) for the whole
step, the model forwards and the rest (combining the logits, filtering, sampling, the loop's own
bookkeeping). Forward time comes from hooks on each model (the top-level module, its decoder and
its ``lm_head``; nested calls are counted once), inside the same runs.

    records = run(DEFAULT)      # what `mtkernels bench` prints; QUICK for tiny models
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .proxy_tuning import argmax_combine, proxy_tuning_generate

PROXY = "proxy_tuning"
COLLAB = "collab_generator"
FLOOR = "forwards_floor"
METHOD_TITLES = {PROXY: "proxy-tuning loop (HF)", COLLAB: "CollabGenerator", FLOOR: "forwards + argmax (floor)"}


@dataclasses.dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int

    @property
    def label(self) -> str:
        return f"{self.hidden}x{self.layers}"


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """One benchmark set-up: models, prompts, sampling settings, how many runs."""

    vocab: int = 128256
    head_scale: float = 5.0
    large: ModelSize = ModelSize(1024, 8, 16, 4, 4096)
    small: ModelSize = ModelSize(512, 4, 8, 2, 2048)
    num_small: int = 2
    batches: Tuple[int, ...] = (1, 16)
    prompt_len: int = 8
    new_tokens: int = 16
    weights: Tuple[float, ...] = (1.0, 1.0, -1.0)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.9
    seed: int = 0
    warmup: int = 1
    repeats: int = 3
    methods: Tuple[str, ...] = (PROXY, COLLAB)
    greedy_check_tokens: int = 4
    device: str = "cpu"
    dtype: str = "float32"
    backend: str = "auto"  # CollabGenerator's (the fused ops')

    def describe(self) -> str:
        return (f"{self.device} {self.dtype}, V={self.vocab}, large {self.large.label} + {self.num_small} small "
                f"{self.small.label} (lm_head x{self.head_scale:g}), weights {list(self.weights)}, "
                f"top_p={self.top_p} top_k={self.top_k} "
                f"T={self.temperature}, prompt {self.prompt_len} + {self.new_tokens} new tokens, "
                f"B in {list(self.batches)}, median of {self.repeats} runs, {torch.get_num_threads()} threads"
                + ("" if self.backend == "auto" else f", CollabGenerator backend {self.backend}"))


# `mtkernels bench`: the fixed sizes, few tokens; benchmarks/bench_generation.py: 16 tokens, and the floor
DEFAULT = GenerationConfig(new_tokens=4, repeats=2)
BENCH = GenerationConfig(new_tokens=16, repeats=3, methods=(PROXY, COLLAB, FLOOR))
QUICK = GenerationConfig(vocab=2048, large=ModelSize(64, 2, 4, 2, 128), small=ModelSize(32, 1, 4, 2, 64),
                         prompt_len=8, new_tokens=4, repeats=2, greedy_check_tokens=3)


# --- models and prompts -----------------------------------------------------------------------------

def _llama(size: ModelSize, vocab: int, seed: int, dtype: torch.dtype, device: str, head_scale: float):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=size.hidden, intermediate_size=size.intermediate,
                         num_hidden_layers=size.layers, num_attention_heads=size.heads,
                         num_key_value_heads=size.kv_heads, max_position_embeddings=4096,
                         bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    model = model.to(device=device, dtype=dtype).eval()
    model.generation_config.eos_token_id = None  # no stopping: every run makes exactly new_tokens tokens
    model.generation_config.pad_token_id = None
    return model


@functools.lru_cache(maxsize=1)
def build_models(vocab: int, large: ModelSize, small: ModelSize, num_small: int, device: str = "cpu",
                 dtype: str = "float32", head_scale: float = 1.0) -> Tuple[torch.nn.Module, ...]:
    """``(large, small_1, ..., small_n)``, random weights from fixed seeds (kept for the next call)."""
    dt = getattr(torch, dtype)
    return (_llama(large, vocab, 1, dt, device, head_scale),) + tuple(
        _llama(small, vocab, 2 + i, dt, device, head_scale) for i in range(num_small))


def models_for(config: GenerationConfig) -> Tuple[torch.nn.Module, ...]:
    return build_models(config.vocab, config.large, config.small, config.num_small, config.device, config.dtype,
                        config.head_scale)


def top_p_set_sizes(models: Sequence[torch.nn.Module], config: GenerationConfig, rows: int = 4) -> Dict:
    """How many tokens top-p keeps at the first step, over ``rows`` random prompts: median, min, max."""
    from .proxy_tuning import combined_logits

    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, config.vocab, (rows, config.prompt_len), generator=g).to(config.device)
    with torch.inference_mode():
        z = combined_logits([m(input_ids=ids).logits[:, -1] for m in models], config.weights) / config.temperature
    cum = torch.softmax(z, dim=-1).sort(dim=-1, descending=True).values.cumsum(dim=-1)
    sizes = ((cum < config.top_p).sum(dim=-1) + 1).clamp(max=z.shape[-1])
    return {"median": int(sizes.median()), "min": int(sizes.min()), "max": int(sizes.max()), "rows": rows}


def prompts(config: GenerationConfig, batch: int) -> torch.Tensor:
    """``(batch, prompt_len)`` random ids, the same for every method."""
    g = torch.Generator().manual_seed(1000 + batch)
    return torch.randint(0, config.vocab, (batch, config.prompt_len), generator=g).to(config.device)


# --- methods ----------------------------------------------------------------------------------------

def collab_generator_missing() -> Optional[str]:
    """Why ``CollabGenerator`` cannot be benchmarked here, or None."""
    try:
        from mtkernels.generation import CollabGenerator  # noqa: F401
    except ImportError as exc:
        return f"mtkernels.generation.CollabGenerator is not importable ({exc})"
    return None


def make_method(name: str, models: Sequence[torch.nn.Module], config: GenerationConfig,
                greedy: bool = False, new_tokens: Optional[int] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn(input_ids) -> (B, T + new_tokens)`` for method ``name``; each call starts from ``config.seed``."""
    n = config.new_tokens if new_tokens is None else new_tokens
    weights = list(config.weights)
    sampling = dict(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)
    if name == COLLAB:
        from mtkernels.generation import CollabGenerator

        gen = CollabGenerator(models[0], list(models[1:]), weights=weights, tokenizer=None, backend=config.backend)
        if greedy:
            return lambda ids: gen.generate(ids, max_new_tokens=n, greedy=True)
        return lambda ids: gen.generate(ids, max_new_tokens=n, min_p=0.0, seed=config.seed, **sampling)
    if name == PROXY:
        def proxy(ids):
            g = torch.Generator(device=ids.device).manual_seed(config.seed)
            return proxy_tuning_generate(models, weights, ids, max_new_tokens=n, greedy=greedy, generator=g,
                                         **sampling)
        return proxy
    if name == FLOOR:
        return lambda ids: proxy_tuning_generate(models, weights, ids, max_new_tokens=n, combine=argmax_combine)
    raise ValueError(f"unknown generation method {name!r}; one of {', '.join(METHOD_TITLES)}")


# --- timing -----------------------------------------------------------------------------------------

class ForwardTimer:
    """Wall time spent in the models' forwards while active (``with ForwardTimer(models) as t: ...``).

    Hooks on each model, its decoder and its output embedding: a generator that calls the whole
    model, or the decoder and the head separately, is timed either way; nested calls count once.
    ``total_s``: all forwards; ``calls``: outermost timed calls."""

    def __init__(self, models: Sequence[torch.nn.Module], device="cpu"):
        self.models = list(models)
        self.device = torch.device(device)
        self.total_s = 0.0
        self.calls = 0
        self._handles: List = []
        self._depth = 0
        self._start = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _modules(self, model: torch.nn.Module) -> List[torch.nn.Module]:
        mods = [model]
        for getter in ("get_decoder", "get_output_embeddings"):
            fn = getattr(model, getter, None)
            sub = fn() if callable(fn) else None
            if isinstance(sub, torch.nn.Module) and all(sub is not m for m in mods):
                mods.append(sub)
        return mods

    def __enter__(self) -> "ForwardTimer":
        def pre(module, args):
            if self._depth == 0:
                self._sync()
                self._start = time.perf_counter()
            self._depth += 1

        def post(module, args, output):
            self._depth -= 1
            if self._depth == 0:
                self._sync()
                self.total_s += time.perf_counter() - self._start
                self.calls += 1

        for model in self.models:
            for mod in self._modules(model):
                self._handles.append(mod.register_forward_pre_hook(pre))
                self._handles.append(mod.register_forward_hook(post, always_call=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@dataclasses.dataclass
class Run:
    total_s: float
    forward_s: float
    forward_calls: int
    new_tokens: int


def timed_run(fn: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor, models: Sequence[torch.nn.Module],
              device="cpu") -> Run:
    """One call of ``fn(ids)``: its wall time and the part spent in the models' forwards."""
    device = torch.device(device)
    with ForwardTimer(models, device) as timer:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn(ids)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        total = time.perf_counter() - start
    return Run(total, timer.total_s, timer.calls, out.shape[1] - ids.shape[1])


def make_record(method: str, batch: int, config: GenerationConfig, full: Sequence[Run], first: Sequence[Run]) -> Dict:
    """A generation record from the timed runs of one (method, batch): ``full`` runs make
    ``new_tokens`` tokens, ``first`` runs one token (the prefill and one combination), taken in pairs.

    End to end: ``tokens_per_s`` = B * new_tokens / median time of a full run. Per decode step
    (the steps after the first token): medians over the pairs of (full - first) / (new_tokens - 1),
    for the whole step, the forwards and the rest."""
    for r in list(full) + list(first):
        expected = config.new_tokens if r in full else 1
        if r.new_tokens != expected:
            raise RuntimeError(f"{METHOD_TITLES[method]} made {r.new_tokens} new tokens per row at B={batch}, "
                               f"expected {expected} (it stopped early?)")
    n = config.new_tokens
    total = statistics.median(r.total_s for r in full)
    record = {
        "section": "generation", "method": method, "title": METHOD_TITLES[method], "B": batch, "V": config.vocab,
        "M": 1 + config.num_small,
        "models": f"large {config.large.label} + {config.num_small} x small {config.small.label}",
        "head_scale": config.head_scale, "device": config.device, "dtype": config.dtype,
        "prompt_len": config.prompt_len, "new_tokens": n,
        "weights": list(config.weights), "temperature": config.temperature, "top_k": config.top_k,
        "top_p": config.top_p, "seed": config.seed,
        "time_s": total, "tokens_per_s": batch * n / total,
        "first_token_s": statistics.median(r.total_s for r in first),
        "forward_calls": full[0].forward_calls, "runs_s": [r.total_s for r in full],
        "decode_ms_per_step": None, "decode_forward_ms_per_step": None, "decode_rest_ms_per_step": None,
        "decode_tokens_per_s": None, "decode_forward_fraction": None,
        "speedup_vs_proxy_tuning": None, "decode_speedup_vs_proxy_tuning": None,
    }
    if n > 1:
        steps = n - 1
        step = statistics.median((f.total_s - o.total_s) / steps for f, o in zip(full, first))
        fwd = statistics.median((f.forward_s - o.forward_s) / steps for f, o in zip(full, first))
        rest = statistics.median(((f.total_s - f.forward_s) - (o.total_s - o.forward_s)) / steps
                                 for f, o in zip(full, first))
        record.update(decode_ms_per_step=1e3 * step, decode_forward_ms_per_step=1e3 * fwd,
                      decode_rest_ms_per_step=1e3 * rest,
                      decode_tokens_per_s=batch / step if step > 0 else None,
                      decode_forward_fraction=fwd / step if step > 0 else None)
    return record


def add_speedups(records: List[Dict]) -> None:
    """Tokens/s over the proxy-tuning loop's at the same batch size, end to end and per decode step."""
    base = {r["B"]: r for r in records if r["method"] == PROXY}
    for r in records:
        b = base.get(r["B"])
        if b is None:
            continue
        r["speedup_vs_proxy_tuning"] = r["tokens_per_s"] / b["tokens_per_s"]
        if r["decode_tokens_per_s"] and b["decode_tokens_per_s"]:
            r["decode_speedup_vs_proxy_tuning"] = r["decode_tokens_per_s"] / b["decode_tokens_per_s"]


def greedy_check(models: Sequence[torch.nn.Module], config: GenerationConfig, batch: int) -> Dict:
    """Greedy tokens of CollabGenerator and of the proxy-tuning loop, compared (same models, prompts)."""
    ids = prompts(config, batch)
    n = config.greedy_check_tokens
    with torch.inference_mode():
        a = make_method(COLLAB, models, config, greedy=True, new_tokens=n)(ids)[:, ids.shape[1]:]
        b = make_method(PROXY, models, config, greedy=True, new_tokens=n)(ids)[:, ids.shape[1]:]
    agree = int((a == b).sum()) if a.shape == b.shape else 0
    return {"B": batch, "tokens": int(b.numel()), "agree": agree, "shapes": [list(a.shape), list(b.shape)]}


def run(config: GenerationConfig = DEFAULT, on_record: Optional[Callable[[Dict], None]] = None,
        methods: Optional[Sequence[str]] = None) -> List[Dict]:
    """One record per (batch, method) that can run here (CollabGenerator is skipped when it is missing).

    At each batch size the methods' runs are interleaved (one full and one single-token run of
    each method per repeat), so that a change in the machine's load affects them alike."""
    methods = list(methods or config.methods)
    if COLLAB in methods and collab_generator_missing():
        methods.remove(COLLAB)
    models = models_for(config)
    nucleus = top_p_set_sizes(models, config) if config.top_p < 1.0 else None
    records: List[Dict] = []
    for batch in config.batches:
        ids = prompts(config, batch)
        full = {m: make_method(m, models, config) for m in methods}
        first = {m: make_method(m, models, config, new_tokens=1) for m in methods}
        runs: Dict[str, Tuple[List[Run], List[Run]]] = {m: ([], []) for m in methods}
        with torch.inference_mode():
            for m in methods:
                for _ in range(config.warmup):
                    first[m](ids)
            for _ in range(max(1, config.repeats)):
                for m in methods:
                    runs[m][1].append(timed_run(first[m], ids, models, config.device))
                    runs[m][0].append(timed_run(full[m], ids, models, config.device))
        for m in methods:
            record = make_record(m, batch, config, *runs[m])
            record["first_step_top_p_set"] = nucleus
            if m == COLLAB and config.greedy_check_tokens and batch == min(config.batches):
                record["greedy_check"] = greedy_check(models, config, batch)
            records.append(record)
            add_speedups(records)
            if on_record:
                on_record(record)
    return records


# --- report -----------------------------------------------------------------------------------------

def _num(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_progress(r: Dict) -> str:
    step = "" if r["decode_ms_per_step"] is None else (
        f"; decode {r['decode_ms_per_step']:.1f} ms/step (forwards {r['decode_forward_ms_per_step']:.1f}, "
        f"rest {r['decode_rest_ms_per_step']:.1f})")
    return f"{r['title']:<26} B={r['B']:<3} {r['tokens_per_s']:9.2f} new tok/s end to end{step}"


COLUMNS = ("method", "B", "new tok/s", "x proxy", "decode tok/s", "x proxy", "ms/step", "fwd ms", "rest ms", "fwd %")


def format_table(records: Sequence[Dict]) -> str:
    """One row per (batch, method): end-to-end new tokens/s (prefill included), then the decode
    steps' tokens/s and time split (forwards / the rest: combination, sampling, bookkeeping)."""
    rows = [[r["title"], str(r["B"]), f"{r['tokens_per_s']:.2f}", _num(r["speedup_vs_proxy_tuning"], ".2f"),
             _num(r["decode_tokens_per_s"], ".2f"), _num(r["decode_speedup_vs_proxy_tuning"], ".2f"),
             _num(r["decode_ms_per_step"], ".1f"), _num(r["decode_forward_ms_per_step"], ".1f"),
             _num(r["decode_rest_ms_per_step"], ".1f"),
             _num(None if r["decode_forward_fraction"] is None else 100 * r["decode_forward_fraction"], ".0f")]
            for r in records]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(COLUMNS)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(COLUMNS), line(["-" * w for w in widths])] + [line(row) for row in rows]
    sets = next((r.get("first_step_top_p_set") for r in records if r.get("first_step_top_p_set")), None)
    if sets:
        out.append(f"top-p {records[0]['top_p']} keeps {sets['median']} tokens at the first step (median of "
                   f"{sets['rows']} prompts; {sets['min']} to {sets['max']}) of V={records[0]['V']}")
    for c in (r["greedy_check"] for r in records if "greedy_check" in r):
        out.append(f"greedy check (B={c['B']}): CollabGenerator and the proxy-tuning loop agree on "
                   f"{c['agree']}/{c['tokens']} tokens")
    return "\n".join(out)


def meta(config: GenerationConfig) -> Dict:
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return {"config": dataclasses.asdict(config), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(), "load_average_at_end": load,
            "collab_generator": collab_generator_missing() or "available",
            "timing": "per repeat, one generate call of new_tokens tokens and one of 1 token, methods interleaved, "
                      "after `warmup` untimed 1-token calls; end to end: median full call; decode step: median of "
                      "(full - 1-token) / (new_tokens - 1); forwards from hooks on each model (top-level, decoder, "
                      "lm_head; nested calls once); rest = total - forwards"}


def write_json(path: str, records: Sequence[Dict], config: GenerationConfig) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": meta(config), "records": list(records)}, f, indent=1)


__all__ = ["BENCH", "COLLAB", "DEFAULT", "FLOOR", "PROXY", "QUICK", "ForwardTimer", "GenerationConfig", "ModelSize",
           "build_models", "collab_generator_missing", "format_table", "make_method", "make_record", "prompts", "run",
           "timed_run", "write_json"]
