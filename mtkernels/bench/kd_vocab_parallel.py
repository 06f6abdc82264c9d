"""The vocabulary-parallel KD loss (docs/kd.md, "Vocabulary-parallel") on P processes against one
process: forward + backward of :func:`mtkernels.self_evolution_kd_loss`, time and peak memory per rank,
and the bytes each rank hands to collectives per row.

- ``one-process``: the loss on the whole heads in one process (backend ``auto``), with the threads of
  all the ranks together on the CPU;
- ``vocab-parallel``: P processes (gloo, or NCCL on CUDA), rank r holding an even slice of the
  student's and the teacher's heads; each rank times the same fixed number of calls (a barrier before
  each: a rank that timed an extra call would wait forever in its collectives).

Bytes per row are the payloads this rank passes to ``all_reduce`` / ``all_gather`` during one call,
divided by N (a ring all-reduce moves about ``2 (P - 1) / P`` times its payload over the wire).

    python -m mtkernels.bench.kd_vocab_parallel                                 # CPU, 2 gloo ranks
    python -m mtkernels.bench.kd_vocab_parallel --device cuda --shape 4096 2048 128256   # 2 GPUs, NCCL
    python -m mtkernels.bench.kd_vocab_parallel --device cuda --dist-backend gloo        # 2 ranks on 1 GPU
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .measure import peak_memory_mb

Shape = Tuple[int, int, int]  # (N, H, V)
DEFAULT_SHAPE: Shape = (512, 256, 32000)
OP = "kd_vocab_parallel_fwd_bwd"


@dataclasses.dataclass(frozen=True)
class Config:
    shape: Shape = DEFAULT_SHAPE
    world_size: int = 2
    threads_per_rank: int = 1
    mode: str = "self_evolution"
    device: str = "cpu"
    dtype: str = "float32"
    dist_backend: Optional[str] = None  # None: nccl for CUDA across GPUs, else gloo
    warmup: int = 2
    runs: int = 5


def make_inputs(config: Config, device):
    n, h, v = config.shape
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::10] = -100
    dtype = getattr(torch, config.dtype)
    floats = (torch.randn(n, h, generator=g), torch.randn(v, h, generator=g) / h**0.5,
              torch.randn(n, h, generator=g), torch.randn(v, h, generator=g) / h**0.5)
    return tuple(t.to(device, dtype) for t in floats) + (labels.to(device),)


def step(h, w, ht, wt, labels, mode, group=None):
    import mtkernels

    h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
    loss = mtkernels.self_evolution_kd_loss(h, w, ht, wt, labels, mode=mode, vocab_parallel_group=group)
    loss.backward()
    return loss.detach()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fixed_median_ms(fn, device, config: Config, barrier=None) -> float:
    times = []
    for i in range(config.warmup + config.runs):
        if barrier is not None:
            barrier()
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        if i >= config.warmup:
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


@contextlib.contextmanager
def _counted_collectives(counter: Dict[str, int]):
    """Counts the payload bytes of this process's all_reduce / all_gather calls."""
    originals = dist.all_reduce, dist.all_gather

    def all_reduce(tensor, *args, **kwargs):
        counter["bytes"] += tensor.numel() * tensor.element_size()
        counter["calls"] += 1
        return originals[0](tensor, *args, **kwargs)

    def all_gather(tensors, tensor, *args, **kwargs):
        counter["bytes"] += tensor.numel() * tensor.element_size()
        counter["calls"] += 1
        return originals[1](tensors, tensor, *args, **kwargs)

    dist.all_reduce, dist.all_gather = all_reduce, all_gather
    try:
        yield counter
    finally:
        dist.all_reduce, dist.all_gather = originals


def _device_of(config: Config, rank: int) -> torch.device:
    if config.device != "cuda":
        return torch.device("cpu")
    return torch.device("cuda", rank % torch.cuda.device_count())


def _dist_backend(config: Config) -> str:
    if config.dist_backend:
        return config.dist_backend
    two_per_gpu = config.device == "cuda" and torch.cuda.device_count() < config.world_size
    return "nccl" if config.device == "cuda" and not two_per_gpu else "gloo"


