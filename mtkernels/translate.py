"""``mtkernels translate``: translate a file with collaborative decoding and score it.

    mtkernels translate --large DIR --small DIR [--small DIR ...] [--weights 1,1,1] \\
        --src-lang ja --tgt-lang en --input FILE [--ref FILE] [--output FILE] \\
        [--batch-size 16] [--max-new-tokens 256] \\
        [--greedy | --temperature T --top-k K --top-p P --min-p M --seed S | --num-beams N --length-penalty L] \\
        [--baseline] [--device cpu|cuda] [--dtype float32|bfloat16|float16]

One hypothesis per input line, in input order, to ``--output`` (written to a temporary file in the
same folder, then renamed over it) or to standard output. With ``--ref``, SacreBLEU's BLEU and chrF
and their signatures (``mtkernels.metrics``) go to standard output, or to standard error when the
hypotheses are on standard output. ``--baseline`` also decodes with the large model alone (same
settings) and prints both systems' scores side by side; it needs ``--ref``.

Decoding is greedy unless a sampling option (``--temperature``, ``--top-k``, ``--top-p``,
``--min-p``, ``--seed``) or ``--num-beams N > 1`` is given. Sampling noise is keyed by the seed, the
sentence's line number and the step, so a sentence gets the same tokens however the input is split
into batches or processes.

Under ``torchrun --nproc-per-node N`` each rank translates whole batches of the input (the same
batches a single process forms, handed out round-robin) on its own device (``cuda:LOCAL_RANK`` with
``--device cuda``); rank 0 gathers the hypotheses (torch.distributed, gloo) and writes them and the scores.

On a GPU, half-precision models load with ``attn_implementation="flash_attention_2"`` when
flash-attn is installed (else their own default), and ``CollabGenerator`` runs the small models on
side streams.

Every argument, file and model directory is checked before any model is loaded; a bad one stops
the command with a one-line error on standard error and exit status 2, and no output file is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import math
import os
import re
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

PROG = "mtkernels translate"
EXIT_USAGE = 2
DTYPES = ("float32", "bfloat16", "float16")
SAMPLING_FLAGS = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p",
                  "seed": "--seed"}
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 0}
MAX_SEED = 2**63 - 1
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class UsageError(Exception):
    """A bad argument, file or model directory: reported as one line, exit status 2."""


# --- arguments ------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``translate`` options, on ``parser`` (a subparser of the ``mtkernels`` command)."""
    models = parser.add_argument_group("models")
    models.add_argument("--large", required=True, metavar="DIR",
                        help="the large model: a local Hugging Face model folder (or a Hub id)")
    models.add_argument("--small", action="append", default=[], metavar="DIR",
                        help="a small model (repeat for several, e.g. a source-side and a target-side expert)")
    models.add_argument("--weights", default=None, metavar="W,W,...",
                        help="one weight per model, the large one first (default: 1 for each)")
    models.add_argument("--tokenizer", default=None, metavar="DIR",
                        help="one tokenizer for every model (default: each model's own, from its folder)")
    models.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when a GPU is visible, else cpu")
    models.add_argument("--dtype", choices=DTYPES, default=None,
                        help="model weights' dtype (default: bfloat16 on cuda, float32 on cpu)")

    data = parser.add_argument_group("data")
    data.add_argument("--src-lang", required=True, help="source language code, e.g. ja")
    data.add_argument("--tgt-lang", required=True, help="target language code, e.g. en")
    data.add_argument("--input", required=True, metavar="FILE", help="source sentences, one per line (UTF-8)")
    data.add_argument("--ref", default=None, metavar="FILE", help="references, one per line: score BLEU and chrF")
    data.add_argument("--output", default=None, metavar="FILE", help="hypotheses file (default: standard output)")
    data.add_argument("--baseline", action="store_true",
                      help="also decode with the large model alone and print both scores (needs --ref)")

    decoding = parser.add_argument_group("decoding")
    decoding.add_argument("--batch-size", type=int, default=16, help="sentences per batch (default: 16)")
    decoding.add_argument("--max-new-tokens", type=int, default=256, help="default: 256")
    decoding.add_argument("--greedy", action="store_true", help="greedy decoding (the default without sampling options)")
    decoding.add_argument("--temperature", type=float, default=None, help="sample at this temperature (default 1)")
    decoding.add_argument("--top-k", type=int, default=None, help="sample among the K most probable tokens (0: off)")
    decoding.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass, in (0, 1] (1: off)")
    decoding.add_argument("--min-p", type=float, default=None, help="min-p filter, in [0, 1) (0: off)")
    decoding.add_argument("--seed", type=int, default=None, help="sampling seed (default 0)")
    decoding.add_argument("--num-beams", type=int, default=1, help="beam search with N beams (default: 1, no beams)")
    decoding.add_argument("--length-penalty", type=float, default=None, help="beam search length penalty (default 1)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


# --- checks (nothing here loads a model) ------------------------------------------------------------

@dataclasses.dataclass
class Plan:
    """Everything ``run`` needs, checked."""

    sources: List[str]
    refs: Optional[List[str]]
    large: str
    small: List[str]
    tokenizer: Optional[str]  # None: each model's own
    weights: List[float]
    decode: Dict[str, object]
    device: str
    dtype: str
    output: Optional[str]
    src_lang: str
    tgt_lang: str
    batch_size: int
    max_new_tokens: int
    baseline: bool
    progress: bool


def read_lines(path: str, what: str) -> List[str]:
    """The lines of a UTF-8 text file (a final newline ends the last line; ``\\r\\n`` is accepted)."""
    if os.path.isdir(path):
        raise UsageError(f"{what} {path}: is a directory")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _check_output(path: str, inputs: Sequence[str]) -> None:
    if os.path.isdir(path):
        raise UsageError(f"--output {path}: is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--output {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--output {path}: folder {folder} is not writable")
    for other in inputs:
        if other and os.path.exists(path) and os.path.samefile(path, other):
            raise UsageError(f"--output {path}: is also an input file")


def _is_hub_id(name: str) -> bool:
    """Whether a string that names no local file can only be a Hugging Face Hub id."""
    if not _HUB_ID.match(name) or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    parent = name.split("/")[0] if "/" in name else None
    return parent is None or not os.path.isdir(parent)  # "models/large" with a local models/ is a path


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _has_tokenizer(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, f)) for f in TOKENIZER_FILES)


