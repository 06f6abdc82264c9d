"""The ``mtkernels`` command.

    mtkernels bench [--out DIR] [--quick] [--backend NAME] [--no-compile] [--no-kd] [--no-generation] [--no-mumo]
    mtkernels translate --large DIR --small DIR ... --src-lang ja --tgt-lang en --input FILE [--ref FILE] ...
    mtkernels mumo vocab|train|generate ...
    mtkernels backends
    mtkernels build [--cuda-arch 8.0,9.0] [--dry-run]

``bench`` times the collaborative-decoding ops on every available fused backend against the
PyTorch chains they replace, prints one line per case as it runs and then a table, and writes
``DIR/collab.json`` and ``DIR/collab_speedup_vs_vocab.png`` (default DIR: ``bench-results``); then
the self-evolution KD loss (``DIR/kd.json``) and end-to-end generation, ``CollabGenerator`` against
a proxy-tuning loop of Hugging Face forwards and warpers (``DIR/generation.json``), the MuMo ops
beside their eager chains (``DIR/mumo.json``), and MuMo generation against plain greedy decoding on
a synthetic Japanese corpus (``DIR/mumo_generation.json``).

``translate`` translates a file with collaborative decoding and scores it (``mtkernels.translate``);
``mumo`` builds a monolingual vocabulary, trains a MuMo head and generates with it (``mtkernels.mumo.cli``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from typing import Dict, Optional, Sequence

import torch

import mtkernels

from . import translate as translate_cmd
from .mumo import cli as mumo_cli

# The bench modules (which import transformers) are imported by the commands that use them.

JSON_NAME = "collab.json"
KD_JSON_NAME = "kd.json"
GENERATION_JSON_NAME = "generation.json"
MUMO_JSON_NAME = "mumo.json"
MUMO_GENERATION_JSON_NAME = "mumo_generation.json"
PLOT_NAME = "collab_speedup_vs_vocab.png"


def _one_line_error(prog: str, message: str) -> None:
    """argparse's error, on one line (no usage block): ``prog: error: message``, exit status 2."""
    print(f"{prog}: error: {message} (see {prog} --help)", file=sys.stderr)
    raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtkernels", description="mtkernels utilities")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="benchmark the fused ops against eager, compiled and HF chains")
    bench.add_argument("--out", default="bench-results", help="output folder (default: bench-results)")
    bench.add_argument("--quick", action="store_true", help="small shapes and few repeats (for tests)")
    bench.add_argument("--backend", default=None,
                       help="time only this backend (default: every available one but reference)")
    bench.add_argument("--no-compile", dest="compile", action="store_false",
                       help="skip the torch.compile baseline")
    bench.add_argument("--no-kd", dest="kd", action="store_false", help="skip the self-evolution KD loss")
    bench.add_argument("--no-generation", dest="generation", action="store_false",
                       help="skip end-to-end generation (CollabGenerator against a proxy-tuning loop)")
    bench.add_argument("--no-mumo", dest="mumo", action="store_false",
                       help="skip the MuMo ops and MuMo generation (MuMoGenerator against plain greedy decoding)")
    translate = commands.add_parser("translate", help="translate a file with collaborative decoding, score it",
                                    description="Translate a file with collaborative decoding (a large model "
                                                "and small ones) and score it with SacreBLEU.")
    translate_cmd.add_arguments(translate)
    translate.error = lambda message: _one_line_error(translate.prog, message)
    mumo = commands.add_parser("mumo", help="MuMo: build a monolingual vocabulary, train a head, generate with it")
    mumo_cli.add_arguments(mumo)
    commands.add_parser("backends", help="which backends can run here, and why not")
    build = commands.add_parser("build", help="compile the C++ (and CUDA) kernels now instead of on first use")
    build.add_argument("--cuda-arch", default=None,
                       help="also build the CUDA kernels for these architectures, e.g. 8.0,9.0 (default: the "
                            "visible GPUs', if any; needs a CUDA build of torch)")
    build.add_argument("--dry-run", action="store_true", help="print what would be built, and where, and stop")
    return parser


