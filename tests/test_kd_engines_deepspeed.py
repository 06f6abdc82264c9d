"""``SelfEvolutionKDTrainer``'s loss under DeepSpeed ZeRO-3 on two CPU processes (DeepSpeed's CPU accelerator,
gloo): whole and PEFT LoRA students (with and without an lm_head adapter), every parameter partitioned, in a
``deepspeed.initialize`` loop calling the trainer's ``compute_loss`` (the teacher partitioned too) and in
``Trainer.train()`` with a ZeRO-3 config; the losses and final parameters of one process on the whole batches
(tests/kd_engines_deepspeed_worker.py). Skipped where DeepSpeed is not installed."""

import importlib.util
import time

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
if importlib.util.find_spec("deepspeed") is None:  # not imported here: the ranks pick its CPU accelerator
    pytest.skip("DeepSpeed is not installed", allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402

from . import kd_engines_deepspeed_worker as worker  # noqa: E402

TIMEOUT_S = 180


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kd_engines_deepspeed")
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
