"""Checks that only a real GPU can make: no host sync on the GPU path, large shapes, bad rows marked."""

import pytest
import torch

import mtkernels

from .test_collab import assert_softmax_close, make_logits

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
GPU_BACKENDS = [b for b in ("triton", "cuda") if b in mtkernels.available_backends()]


@pytest.fixture(params=GPU_BACKENDS or [pytest.param("none", marks=pytest.mark.skip(reason="no GPU backend"))])
def gpu_backend(request):
    return request.param


@pytest.mark.parametrize("batch", [1, 32])
def test_sampling_needs_no_host_sync(gpu_backend, batch):
    logits = make_logits(batch, [128256] * 3, [torch.bfloat16] * 3, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    mtkernels.fused_collab_sample(logits, [1.0, 1.0, -1.0], top_k=50, backend=gpu_backend)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mtkernels.fused_collab_softmax(logits, [1.0, 1.0, -1.0], top_k=50, backend=gpu_backend)
        for kwargs in (dict(top_k=50, top_p=0.9), dict(top_p=0.9, min_p=0.05), dict(greedy=True)):
            mtkernels.fused_collab_sample(logits, [1.0, 1.0, -1.0], generator=generator, return_logprobs=True,
                                          backend=gpu_backend, **kwargs)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_large_batch_and_vocab(gpu_backend, dtype):
    logits = make_logits(64, [128256, 128256 + 64], [dtype, dtype], seed=2, device="cuda")
    out = mtkernels.fused_collab_softmax(logits, [1.0, 0.5], top_k=1024, backend=gpu_backend)
    assert_softmax_close(out, logits, [1.0, 0.5], 1.0, 128256, 1024)


def test_rows_without_a_distribution_are_marked(gpu_backend):
    x = torch.randn(3, 1000, device="cuda")
    x[0, 5] = float("nan")
    x[1] = float("-inf")
    out = mtkernels.fused_collab_softmax([x], top_k=4, backend=gpu_backend)
    assert torch.isnan(out.lse[:2]).all() and torch.isfinite(out.lse[2])
    for top_k in (0, 4):
        ids = mtkernels.fused_collab_sample([x], top_k=top_k, backend=gpu_backend)
        assert ids[0] == -1 and ids[1] == -1 and 0 <= ids[2] < 1000