def _config(args: argparse.Namespace):
    from .bench import measure, problems
    from .bench.collab import bench_backends
    from .bench.runner import SuiteConfig

    if args.quick:
        sweep = problems.sweep_shapes(problems.QUICK_SWEEP_VOCABS, problems.QUICK_SWEEP_BATCHES)
        return SuiteConfig(problems.QUICK_SHAPES, sweep, bench_backends(args.backend), args.compile,
                           measure.QUICK_TIMING)
    return SuiteConfig(problems.DEFAULT_SHAPES, problems.sweep_shapes(), bench_backends(args.backend), args.compile)


def _progress(index: int, total: int, r: Dict) -> None:
    check = "checked" if r["check"] else "       "
    print(f"[{index:3d}/{total}] {r['op']:<16} M={r['M']} B={r['B']:<3} V={r['V']:<6} {r['dtype']} "
          f"{r['backend']:<15} ({r['device']}) {r['time_ms']:10.3f} ms  peak {r['peak_mb']:8.1f} MB  {check}",
          flush=True)


def _meta(config, args: argparse.Namespace, seconds: float) -> Dict:
    from .bench import measure, problems

    return {
        "mtkernels": mtkernels.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average_at_end": _load_average(),
        "backends_available": mtkernels.available_backends(), "backends_benchmarked": list(config.backends),
        "quick": args.quick, "torch_compile": args.compile, "timing": vars(config.timing),
        "top_k": problems.TOP_K, "top_p": problems.TOP_P, "weights": list(problems.WEIGHTS),
        "temperature": problems.TEMPERATURE, "logit_scale": problems.LOGIT_SCALE,
        "speedups": "time of the baseline / time of the case; eager = baseline (a) softmax+topk, compiled = "
                    "torch.compile of (a), hf = baseline (b) for the same op; pct_of_floor = read-once time / time",
        "peak_memory_method": measure.PEAK_MEMORY_METHOD, "seconds": round(seconds, 1),
    }


def _print_header(config) -> None:
    fused = ", ".join(config.backends) or "none (only baselines are timed)"
    print(f"mtkernels bench: fused backends: {fused}; torch.compile baseline: {'on' if config.compile else 'off'}; "
          f"{torch.get_num_threads()} CPU threads", flush=True)
    for name, state in mtkernels.backend_report().items():
        print(f"  {name:<9} {state}")
    load, cores = _load_average(), os.cpu_count() or 1
    if load is not None and load > 0.5 * cores:
        print(f"warning: load average {load:.1f} on {cores} cores: other processes compete for the CPU, "
              f"CPU timings will be noisy", flush=True)


def _load_average() -> Optional[float]:
    """The 1-minute load average, where the OS reports one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def bench(args: argparse.Namespace) -> int:
    """Run the benchmark set, print the table, write the JSON and the plot."""
    from .bench import report
    from .bench.runner import run_suite

    try:
        config = _config(args)
    except ValueError as exc:  # --backend naming an unavailable backend
        print(f"mtkernels bench: {exc}", file=sys.stderr)
        return 2
    _print_header(config)
    start = time.perf_counter()
    records = run_suite(config, on_record=_progress)
    print()
    print(report.format_table(records))
    json_path, plot_path = os.path.join(args.out, JSON_NAME), os.path.join(args.out, PLOT_NAME)
    report.write_json(json_path, records, _meta(config, args, time.perf_counter() - start))
    batches = sorted({s.batch for s in config.sweep}, reverse=True)
    report.plot_speedup_vs_vocab(plot_path, records, batches)
    print(f"\nwrote {json_path} and {plot_path}")
    if args.kd:
        _bench_kd(args)
    if args.generation:
        _bench_generation(args)
    if args.mumo:
        _bench_mumo_kernels(args)
        _bench_mumo_generation(args)
    return 0


def _bench_kd(args: argparse.Namespace) -> None:
    """The self-evolution KD loss (forward + backward) beside eager, Liger and the GEMM floor."""
    from .bench import kd as kd_bench
    from .bench import measure

    devices = kd_bench.devices()  # the CPU, and CUDA tensors where there is a GPU
    print(f"\nself-evolution KD loss, forward + backward, on {' and '.join(devices)} tensors")
    shapes = [(128, 64, 8000)] if args.quick else kd_bench.DEFAULT_SHAPES
    timing = measure.QUICK_TIMING if args.quick else measure.Timing()
    records = kd_bench.run(shapes, timing, devices=devices)
    print(kd_bench.format_table(records))
    path = os.path.join(args.out, KD_JSON_NAME)
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
    print(f"\nwrote {path}")


def _bench_generation(args: argparse.Namespace) -> None:
    """New tokens/s of CollabGenerator against the proxy-tuning loop, and where each step's time goes."""
    from .bench import generation as gen_bench

    config = gen_bench.QUICK if args.quick else gen_bench.DEFAULT
    if getattr(args, "backend", None) in ("cpu", "reference"):  # the models run on the CPU
        config = dataclasses.replace(config, backend=args.backend)
    print(f"\ngeneration, {config.describe()}", flush=True)
    missing = gen_bench.collab_generator_missing()
    if missing:
        print(f"  CollabGenerator skipped: {missing}", flush=True)
    records = gen_bench.run(config, on_record=lambda r: print("  " + gen_bench.format_progress(r), flush=True))
    print(gen_bench.format_table(records))
    path = os.path.join(args.out, GENERATION_JSON_NAME)
    gen_bench.write_json(path, records, config)
    print(f"\nwrote {path}")


