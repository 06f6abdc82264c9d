"""The chunked linear-loss driver (mtkernels/ops/chunked_loss.py) with a plain cross-entropy row
kernel: concatenated linear blocks, frozen blocks, given logits, and the chunk plan."""

import pytest
import torch

from mtkernels.ops import chunked_loss as cl


def _cross_entropy_rows(labels, loss_out, scale):
    """A row kernel: per-row CE, the chunk overwritten by d(scale_i · CE_i)/d logits."""

    def row_kernel(rows, s, t):
        assert t is None
        log_q = torch.log_softmax(s, dim=1)
        loss_out[rows] = -log_q.gather(1, labels[rows, None]).squeeze(1)
        grad = log_q.exp()
        grad[torch.arange(s.shape[0]), labels[rows]] -= 1
        s.copy_(grad * scale[rows, None])

    return row_kernel


@pytest.mark.parametrize("chunk", [1, 5, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_concatenated_blocks_match_autograd(chunk, dtype):
    g = torch.Generator().manual_seed(0)
    n, d_base, d_mono, v_base, v_mono = 13, 8, 6, 1030, 37  # a block wider than CPU_VOCAB_BLOCK, odd sizes
    hidden = torch.randn(n, d_base, generator=g).to(dtype)
    w_base = (torch.randn(v_base, d_base, generator=g) / 3).to(dtype)
    feats = torch.randn(n, d_mono, generator=g).to(dtype).requires_grad_()
    w_mono = (torch.randn(v_mono, d_mono, generator=g) / 3).to(dtype).requires_grad_()
    b_mono = (torch.randn(v_mono, generator=g) / 10).to(dtype).requires_grad_()
    labels = torch.randint(0, v_base + v_mono, (n,), generator=g)
    scale = torch.rand(n, generator=g) + 0.5

    source = cl.LinearLogits([cl.LinearBlock(hidden, w_base, None, needs_grad=False),
                              cl.LinearBlock(feats, w_mono, b_mono, needs_grad=True)])
    assert source.vocab == v_base + v_mono
    loss = torch.empty(n)
    grads = cl.chunked_pass(source, None, n, chunk, _cross_entropy_rows(labels, loss, scale), want_grad=True)
    assert grads[0] is None  # the frozen block gets nothing

    logits = torch.cat([(hidden @ w_base.T).float(), torch.addmm(b_mono, feats, w_mono.T).float()], dim=1)
    want = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    (want * scale).sum().backward()
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(loss, want.detach(), **tol)
    torch.testing.assert_close(grads[1].x.float(), feats.grad.float(), **tol)
    torch.testing.assert_close(grads[1].weight, w_mono.grad.float(), **tol)
    torch.testing.assert_close(grads[1].bias, b_mono.grad.float(), **tol)
    assert grads[1].x.dtype == dtype and grads[1].weight.dtype == torch.float32


def test_given_logits_source():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(9, 50, generator=g, dtype=torch.float16)
    labels = torch.randint(0, 50, (9,), generator=g)
    loss = torch.empty(9)
    grads = cl.chunked_pass(cl.GivenLogits(logits), None, 9, 4, _cross_entropy_rows(labels, loss, torch.ones(9)),
                            want_grad=True)
    x = logits.float().requires_grad_()
    torch.nn.functional.cross_entropy(x, labels, reduction="sum").backward()
    assert grads[0].dtype == torch.float16
    torch.testing.assert_close(grads[0].float(), x.grad, rtol=1e-3, atol=1e-3)
    assert logits.dtype == torch.float16  # the caller's logits are not overwritten


def test_without_gradients_nothing_is_allocated_for_them():
    source = cl.LinearLogits([cl.LinearBlock(torch.randn(4, 3), torch.randn(7, 3))])
    loss = torch.empty(4)
    assert cl.chunked_pass(source, None, 4, 2, _cross_entropy_rows(torch.zeros(4, dtype=torch.long), loss,
                                                                    torch.ones(4)), want_grad=False) is None
    assert torch.isfinite(loss).all()


def test_chunk_plan_depends_only_on_global_sizes():
    # every rank of a vocabulary-parallel call passes the same global sizes and gets the same plan
    assert cl.chunk_plan(10_000, 2 * 128256, "cpu") == cl.CHUNK_BYTES["cpu"] // (4 * 2 * 128256)
    assert cl.chunk_plan(10_000, 2 * 128256, "cuda") == cl.CHUNK_BYTES["cuda"] // (4 * 2 * 128256)
    assert cl.chunk_plan(3, 10, "cpu") == 3  # never more rows than there are
    assert cl.chunk_plan(100, 10**12, "cpu") == 1  # at least one row
    assert cl.chunk_plan(100, 10, "cpu", chunk_size=7) == 7
    assert [(r.start, r.stop) for r in cl.row_chunks(10, 4)] == [(0, 4), (4, 8), (8, 10)]
