"""``SelfEvolutionKDTrainer``'s loss under DeepSpeed ZeRO-3 on two CPU processes (DeepSpeed's CPU accelerator,
gloo): whole and PEFT LoRA students (with and without an lm_head adapter), every parameter partitioned, in a
``deepspeed.initialize`` loop calling the trainer's ``compute_loss`` (the teacher partitioned too) and in
``Trainer.train()`` with a ZeRO-3 config; the losses and final parameters of one process on the whole batches
(tests/kd_engines_deepspeed_worker.py). Skipped where DeepSpeed is not installed."""

import importlib.util

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
if importlib.util.find_spec("deepspeed") is None:  # not imported here: the ranks pick its CPU accelerator
    pytest.skip("DeepSpeed is not installed", allow_module_level=True)

from . import kd_engines_deepspeed_worker as worker  # noqa: E402
from .spawn import run_ranks  # noqa: E402

TIMEOUT_S = 180


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kd_engines_deepspeed")
    return run_ranks(worker.worker, tmp, worker.WORLD_SIZE, TIMEOUT_S, "the ranks")


@pytest.mark.parametrize("case", list(worker.CASES))
def test_same_losses_and_parameters_as_one_process(ranks, case):
    for rank, results in enumerate(ranks):
        assert results[case] is None, f"rank {rank}:\n{results[case]}"
