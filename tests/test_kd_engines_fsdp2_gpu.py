"""``SelfEvolutionKDTrainer.train()`` with accelerate's FSDP2 plugin on two GPUs (NCCL, one rank per GPU): the
losses and final parameters of one process on the whole batches, for whole and LoRA students
(tests/kd_engines_hf_worker.py). Needs two CUDA devices: on CPU accelerate silently falls back to DDP, and
tests/test_kd_engines_hf.py covers the same loss path on a ``fully_shard`` student there."""

import time

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("peft")

import torch.multiprocessing as mp  # noqa: E402

from . import kd_engines_hf_worker as worker  # noqa: E402

TIMEOUT_S = 300

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < worker.WORLD_SIZE,
                                reason="accelerate's FSDP2 plugin needs CUDA devices (on CPU it falls back to DDP); "
                                       f"this test needs {worker.WORLD_SIZE}")


def test_trainer_fsdp2_plugin_same_as_one_process(tmp_path):
    context = mp.start_processes(worker.gpu_worker, args=(str(tmp_path / "store"), str(tmp_path)),
                                 nprocs=worker.WORLD_SIZE, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):
            if time.monotonic() >= deadline:
                pytest.fail(f"the ranks did not finish within {TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    for rank in range(worker.WORLD_SIZE):
        for kind, error in torch.load(tmp_path / f"rank{rank}.pt").items():
            assert error is None, f"rank {rank}, {kind}:\n{error}"
