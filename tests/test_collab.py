"""The public collab ops on every backend against the reference (docs/collab.md)."""

import pytest
import torch

import mtkernels
from mtkernels.reference import collab as ref

from .conftest import FUSED_BACKENDS, device_for

ALL_BACKENDS = ["reference"] + FUSED_BACKENDS
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make_logits(batch, vocabs, dtypes, seed=0, device="cpu", scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, v, generator=g) * scale).to(dtype).to(device) for v, dtype in zip(vocabs, dtypes)]


def reference_z(logits, weights, temperature, vocab):
    b, m = logits[0].shape[0], len(logits)
    w = torch.as_tensor(weights, dtype=torch.float32).expand(b, m) if weights is not None else torch.ones(b, m)
    t = torch.as_tensor(temperature, dtype=torch.float32).expand(b)
    return ref.combined_logits([x.cpu() for x in logits], w, t, vocab)


def assert_topk_ids(ids, z, k):
    """``ids (B, k)`` are k distinct tokens whose z equal the k best values, descending; where the
    float64 values are separated by more than float32 rounding, they are exactly the reference's ids."""
    ids = ids.cpu()
    values, ref_ids = ref.sort_descending(z)
    torch.testing.assert_close(z.gather(1, ids), values[:, :k], rtol=1e-6, atol=1e-6)
    assert all(len(set(row)) == k for row in ids.tolist())
    gap = (values[:, :k] - values[:, 1:k + 1]).abs() if k < z.shape[1] else torch.full_like(values, 1.0)
    prev_gap = torch.cat([torch.full_like(gap[:, :1], 1.0), gap[:, :-1]], 1)[:, :k]
    separated = (gap[:, :k] > 1e-5 * values[:, :k].abs().clamp_min(1)) & (prev_gap > 1e-5 * values[:, :k].abs().clamp_min(1))
    assert torch.equal(ids[separated], ref_ids[:, :k][separated])


def assert_softmax_close(out, logits, weights, temperature, vocab, k):
    z = reference_z(logits, weights, temperature, vocab)
    lse = torch.logsumexp(z, 1)
    values, _ = ref.sort_descending(z)
    torch.testing.assert_close(out.lse.cpu(), lse.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.probs.cpu(), torch.exp(values[:, :k] - lse[:, None]).float(), rtol=1e-5, atol=1e-6)
    assert_topk_ids(out.ids, z, k)


# --- fused_collab_softmax -----------------------------------------------------------------------