def _bench_mumo_kernels(args: argparse.Namespace) -> None:
    """The MuMo ops beside their eager chains and floors: verification from logits and from hidden
    states, the head's top-k and its cross-entropy (forward + backward)."""
    from .bench import kd as kd_bench
    from .bench import measure, mumo_head, mumo_verify

    devices = kd_bench.devices()
    timing = measure.QUICK_TIMING if args.quick else measure.Timing()
    print(f"\nMuMo ops on {' and '.join(devices)} tensors", flush=True)
    if args.quick:
        verify = mumo_verify.run([(2, 10, 4, 8000)], [(2, 10, 4, 64, 8000)], timing, devices)
        head = mumo_head.run([(4, 64, 8000, 2000)], [(128, 64, 8000, 2000)], timing, devices)
    else:
        verify = mumo_verify.run(timing=timing, devices=devices)
        head = mumo_head.run(timing=timing, devices=devices)
    print(mumo_verify.format_table(verify))
    print()
    print(mumo_head.format_table(head))
    path = os.path.join(args.out, MUMO_JSON_NAME)
    with open(path, "w") as f:
        json.dump({"verify": verify, "head": head}, f, indent=1, default=str)
    print(f"\nwrote {path}")


def _bench_mumo_generation(args: argparse.Namespace) -> None:
    """The trie forward against K separate forwards; MuMoGenerator against plain greedy decoding."""
    from .bench import mumo_generation as mumo_bench

    config = mumo_bench.QUICK if args.quick else mumo_bench.DEFAULT
    print("\nMuMo generation (synthetic Japanese corpus, CPU): training a base model and a head", flush=True)
    records = mumo_bench.run(config)
    print(mumo_bench.format_table(records))
    path = os.path.join(args.out, MUMO_GENERATION_JSON_NAME)
    mumo_bench.write_json(path, records, config)
    print(f"\nwrote {path}")


def build(args: argparse.Namespace) -> int:
    """Compile (or with --dry-run describe) the CPU extension and, where asked or a GPU is visible, the CUDA one."""
    from . import jit

    try:
        plans = [jit.cpu_plan()]
        if args.cuda_arch or torch.cuda.is_available():
            plans.append(jit.cuda_plan(args.cuda_arch.split(",") if args.cuda_arch else None))
    except RuntimeError as exc:
        print(f"mtkernels build: {exc}", file=sys.stderr)
        return 2
    for plan in plans:
        flags = " ".join(plan.cuda_flags if plan.name == "cuda" else plan.cflags)
        print(f"{plan.name}: {len(plan.sources)} sources, flags {flags}\n  -> {plan.directory}")
        if not args.dry_run:
            jit.load(plan)
            print("  built")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command == "translate":
            _one_line_error("mtkernels translate", f"unrecognized arguments: {' '.join(extra)}")
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "translate":
        return translate_cmd.run(args)
    if args.command == "mumo":
        return mumo_cli.run(args)
    if args.command == "backends":
        for name, state in mtkernels.backend_report().items():
            print(f"{name:<9} {state}")
        return 0
    if args.command == "build":
        return build(args)
    return bench(args)


__all__ = ["main"]
