"""The fused KD loss under multi-process engines on two CPU processes (gloo): a tiny student distilled for a
few steps under DDP and under FSDP2 (``fully_shard``, the loss in a method registered with
``register_fsdp_forward_method``), each rank on half of every batch, gives the losses and final parameters of
one process on the whole batches (tests/kd_engines_worker.py)."""

import pytest

from . import kd_engines_worker as worker
from .spawn import run_ranks

TIMEOUT_S = 120


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kd_engines")
    return run_ranks(worker.worker, tmp, worker.WORLD_SIZE, TIMEOUT_S, "the ranks")


@pytest.mark.parametrize("engine", sorted(worker.CASES))
def test_same_losses_and_parameters_as_one_process(ranks, engine):
    for rank, results in enumerate(ranks):
        assert results[engine] is None, f"rank {rank}:\n{results[engine]}"