def _rank(rank: int, config: Config, store: str, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = str(config.threads_per_rank)
    torch.set_num_threads(config.threads_per_rank)
    device = _device_of(config, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(_dist_backend(config), init_method=f"file://{store}", rank=rank,
                            world_size=config.world_size)
    try:
        h, w, ht, wt, labels = make_inputs(config, device)
        v = w.shape[0]
        bounds = [v * r // config.world_size for r in range(config.world_size + 1)]
        cols = slice(bounds[rank], bounds[rank + 1])
        w, wt = w[cols].contiguous(), wt[cols].contiguous()
        group = dist.group.WORLD

        def call():
            return step(h, w, ht, wt, labels, config.mode, group)

        time_ms = _fixed_median_ms(call, device, config, barrier=dist.barrier)
        dist.barrier()
        peak = peak_memory_mb(call, device)
        with _counted_collectives({"bytes": 0, "calls": 0}) as counted:
            call()
        record = dict(rank=rank, slice=cols.stop - cols.start, time_ms=time_ms, peak_mb=peak,
                      comm_bytes_per_row=counted["bytes"] / config.shape[0], collectives=counted["calls"])
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(record, f)
    finally:
        dist.destroy_process_group()


def _one_process(config: Config) -> Dict:
    threads = torch.get_num_threads()
    device = _device_of(config, 0)
    if device.type == "cpu":
        torch.set_num_threads(config.threads_per_rank * config.world_size)
    try:
        h, w, ht, wt, labels = make_inputs(config, device)

        def call():
            return step(h, w, ht, wt, labels, config.mode)

        return dict(time_ms=_fixed_median_ms(call, device, config), peak_mb=peak_memory_mb(call, device))
    finally:
        torch.set_num_threads(threads)


def run(config: Config = Config(), timeout_s: float = 600) -> List[Dict]:
    """Records: ``one-process``, then one ``vocab-parallel`` record per rank."""
    base = dict(op=OP, shape=list(config.shape), mode=config.mode, device=config.device, dtype=config.dtype)
    records = [dict(base, case="one-process", rank=None, processes=1, slice=config.shape[2], comm_bytes_per_row=0,
                    collectives=0, **_one_process(config))]
    with tempfile.TemporaryDirectory() as tmp:
        context = mp.start_processes(_rank, args=(config, os.path.join(tmp, "store"), tmp),
                                     nprocs=config.world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        try:
            while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"the vocabulary-parallel ranks did not finish within {timeout_s} s")
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
        for rank in range(config.world_size):
            with open(os.path.join(tmp, f"rank{rank}.json")) as f:
                records.append(dict(base, case="vocab-parallel", processes=config.world_size, **json.load(f)))
    return records


def format_table(records: List[Dict]) -> str:
    head = (f"{'case':<16}{'(N, H, V)':<22}{'device':<8}{'rank':>5}{'V_r':>8}{'time ms':>10}{'peak MB':>10}"
            f"{'comm B/row':>12}{'colls':>7}")
    lines = [head, "-" * len(head)]
    for r in records:
        rank = "-" if r["rank"] is None else str(r["rank"])
        lines.append(f"{r['case']:<16}{str(tuple(r['shape'])):<22}{r['device']:<8}{rank:>5}{r['slice']:>8}"
                     f"{r['time_ms']:>10.1f}{r['peak_mb']:>10.1f}{r['comm_bytes_per_row']:>12.1f}"
                     f"{r['collectives']:>7}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, metavar=("N", "H", "V"), default=list(DEFAULT_SHAPE))
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--threads-per-rank", type=int, default=1)
    parser.add_argument("--mode", default="self_evolution")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--dist-backend", choices=("gloo", "nccl"), default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", help="also write the records to this file")
    args = parser.parse_args(argv)
    config = Config(tuple(args.shape), args.world_size, args.threads_per_rank, args.mode, args.device, args.dtype,
                    args.dist_backend, runs=args.runs)
    records = run(config)
    print(format_table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
