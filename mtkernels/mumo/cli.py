"""``mtkernels mumo``: build a monolingual vocabulary, train a head, generate with it.

    mtkernels mumo vocab --base-tokenizer DIR (--words FILE | --target-tokenizer DIR) [--lang ja|ko] --out FILE
    mtkernels mumo train --base DIR --vocab FILE --texts FILE --out DIR [--steps 1500 --batch-size 16 ...]
    mtkernels mumo generate --base DIR --head DIR --input FILE [--output FILE] [--max-new-tokens 64]
                            [--k 10] [--greedy | --temperature T --seed S] [--batch-size 8]

Prompts are the input file's lines as text (continued by the model); outputs are the new text,
one line per prompt. Bad files and folders are one line on standard error and exit status 2,
before any model is loaded; output files are written atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List

from ..translate import DTYPES, UsageError, device_and_dtype, read_lines, write_atomic

LANG_SCRIPTS = {"ja": ("hiragana", "katakana", "cjk"), "ko": ("hangul",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="mumo_command", required=True)
    vocab = sub.add_parser("vocab", help="a monolingual vocabulary from a word list or a target tokenizer")
    vocab.add_argument("--base-tokenizer", required=True, metavar="DIR", help="the base model's tokenizer folder")
    src = vocab.add_mutually_exclusive_group(required=True)
    src.add_argument("--words", metavar="FILE", help="one word per line")
    src.add_argument("--target-tokenizer", metavar="DIR", help="a target-language tokenizer whose items are words")
    vocab.add_argument("--lang", choices=sorted(LANG_SCRIPTS), default="ja", help="script filter (default: ja)")
    vocab.add_argument("--out", required=True, metavar="FILE", help="the vocabulary (JSON)")

    train = sub.add_parser("train", help="train a MuMo head beside a frozen base model")
    train.add_argument("--base", required=True, metavar="DIR", help="the base model folder (with its tokenizer)")
    train.add_argument("--vocab", required=True, metavar="FILE", help="a vocabulary from `mtkernels mumo vocab`")
    train.add_argument("--texts", required=True, metavar="FILE", help="target-language texts, one per line")
    train.add_argument("--out", required=True, metavar="DIR", help="where the head is saved")
    train.add_argument("--steps", type=int, default=1500)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--warmup-ratio", type=float, default=0.1)
    train.add_argument("--max-length", type=int, default=256)
    train.add_argument("--seed", type=int, default=0)
    _device_arguments(train)

    gen = sub.add_parser("generate", help="generate with a MuMo head (candidates verified by the base model)")
    gen.add_argument("--base", required=True, metavar="DIR", help="the base model folder (with its tokenizer)")
    gen.add_argument("--head", required=True, metavar="DIR", help="a head from `mtkernels mumo train`")
    gen.add_argument("--input", required=True, metavar="FILE", help="prompts, one per line")
    gen.add_argument("--output", default=None, metavar="FILE", help="the new text per prompt (default: stdout)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--k", type=int, default=10, help="candidates per step (default: 10)")
    gen.add_argument("--batch-size", type=int, default=8)
    decode = gen.add_mutually_exclusive_group()
    decode.add_argument("--greedy", action="store_true", help="argmax of the verification score (default)")
    decode.add_argument("--temperature", type=float, default=None, help="sample from softmax(score / T)")
    gen.add_argument("--seed", type=int, default=0)
    _device_arguments(gen)


def _device_arguments(parser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when present")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: bfloat16 on cuda, float32 on cpu")


def _folder(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise UsageError(f"{what} {path}: no such folder")
    return path


def _file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path}: no such file")
    return path


def _out_folder(path: str, what: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{what} {path}: its folder {parent} does not exist")


def _positive(args, *names) -> None:
    for name in names:
        value = getattr(args, name)
        if value < 1:
            raise UsageError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {value}")


def _load_base(path: str, args):
    """The base model (frozen, eval mode) and its tokenizer, on ``--device`` in ``--dtype`` (the
    defaults of ``mtkernels translate``). The model's own attention: the trie step needs a 4-D mask,
    which flash-attention does not take."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, dtype_name = device_and_dtype(args, 0)
    dtype = getattr(torch, dtype_name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    except (OSError, ValueError) as exc:
        raise UsageError(f"--base {path}: cannot load a causal LM and its tokenizer ({str(exc).splitlines()[0]})")
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def _vocab(args) -> int:
    from transformers import AutoTokenizer

    from .vocab import MonoVocab

    _folder(args.base_tokenizer, "--base-tokenizer")
    _out_folder(args.out, "--out")
    scripts = LANG_SCRIPTS[args.lang]
    base = AutoTokenizer.from_pretrained(args.base_tokenizer)
    if args.words is not None:
        words = read_lines(args.words, "--words")
        vocab = MonoVocab.from_words(words, base, scripts=scripts)
    else:
        target = AutoTokenizer.from_pretrained(_folder(args.target_tokenizer, "--target-tokenizer"))
        vocab = MonoVocab.from_tokenizer(target, base, scripts=scripts)
    if len(vocab) == 0:
        raise UsageError("no word kept: none is in the script and of two or more base tokens")
    vocab.save(args.out)
    print(f"{len(vocab)} words -> {args.out}", file=sys.stderr)
    return 0


def _train(args) -> int:
    from .head import MuMoHead
    from .train import train_head
    from .vocab import MonoVocab

    _folder(args.base, "--base")
    _file(args.vocab, "--vocab")
    texts = [t for t in read_lines(args.texts, "--texts") if t.strip()]
    if not texts:
        raise UsageError(f"--texts {args.texts}: no text in the file")
    _positive(args, "steps", "batch_size", "max_length")
    try:
        vocab = MonoVocab.load(args.vocab)
    except (ValueError, KeyError) as exc:
        raise UsageError(f"--vocab {args.vocab}: {exc}")
    model, tokenizer = _load_base(args.base, args)
    try:
        head = MuMoHead(model, vocab)
    except ValueError as exc:
        raise UsageError(f"--vocab {args.vocab}: {exc}")
    result = train_head(model, head, tokenizer, texts, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, max_length=args.max_length,
                        seed=args.seed, logger=lambda line: print(line, file=sys.stderr))
    head.save_pretrained(args.out)
    print(f"head ({len(vocab)} words, final loss {result.losses[-1]:.4f}) -> {args.out}", file=sys.stderr)
    return 0


def _generate(args) -> int:
    import torch

    from ..generation.prompts import left_pad
    from .generator import MuMoGenerator
    from .head import CONFIG_NAME, MuMoHead

    _folder(args.base, "--base")
    _file(os.path.join(_folder(args.head, "--head"), CONFIG_NAME), "--head")
    prompts: List[str] = read_lines(args.input, "--input")
    if args.output is not None:
        _out_folder(args.output, "--output")
    _positive(args, "max_new_tokens", "k", "batch_size")
    if args.temperature is not None and not args.temperature > 0:
        raise UsageError(f"--temperature: expected a value > 0, got {args.temperature}")
    model, tokenizer = _load_base(args.base, args)
    try:
        head = MuMoHead.from_pretrained(args.head, model)
    except ValueError as exc:
        raise UsageError(f"--head {args.head}: {exc}")
    gen = MuMoGenerator(model, head, tokenizer, k=args.k)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs, steps, tokens, start = [], 0, 0, time.perf_counter()
    from tqdm.auto import tqdm

    for first in tqdm(range(0, len(prompts), args.batch_size), desc="mumo generate", unit="batch"):
        batch = prompts[first:first + args.batch_size]
        ids, mask = left_pad([tokenizer.encode(p) for p in batch], pad)
        out = gen.generate(ids, mask, max_new_tokens=args.max_new_tokens, greedy=args.temperature is None,
                           temperature=args.temperature or 1.0, seed=args.seed,
                           sentence_ids=torch.arange(first, first + len(batch)))
        outputs.extend(t.replace("\n", " ") for t in
                       tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True))
        steps += gen.last_stats.steps
        tokens += gen.last_stats.new_tokens
    seconds = time.perf_counter() - start
    if args.output is None:
        sys.stdout.write("".join(line + "\n" for line in outputs))
    else:
        write_atomic(args.output, outputs)
    print(f"{tokens} new tokens in {steps} steps ({tokens / max(steps, 1):.2f} tokens/step), "
          f"{tokens / seconds:.1f} tokens/s", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    """The ``mumo`` command; returns the exit status."""
    try:
        return {"vocab": _vocab, "train": _train, "generate": _generate}[args.mumo_command](args)
    except UsageError as exc:
        print(f"mtkernels mumo {args.mumo_command}: error: {exc}", file=sys.stderr)
        return 2