def _check_model(name: str, flag: str, need_tokenizer: bool) -> None:
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise UsageError(f"{flag} {name}: no config.json in this folder (not a Hugging Face model folder)")
        if need_tokenizer and not _has_tokenizer(name):
            raise UsageError(f"{flag} {name}: no tokenizer in this folder (pass --tokenizer DIR)")
        return
    if os.path.exists(name):
        raise UsageError(f"{flag} {name}: is not a folder")
    if not _is_hub_id(name):
        raise UsageError(f"{flag} {name}: model folder not found")


def _model_vocab(name: str, flag: str) -> int:
    """The model's vocabulary size, from its config alone."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name)
    except Exception as exc:  # OSError, ValueError, JSON errors ...
        raise UsageError(f"{flag} {name}: cannot read its config ({_one_line(exc)})") from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = getattr(text, "vocab_size", None)
    if not isinstance(vocab, int) or vocab < 1:
        raise UsageError(f"{flag} {name}: its config has no vocab_size")
    return vocab


def parse_weights(text: Optional[str], count: int) -> List[float]:
    """``"1,0.5,-1"`` -> floats; one per model (``count``), each finite in float32."""
    from .ops.collab_args import check_scalar

    if text is None:
        return [1.0] * count
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise UsageError(f"--weights {text}: expected comma-separated numbers, e.g. 1,1,1") from None
    if len(weights) != count:
        raise UsageError(f"--weights {text}: {len(weights)} weights for {count} models "
                         f"(the large one and {count - 1} --small); give one per model, the large one first")
    for w in weights:
        try:
            check_scalar("weights", w)
        except ValueError as exc:
            raise UsageError(f"--weights {text}: {exc}") from None
    return weights


def decode_options(args: argparse.Namespace, vocab: Optional[int] = None) -> Dict[str, object]:
    """The keyword arguments of ``CollabGenerator.translate`` for the decoding options (``--top-k``
    is checked against ``vocab`` when given)."""
    from .ops.collab_args import check_scalar

    given = [name for name in SAMPLING_FLAGS if getattr(args, name) is not None]
    flags = ", ".join(SAMPLING_FLAGS[name] for name in given)
    if args.num_beams < 1:
        raise UsageError(f"--num-beams {args.num_beams}: must be >= 1")
    if args.length_penalty is not None:
        if args.num_beams == 1:
            raise UsageError("--length-penalty: only with beam search (--num-beams > 1)")
        if not math.isfinite(args.length_penalty):
            raise UsageError(f"--length-penalty {args.length_penalty}: must be finite")
    if args.num_beams > 1:
        if given or args.greedy:
            raise UsageError(f"--num-beams {args.num_beams}: beam search cannot be combined with "
                             f"{flags or '--greedy'}")
        lp = 1.0 if args.length_penalty is None else args.length_penalty
        return {"num_beams": args.num_beams, "length_penalty": lp}
    if args.greedy and given:
        raise UsageError(f"--greedy cannot be combined with the sampling options ({flags})")
    if not given:
        return {"greedy": True}
    opts = {name: (SAMPLING_DEFAULTS[name] if getattr(args, name) is None else getattr(args, name))
            for name in SAMPLING_FLAGS}
    for name in ("temperature", "top_p", "min_p"):
        try:
            check_scalar(name, opts[name])
        except ValueError:
            expected = {"temperature": "finite and > 0", "top_p": "in (0, 1]", "min_p": "in [0, 1)"}[name]
            raise UsageError(f"{SAMPLING_FLAGS[name]} {opts[name]}: must be {expected}") from None
    if opts["top_k"] < 0 or (vocab is not None and opts["top_k"] > vocab):
        if vocab is None:
            raise UsageError(f"--top-k {opts['top_k']}: must be >= 0 (0: off)")
        raise UsageError(f"--top-k {opts['top_k']}: must be in [0, vocabulary size {vocab}] (0: off)")
    if not 0 <= opts["seed"] <= MAX_SEED:
        raise UsageError(f"--seed {opts['seed']}: must be in [0, 2**63 - 1]")
    return {"greedy": False, **opts}


def _generation():
    try:
        from . import generation
    except ImportError as exc:
        raise UsageError(f"mtkernels.generation cannot be imported ({_one_line(exc)})") from None
    return generation


def _check_generator_accepts(decode: Dict[str, object]) -> None:
    params = inspect.signature(_generation().CollabGenerator.translate).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    missing = [k for k in decode if k not in params]
    if missing:
        raise UsageError(f"this CollabGenerator.translate takes no {', '.join(missing)} "
                         f"(options {', '.join('--' + k.replace('_', '-') for k in missing)} are not supported)")


def device_and_dtype(args: argparse.Namespace, local_rank: int) -> Tuple[str, str]:
    """``(device, dtype name)`` from ``--device`` / ``--dtype``: cuda when present (this rank's GPU),
    bfloat16 on cuda and float32 on cpu by default; a UsageError when cuda is asked for and absent."""
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is visible (or this torch has no CUDA)")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise UsageError(f"--device cuda: LOCAL_RANK {local_rank} but only {count} visible CUDA devices")
        device = f"cuda:{local_rank}"
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    return device, dtype


def check(args: argparse.Namespace, local_rank: int = 0) -> Plan:
    """Check every argument, file and model folder; raise ``UsageError`` on the first bad one."""
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens}: must be >= 1")
    for flag, value in (("--src-lang", args.src_lang), ("--tgt-lang", args.tgt_lang)):
        try:
            _generation().language_name(value)
        except ValueError as exc:
            raise UsageError(f"{flag} {value}: {_one_line(exc).removeprefix('language: ')}") from None
    if args.baseline and args.ref is None:
        raise UsageError("--baseline: needs --ref (it prints the scores of both systems)")
    sources = read_lines(args.input, "--input")
    if not sources:
        raise UsageError(f"--input {args.input}: no lines to translate")
    refs = None
    if args.ref is not None:
        refs = read_lines(args.ref, "--ref")
        if len(refs) != len(sources):
            raise UsageError(f"--ref {args.ref}: {len(refs)} lines, but --input {args.input} has {len(sources)}")
    if args.output is not None:
        _check_output(args.output, [args.input, args.ref])
    weights = parse_weights(args.weights, 1 + len(args.small))
    decode_options(args)  # everything but --top-k's upper bound, which needs the models' configs
    models = [("--large", args.large)] + [("--small", s) for s in args.small]
    for flag, name in models:
        _check_model(name, flag, need_tokenizer=args.tokenizer is None)
    if args.tokenizer is not None:
        if os.path.isdir(args.tokenizer):
            if not _has_tokenizer(args.tokenizer):
                raise UsageError(f"--tokenizer {args.tokenizer}: no tokenizer files in this folder")
        elif not _is_hub_id(args.tokenizer):
            raise UsageError(f"--tokenizer {args.tokenizer}: tokenizer folder not found")
    device, dtype = device_and_dtype(args, local_rank)
    vocab = min(_model_vocab(name, flag) for flag, name in models)
    decode = decode_options(args, vocab)
    _check_generator_accepts(decode)
    return Plan(sources=sources, refs=refs, large=args.large, small=list(args.small), tokenizer=args.tokenizer,
                weights=weights, decode=decode, device=device, dtype=dtype, output=args.output,
                src_lang=args.src_lang, tgt_lang=args.tgt_lang, batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens, baseline=args.baseline, progress=args.progress)


# --- work split -----------------------------------------------------------------------------------

def dist_env() -> Tuple[int, int, int]:
    """``(world_size, rank, local_rank)`` from torchrun's environment (1, 0, 0 without it)."""
    def env_int(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            raise UsageError(f"environment variable {name}={os.environ[name]!r}: not an integer") from None
    world, rank = env_int("WORLD_SIZE", 1), env_int("RANK", 0)
    local = env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK={rank} and WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    return world, rank, local


def make_batches(sources: Sequence[str], batch_size: int) -> List[List[int]]:
    """Line indices grouped into batches of similar length (longest first; less padding), the
    same on every rank."""
    order = sorted(range(len(sources)), key=lambda i: (-len(sources[i]), i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def rank_batches(batches: Sequence[List[int]], world: int, rank: int) -> List[List[int]]:
    """This rank's batches: every ``world``-th, starting at ``rank`` (so each batch is decoded
    exactly as a single process would decode it)."""
    return list(batches[rank::world])


# --- running --------------------------------------------------------------------------------------

def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def attention_implementation(device: str, dtype: str) -> Optional[str]:
    """``"flash_attention_2"`` for half-precision models on a GPU when flash-attn is installed,
    else None (each model keeps its own default, e.g. SDPA)."""
    if not device.startswith("cuda") or dtype not in ("bfloat16", "float16"):
        return None
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else None


def _load(plan: Plan):
    """``(large, [small, ...], tokenizer)`` on the plan's device and dtype, in eval mode.

    ``tokenizer``: the ``--tokenizer`` one, or one entry per model: None for a model folder that
    holds a tokenizer (``CollabGenerator`` loads it, and checks that all agree), else the
    tokenizer loaded from the model's name (a Hub id)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # one progress bar: the sentences'
    dtype = getattr(torch, plan.dtype)
    attention = attention_implementation(plan.device, plan.dtype)
    extra = {} if attention is None else {"attn_implementation": attention}

    def model(name: str, flag: str):
        try:
            m = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **extra)
        except Exception as exc:
            raise UsageError(f"{flag} {name}: cannot load the model ({_one_line(exc)})") from None
        return m.to(plan.device).eval()

    def tokenizer(name: str, flag: str):
        try:
            return AutoTokenizer.from_pretrained(name)
        except Exception as exc:
            raise UsageError(f"{flag} {name}: cannot load its tokenizer ({_one_line(exc)})") from None

    named = [("--large", plan.large)] + [("--small", s) for s in plan.small]
    if plan.tokenizer is not None:
        tok = tokenizer(plan.tokenizer, "--tokenizer")
    else:
        tok = [None if os.path.isdir(name) else tokenizer(name, flag) for flag, name in named]
        tok = None if all(t is None for t in tok) else tok
    return model(plan.large, "--large"), [model(s, "--small") for s in plan.small], tok


def clean(hypothesis: str) -> str:
    """A hypothesis as one line of the output file (any line break in it becomes a space)."""
    return " ".join(hypothesis.splitlines()).strip()


def translate_batches(generator, plan: Plan, batches: Sequence[List[int]], desc: str, show: bool) -> Dict[int, str]:
    """``{line index: hypothesis}`` for the lines of ``batches``, with a progress bar on stderr."""
    import torch
    from tqdm import tqdm

    out: Dict[int, str] = {}
    total = sum(len(b) for b in batches)
    with torch.inference_mode(), tqdm(total=total, desc=desc, unit="sent", file=sys.stderr,
                                      disable=not show, dynamic_ncols=True) as bar:
        for batch in batches:
            hyps = generator.translate([plan.sources[i] for i in batch], src_lang=plan.src_lang,
                                       tgt_lang=plan.tgt_lang, batch_size=len(batch),
                                       max_new_tokens=plan.max_new_tokens, sentence_ids=list(batch), **plan.decode)
            if len(hyps) != len(batch):
                raise RuntimeError(f"CollabGenerator.translate returned {len(hyps)} texts for {len(batch)}")
            out.update((i, clean(h)) for i, h in zip(batch, hyps))
            bar.update(len(batch))
    return out


def gather(local: Dict[int, str], world: int, rank: int) -> Optional[Dict[int, str]]:
    """Every rank's hypotheses, merged on rank 0 (None on the other ranks)."""
    if world == 1:
        return local
    import torch.distributed as dist

    parts = [None] * world if rank == 0 else None
    dist.gather_object(local, parts, dst=0)
    if rank != 0:
        return None
    merged: Dict[int, str] = {}
    for part in parts:
        merged.update(part)
    return merged


def write_atomic(path: str, lines: Sequence[str]) -> None:
    """``lines`` (one per line) to ``path`` via a temporary file in the same folder and ``os.replace``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(line + "\n" for line in lines)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def system_name(plan: Plan) -> str:
    return f"collab (large + {len(plan.small)} small)" if plan.small else "large model"


def format_scores(rows: Sequence[Tuple[str, Dict[str, object]]]) -> str:
    """One system: sacrebleu's lines and the signatures; several: a table, then the signatures."""
    first = rows[0][1]
    if len(rows) == 1:
        return (f"{first['bleu_text']}\n  signature: {first['bleu_signature']}\n"
                f"{first['chrf_text']}\n  signature: {first['chrf_signature']}")
    width = max(len("system"), *(len(name) for name, _ in rows))
    lines = [f"{'system':<{width}}  {'BLEU':>6}  {'chrF':>6}", f"{'-' * width}  {'-' * 6}  {'-' * 6}"]
    lines += [f"{name:<{width}}  {s['bleu']:>6.2f}  {s['chrf']:>6.2f}" for name, s in rows]
    lines += [f"BLEU signature: {first['bleu_signature']}", f"chrF signature: {first['chrf_signature']}"]
    return "\n".join(lines)


def _usage_error(exc: UsageError, rank: int = 0) -> int:
    where = f" (rank {rank})" if rank else ""
    print(f"{PROG}: error{where}: {exc}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    """The ``translate`` command; returns the exit status."""
    rank = 0
    try:
        world, rank, local_rank = dist_env()
        plan = check(args, local_rank)
    except UsageError as exc:
        return _usage_error(exc, rank)
    import torch.distributed as dist

    distributed = world > 1
    if distributed:
        dist.init_process_group("gloo")  # only Python objects cross ranks, whatever the models' device
    try:
        return _run(plan, world, rank)
    except UsageError as exc:
        return _usage_error(exc, rank)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def _run(plan: Plan, world: int, rank: int) -> int:
    from .generation import CollabGenerator
    from .metrics import corpus_scores

    large, small, tokenizer = _load(plan)
    mine = rank_batches(make_batches(plan.sources, plan.batch_size), world, rank)
    show = plan.progress and rank == 0
    suffix = f" (rank 0 of {world})" if world > 1 else ""
    try:
        systems = [(system_name(plan), CollabGenerator(large, small, weights=plan.weights, tokenizer=tokenizer))]
        if plan.baseline:
            large_tok = tokenizer[0] if isinstance(tokenizer, list) else tokenizer
            systems.append(("large model alone", CollabGenerator(large, [], weights=[1.0], tokenizer=large_tok)))
    except ValueError as exc:  # e.g. the models' tokenizers differ
        raise UsageError(_one_line(exc)) from None
    results = []
    for name, generator in systems:
        local = translate_batches(generator, plan, mine, desc=name + suffix, show=show)
        results.append((name, gather(local, world, rank)))
    if rank != 0:
        return 0
    hyps = [[merged[i] for i in range(len(plan.sources))] for _, merged in results]
    if plan.output is not None:
        write_atomic(plan.output, hyps[0])
        score_stream = sys.stdout
    else:
        sys.stdout.write("".join(h + "\n" for h in hyps[0]))
        sys.stdout.flush()
        score_stream = sys.stderr
    if plan.refs is not None:
        rows = [(name, corpus_scores(h, plan.refs, plan.tgt_lang)) for (name, _), h in zip(results, hyps)]
        print(format_scores(rows), file=score_stream, flush=True)
    return 0


__all__ = ["Plan", "UsageError", "add_arguments", "check", "make_batches", "rank_batches", "read_lines", "run",
           "write_atomic"]
