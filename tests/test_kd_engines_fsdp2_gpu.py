"""``SelfEvolutionKDTrainer.train()`` with accelerate's FSDP2 plugin on two GPUs (NCCL, one rank per GPU): the
losses and final parameters of one process on the whole batches, for whole and LoRA students
(tests/kd_engines_hf_worker.py). Needs two CUDA devices: on CPU accelerate silently falls back to DDP, and
tests/test_kd_engines_hf.py covers the same loss path on a ``fully_shard`` student there."""

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("peft")


from . import kd_engines_hf_worker as worker  # noqa: E402
from .spawn import run_ranks  # noqa: E402

TIMEOUT_S = 300

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < worker.WORLD_SIZE,
                                reason="accelerate's FSDP2 plugin needs CUDA devices (on CPU it falls back to DDP); "
                                       f"this test needs {worker.WORLD_SIZE}")


def test_trainer_fsdp2_plugin_same_as_one_process(tmp_path):
    for rank, results in enumerate(run_ranks(worker.gpu_worker, tmp_path, worker.WORLD_SIZE, TIMEOUT_S)):
        for kind, error in results.items():
            assert error is None, f"rank {rank}, {kind}:\n{error}"
