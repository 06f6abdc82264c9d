"""Spawn test ranks and collect what each wrote: one helper for every multi-process test.

A worker is ``worker(rank, store_path, out_dir)``: it joins a process group through the file store at
``store_path`` and writes its results to ``out_dir/rank{rank}.pt`` (``torch.save``)."""

import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
import torch
import torch.multiprocessing as mp


def run_ranks(worker: Callable, out_dir, world_size: int, timeout_s: float, what: str = "the ranks") -> List:
    """Start ``world_size`` spawned ranks of ``worker``, wait at most ``timeout_s`` (a rank's exception
    is raised here), terminate any left, and return each rank's saved results in rank order."""
    out_dir = Path(out_dir)
    context = mp.start_processes(worker, args=(str(out_dir / "store"), str(out_dir)), nprocs=world_size,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):  # returns as each rank ends
            if time.monotonic() >= deadline:
                pytest.fail(f"{what} did not finish within {timeout_s} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(world_size)]


def run_cases(rank: int, store_path: str, out_dir, world_size: int, cases: Dict[str, Callable[[], None]],
              backend: str = "gloo", env: Optional[Dict[str, str]] = None, extra: Optional[Callable[[], Dict]] = None,
              barrier_each: bool = True) -> None:
    """The worker side: join the group, run every case (a case's exception becomes its traceback, the
    others still run; a barrier after each keeps the ranks in step), then save ``{name: None or
    traceback}`` (plus ``extra()``'s entries) to ``out_dir/rank{rank}.pt``. ``cases`` may be a callable
    returning the dict, evaluated after the group is joined (for set-up that needs it)."""
    import os
    import traceback

    import torch.distributed as dist

    os.environ.update({"OMP_NUM_THREADS": "1", **(env or {})})
    if backend == "gloo":
        torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"file://{store_path}", rank=rank, world_size=world_size)
    results: Dict[str, Optional[str]] = {}
    try:
        for name, fn in (cases() if callable(cases) else cases).items():
            try:
                fn()
                results[name] = None
            except Exception:
                results[name] = traceback.format_exc()
            if barrier_each:
                dist.barrier()
        if extra is not None:
            results.update(extra())
        dist.barrier()
    finally:
        torch.save(results, os.path.join(str(out_dir), f"rank{rank}.pt"))
        dist.destroy_process_group()
