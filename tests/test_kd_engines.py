"""The fused KD loss under multi-process engines on two CPU processes (gloo): a tiny student distilled for a
few steps under DDP and under FSDP2 (``fully_shard``, the loss in a method registered with
``register_fsdp_forward_method``), each rank on half of every batch, gives the losses and final parameters of
one process on the whole batches (tests/kd_engines_worker.py)."""

import time

import pytest
import torch
import torch.multiprocessing as mp

from . import kd_engines_worker as worker

TIMEOUT_S = 120


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kd_engines")
    context = mp.start_processes(worker.worker, args=(str(tmp / "store"), str(tmp)), nprocs=worker.WORLD_SIZE,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):
            if time.monotonic() >= deadline:
                pytest.fail(f"the ranks did not finish within {TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    return [torch.load(tmp / f"rank{rank}.pt") for rank in range(worker.WORLD_SIZE)]


@pytest.mark.parametrize("engine", sorted(worker.CASES))
def test_same_losses_and_parameters_as_one_process(ranks, engine):
    for rank, results in enumerate(ranks):
        assert results[engine] is None, f"rank {rank}:\n{results[engine]}"