@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_models", [1, 2, 3])
def test_softmax_small_odd_vocab(backend, dtype, num_models):
    device = device_for(backend)
    logits = make_logits(4, [1001] * num_models, [dtype] * num_models, device=device)
    weights = [1.0, 1.0, -1.0][:num_models]
    out = mtkernels.fused_collab_softmax(logits, weights, top_k=17, temperature=0.8, backend=backend)
    assert out.probs.shape == (4, 17) and out.probs.dtype == torch.float32 and out.ids.dtype == torch.int64
    assert_softmax_close(out, logits, weights, 0.8, 1001, 17)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("vocab", [32000, 128256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_large_vocab(backend, vocab, dtype):
    device = device_for(backend)
    logits = make_logits(2, [vocab, vocab + 256], [dtype, torch.float32], seed=1, device=device)
    out = mtkernels.fused_collab_softmax(logits, [1.0, 0.5], top_k=50, backend=backend)
    assert_softmax_close(out, logits, [1.0, 0.5], 1.0, vocab, 50)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_softmax_stacked_per_row_params_and_masks(backend):
    device = device_for(backend)
    x = torch.randn(3, 5, 777, generator=torch.Generator().manual_seed(2))
    x[0, :, 100:300] = float("-inf")  # masked in the large model: masked in z, whatever the weights
    x[2, 1, ::3] = float("-inf")  # masked in the anti-expert (weight -1): still masked
    weights = torch.tensor([[1.0, 1.0, -1.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [2.0, -1.0, 0.3], [1.0, 1.0, 1.0]])
    temperature = torch.tensor([1.0, 0.5, 2.0, 0.7, 1.3])
    out = mtkernels.fused_collab_softmax(x.to(device), weights.to(device), top_k=300, temperature=temperature,
                                         backend=backend)
    z = ref.combined_logits(list(x), weights, temperature, 777)
    assert torch.isinf(z[:, 100:300]).all() and (z[1, ::3] == float("-inf")).all()
    lse = torch.logsumexp(z, 1)
    values, ids = ref.sort_descending(z)
    torch.testing.assert_close(out.lse.cpu(), lse.float())
    torch.testing.assert_close(out.probs.cpu(), torch.exp(values[:, :300] - lse[:, None]).float())
    assert torch.equal(out.ids.cpu(), ids[:, :300])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_softmax_ties_lowest_id_first_and_padded_heads(backend):
    device = device_for(backend)
    x = torch.randint(-2, 2, (4, 130)).float()
    y = torch.randint(-2, 2, (4, 128)).to(torch.bfloat16)  # different V_m: the shared vocabulary is 128
    out = mtkernels.fused_collab_softmax([x.to(device), y.to(device)], top_k=40, backend=backend)
    assert_softmax_close(out, [x, y], None, 1.0, 128, 40)
    out = mtkernels.fused_collab_softmax([x.to(device), y.to(device)], top_k=5, vocab_size=100, backend=backend)
    assert_softmax_close(out, [x, y], None, 1.0, 100, 5)
    assert (out.ids < 100).all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_softmax_top_k_equal_to_vocab_sums_to_one(backend):
    device = device_for(backend)
    out = mtkernels.fused_collab_softmax(make_logits(3, [9, 9], DTYPES[:2], device=device), [0.3, 0.7], top_k=9,
                                         backend=backend)
    torch.testing.assert_close(out.probs.sum(1).cpu(), torch.ones(3))
    assert sorted(out.ids[0].tolist()) == list(range(9))


# --- collab_logits --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_collab_logits(backend, dtype):
    device = device_for(backend)
    logits = make_logits(3, [513, 600], [dtype, torch.float16], device=device)
    logits[1][0, 7] = float("-inf")
    z = mtkernels.collab_logits(logits, [1.0, -0.5], temperature=torch.tensor([1.0, 2.0, 0.5]), backend=backend)
    expected = reference_z(logits, [1.0, -0.5], torch.tensor([1.0, 2.0, 0.5]), 513).float()
    assert z.shape == (3, 513) and z.dtype == torch.float32 and z[0, 7] == float("-inf")
    torch.testing.assert_close(z.cpu(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_softmax_per_row_top_k_pads_past_each_rows_k(backend):
    """A (B,) top_k: the output width is its max; a row's entries past its own k are id -1, prob 0."""
    device = device_for(backend)
    logits = make_logits(3, [600, 600], [torch.float32, torch.bfloat16], seed=3, device=device)
    top_k = torch.tensor([1, 2, 5])
    out = mtkernels.fused_collab_softmax(logits, [1.0, -0.5], top_k=top_k, temperature=0.9, backend=backend)
    full = mtkernels.fused_collab_softmax(logits, [1.0, -0.5], top_k=5, temperature=0.9, backend=backend)
    assert out.ids.shape == (3, 5)
    past = torch.arange(5) >= top_k.unsqueeze(1)
    assert (out.ids.cpu()[past] == -1).all() and (out.probs.cpu()[past] == 0).all()
    assert torch.equal(out.ids.cpu()[~past], full.ids.cpu()[~past])
    assert torch.equal(out.probs.cpu()[~past], full.probs.cpu()[~past])
    assert torch.equal(out.lse, full.lse)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtypes", [[torch.float32] * 3, [torch.bfloat16, torch.float16, torch.float32]])
def test_collab_logits_are_float32_of_the_reference_exactly(backend, dtypes):
    """z = float32((Σ_m w_m x_m, float64 in model order) / τ in float64): bit-equal on every backend,
    with τ = 1 and τ != 1 (the division is not replaced by pre-scaled weights)."""
    device = device_for(backend)
    logits = make_logits(40, [1000, 1003, 1000], dtypes, seed=11, device=device)
    logits[2][3, 17] = float("-inf")
    temperature = torch.linspace(0.3, 2.5, 40)
    temperature[::5] = 1.0
    for weights, tau in [([1.0, 1.0, -1.0], 0.7), ([1.0, 1.0, -1.0], temperature), ([0.37, -1.3, 2.1], temperature)]:
        z = mtkernels.collab_logits(logits, weights, temperature=tau, backend=backend)
        expected = reference_z(logits, weights, tau, 1000).float()
        assert torch.equal(z.cpu(), expected)


def _reference_z_autograd(logits, weights, temperature, vocab):
    """The reference's z as a differentiable function of logits, weights (B, M) and temperature (B,)."""
    return ref.combined_logits(logits, weights, temperature, vocab).float()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_collab_logits_gradient(backend):
    """∂z_b/∂x_m[b, j] = w_bm / τ_b for j < V, 0 past V; weight and temperature tensors get theirs."""
    device = device_for(backend)
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(3, 70, generator=g), torch.randn(3, 64, generator=g).to(torch.bfloat16)]  # V = 64: x0 padded
    xs[1][0, 5] = float("-inf")  # a masked token: z = -inf there whatever the weights
    weights = torch.tensor([[1.0, -0.5], [0.3, 2.0], [1.0, 1.0]])
    temperature = torch.tensor([0.7, 1.0, 1.9])
    grad_z = torch.randn(3, 64, generator=g)
    grad_z[0, 5] = 0.0  # what a loss downstream of a masked token gives

    def grads(fn, on_device):
        leaves = [t.clone().to(device if on_device else "cpu").requires_grad_() for t in xs + [weights, temperature]]
        z = fn(leaves[:2], leaves[2], leaves[3])
        (z.float() * grad_z.to(z.device)).sum().backward()
        return [t.grad.cpu().float() for t in leaves]

    got = grads(lambda x, w, t: mtkernels.collab_logits(x, w, temperature=t, backend=backend), True)
    want = grads(lambda x, w, t: _reference_z_autograd(x, w, t, 64), False)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (got[0][:, 64:] == 0).all()
    torch.testing.assert_close(got[0][:, :64], grad_z * (weights[:, :1] / temperature[:, None]))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_collab_logits_gradcheck(backend):
    """Finite differences (float32 inputs: the op takes fp32/bf16/fp16 logits; z is linear in them)."""
    device = device_for(backend)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 9, generator=g, device="cpu").to(device).requires_grad_()
    y = torch.randn(2, 9, generator=g, device="cpu").to(device).requires_grad_()
    w = torch.tensor([0.5, -1.5], device=device, requires_grad=True)
    t = torch.tensor([0.75, 1.5], device=device, requires_grad=True)

    def fn(x, y, w, t):
        return mtkernels.collab_logits([x, y], w, temperature=t, backend=backend)

    with pytest.warns(UserWarning, match="double precision"):
        assert torch.autograd.gradcheck(fn, (x, y, w, t), eps=1e-2, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_op_registrations(backend):
    """torch.library's own checks of the three ops: schema, fake tensors (shapes and strides as the
    real outputs), autograd registration (collab_logits)."""
    from mtkernels.gumbel import row_keys
    from mtkernels.ops import collab as ops

    device = device_for(backend)
    x = [torch.randn(2, 12, device=device, requires_grad=True), torch.randn(2, 10, device=device).half()]
    w = torch.tensor([[1.0, -0.5], [2.0, 0.25]], device=device, requires_grad=True)
    t = torch.tensor([0.7, 1.0], device=device, requires_grad=True)
    torch.library.opcheck(ops._logits_op, (x, w, t, 10, 0, backend))
    x, w, t = [v.detach() for v in x], w.detach(), t.detach()
    keys = row_keys(2, device, torch.Generator(device=device).manual_seed(0))
    torch.library.opcheck(ops._softmax_topk_op, (x, w, t, 10, 3, torch.tensor([1, 3], device=device), 0, backend))
    for top_k, max_k, top_p, greedy in [(None, 0, torch.tensor([0.9, 0.5], device=device), False),
                                        (torch.tensor([2, 5], device=device), 5, None, True)]:
        torch.library.opcheck(ops._sample_op, (x, w, t, 10, top_k, max_k, top_p, None, greedy, keys, True, 0, backend))
