"""``SelfEvolutionKDTrainer`` under multi-process engines on two CPU processes (gloo): DDP through
``Trainer.train()`` and the trainer's loss path on an FSDP2 (``fully_shard``) student, for a whole student and
PEFT LoRA students with and without an adapter on lm_head: the losses and final parameters of one process on
the whole batches (tests/kd_engines_hf_worker.py). One spawn of the ranks runs every case."""

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("peft")


from . import kd_engines_hf_worker as worker  # noqa: E402
from .spawn import run_ranks  # noqa: E402

TIMEOUT_S = 150


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kd_engines_hf")
    return run_ranks(worker.worker, tmp, worker.WORLD_SIZE, TIMEOUT_S, "the ranks")


@pytest.mark.parametrize("case", list(worker.CASES))
def test_same_losses_and_parameters_as_one_process(ranks, case):
    for rank, results in enumerate(ranks):
        assert results[case] is None, f"rank {rank}:\n{results[case]}"
