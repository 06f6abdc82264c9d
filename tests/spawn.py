"""Spawn test ranks and collect what each wrote: one helper for every multi-process test.

A worker is ``worker(rank, store_path, out_dir)``: it joins a process group through the file store at
``store_path`` and writes its results to ``out_dir/rank{rank}.pt`` (``torch.save``)."""

import time
from pathlib import Path
from typing import Callable, List

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
