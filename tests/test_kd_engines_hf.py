"""``SelfEvolutionKDTrainer`` under multi-process engines on two CPU processes (gloo): DDP through
``Trainer.train()`` and the trainer's loss path on an FSDP2 (``fully_shard``) student, for a whole student and
PEFT LoRA students with and without an adapter on lm_head: the losses and final parameters of one process on
the whole batches (tests/kd_engines_hf_worker.py). One spawn of the ranks runs every case."""

import time

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("peft")

import torch.multiprocessing as mp  # noqa: E402

from . import kd_engines_hf_worker as worker  # noqa: E402

TIMEOUT_S = 150


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kd_engines_hf")
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


@pytest.mark.parametrize("case", list(worker.CASES))
def test_same_losses_and_parameters_as_one_process(ranks, case):
    for rank, results in enumerate(ranks):
        assert results[case] is None, f"rank {rank}:\n{results[case]}"
