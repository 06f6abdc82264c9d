"""The ``mtkernels`` command.

    mtkernels bench [--out DIR] [--quick] [--backend NAME] [--no-compile]
    mtkernels backends
    mtkernels build [--cuda-arch 8.0,9.0] [--dry-run]

``bench`` times the collaborative-decoding ops on every available fused backend against the
PyTorch chains they replace, prints one line per case as it runs and then a table, and writes
``DIR/collab.json`` and ``DIR/collab_speedup_vs_vocab.png`` (default DIR: ``bench-results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Dict, Optional, Sequence

import torch

import mtkernels

from .bench import kd as kd_bench
from .bench import measure, problems, report
from .bench.collab import bench_backends
from .bench.runner import Record, SuiteConfig, run_suite

JSON_NAME = "collab.json"
KD_JSON_NAME = "kd.json"
PLOT_NAME = "collab_speedup_vs_vocab.png"


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
    commands.add_parser("backends", help="which backends can run here, and why not")
    build = commands.add_parser("build", help="compile the C++ (and CUDA) kernels now instead of on first use")
    build.add_argument("--cuda-arch", default=None,
                       help="also build the CUDA kernels for these architectures, e.g. 8.0,9.0 (default: the "
                            "visible GPUs', if any; needs a CUDA build of torch)")
    build.add_argument("--dry-run", action="store_true", help="print what would be built, and where, and stop")
    return parser


def _config(args: argparse.Namespace) -> SuiteConfig:
    if args.quick:
        sweep = problems.sweep_shapes(problems.QUICK_SWEEP_VOCABS, problems.QUICK_SWEEP_BATCHES)
        return SuiteConfig(problems.QUICK_SHAPES, sweep, bench_backends(args.backend), args.compile,
                           measure.QUICK_TIMING)
    return SuiteConfig(problems.DEFAULT_SHAPES, problems.sweep_shapes(), bench_backends(args.backend), args.compile)


def _progress(index: int, total: int, r: Record) -> None:
    check = "checked" if r["check"] else "       "
    print(f"[{index:3d}/{total}] {r['op']:<16} M={r['M']} B={r['B']:<3} V={r['V']:<6} {r['dtype']} "
          f"{r['backend']:<15} ({r['device']}) {r['time_ms']:10.3f} ms  peak {r['peak_mb']:8.1f} MB  {check}",
          flush=True)


def _meta(config: SuiteConfig, args: argparse.Namespace, seconds: float) -> Dict:
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


def _print_header(config: SuiteConfig) -> None:
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
    return 0


def _bench_kd(args: argparse.Namespace) -> None:
    """The self-evolution KD loss (forward + backward) beside eager, Liger and the GEMM floor."""
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
    args = _parser().parse_args(argv)
    if args.command == "backends":
        for name, state in mtkernels.backend_report().items():
            print(f"{name:<9} {state}")
        return 0
    if args.command == "build":
        return build(args)
    return bench(args)


__all__ = ["main"]
