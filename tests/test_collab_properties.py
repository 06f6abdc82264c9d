"""Property tests over random shapes and parameters, and torch.compile over the ops.

Two kinds of cases, drawn at random against the reference (the spec):
* general: fp32/bf16/fp16 logits from a Gaussian, any weights and temperature. The float32 z of
  the kernels can only tie where the reference's float64 z does not, so ids may differ between
  tokens of equal float32 value;
* ties: logits drawn from a handful of values, weights in {±1, 0.5, 2} and a power-of-two
  temperature, so z is exact in float32 and ties are exact: every id (top-k order, the top-p
  crossing, the draw) must equal the reference's. top_p values are chosen so that no cumulative
  mass meets them exactly; rows where a filter's boundary is within float32 resolution of a token
  (the spec's comparisons are in float64) are exempt from the id check.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtkernels
from mtkernels.reference import collab as ref

from .conftest import FUSED_BACKENDS, device_for

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TIE_VALUES = [(-1.0, 0.0, 1.0), (-1.5, -0.25, 0.0, 0.75, 2.0), (0.0, 0.5)]
TOP_P = [1.0, 0.9549297, 0.6180339, 0.3183099]


@st.composite
def collab_case(draw):
    ties = draw(st.booleans())
    num_models = draw(st.integers(1, 3))
    batch = draw(st.integers(1, 4))
    vocab = draw(st.integers(1, 700))
    extra = [draw(st.integers(0, 5)) for _ in range(num_models)]
    dtypes = [draw(st.sampled_from(DTYPES)) for _ in range(num_models)]
    if ties:
        weights = [draw(st.sampled_from([1.0, -1.0, 0.5, 2.0])) for _ in range(num_models)]
        weights[0] = 1.0
        temperature = draw(st.sampled_from([1.0, 0.5, 2.0, 0.25]))
        values = draw(st.sampled_from(TIE_VALUES))
    else:
        weights = [draw(st.floats(-2.0, 2.0, allow_nan=False, width=32)) for _ in range(num_models)]
        weights[0] = draw(st.floats(0.25, 2.0, width=32))  # keep some spread in z
        temperature = draw(st.floats(0.25, 4.0, width=32))
        values = None
    seed = draw(st.integers(0, 2**16))
    params = dict(
        temperature=temperature,
        top_k=draw(st.integers(0, min(vocab, 64))),
        top_p=draw(st.sampled_from(TOP_P)),
        min_p=draw(st.sampled_from([0.0, 0.05, 0.5])),
    )
    return num_models, batch, vocab, extra, dtypes, weights, values, seed, params


def _make_logits(batch, vocab, extra, dtypes, values, seed):
    g = torch.Generator().manual_seed(seed)
    if values is None:
        return [(torch.randn(batch, vocab + e, generator=g) * 2).to(d) for e, d in zip(extra, dtypes)]
    table = torch.tensor(values)
    logits = [table[torch.randint(0, len(values), (batch, vocab + e), generator=g)].to(d) for e, d in zip(extra, dtypes)]
    if vocab > 3:
        logits[0][0, vocab // 2] = float("-inf")  # a masked token
    return logits


def _near_a_boundary(z, top_k, top_p, min_p, tol=1e-5):
    """(B,) bool: rows where the reference's top-p or min-p decision is within float32 resolution
    of flipping (cumulative mass within tol of top_p, or a probability ratio within tol of min_p)."""
    values, _ = ref.sort_descending(z)
    rank = torch.arange(z.shape[1]).unsqueeze(0)
    keep = (values > float("-inf")) & ((top_k.unsqueeze(1) == 0) | (rank < top_k.unsqueeze(1)))
    keep[:, 0] = True
    probs = torch.softmax(values.masked_fill(~keep, float("-inf")), 1)
    cum = torch.cumsum(probs, 1)
    near = (((cum - top_p.double().unsqueeze(1)).abs() < tol) & keep).any(1) & (top_p < 1)
    ratio = torch.exp(values - values[:, :1])
    near |= (((ratio - min_p.double().unsqueeze(1)).abs() < tol) & keep).any(1) & (min_p > 0)
    return near


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=collab_case())
def test_every_backend_matches_reference(backend, case):
    num_models, batch, vocab, extra, dtypes, weights, values, seed, params = case
    ties = values is not None
    device = device_for(backend)
    logits = _make_logits(batch, vocab, extra, dtypes, values, seed)
    copies = [t.clone() for t in logits]
    k = max(1, params["top_k"])
    z = ref.combined_logits(logits, torch.tensor([weights]).expand(batch, -1),
                            torch.full((batch,), params["temperature"]), vocab)
    if not torch.isfinite(torch.logsumexp(z, 1)).all():
        return  # a row with every token masked: an error (tested elsewhere)

    # softmax: probabilities, lse, and the top-k ids (exact on ties)
    out = mtkernels.fused_collab_softmax([t.to(device) for t in logits], weights, top_k=k, vocab_size=vocab,
                                         temperature=params["temperature"], backend=backend)
    expected = mtkernels.fused_collab_softmax(logits, weights, top_k=k, temperature=params["temperature"],
                                              vocab_size=vocab, backend="reference")
    torch.testing.assert_close(out.lse.cpu(), expected.lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.probs.cpu(), expected.probs, rtol=1e-5, atol=1e-6)
    if ties:
        assert torch.equal(out.ids.cpu(), expected.ids)
    else:  # ids may differ only between tokens of equal value (float32 vs float64 rounding of the sum)
        torch.testing.assert_close(z.gather(1, out.ids.cpu()), z.gather(1, expected.ids), rtol=1e-5, atol=1e-5)

    # sampling: top-k -> top-p -> min-p, the drawn ids and their log-probabilities
    params["vocab_size"] = vocab
    ids, logprobs = mtkernels.fused_collab_sample([t.to(device) for t in logits], weights, return_logprobs=True,
                                                  generator=torch.Generator().manual_seed(seed), backend=backend,
                                                  **params)
    rids, rlogprobs = mtkernels.fused_collab_sample(logits, weights, return_logprobs=True, backend="reference",
                                                    generator=torch.Generator().manual_seed(seed), **params)
    rows = torch.full((batch,), 1.0)
    exempt = _near_a_boundary(z, (rows * params["top_k"]).long(), rows * params["top_p"], rows * params["min_p"])
    same = ids.cpu() == rids
    assert (same | exempt).all(), f"ids {ids.tolist()} != reference {rids.tolist()}"
    torch.testing.assert_close(logprobs.cpu()[same], rlogprobs[same], rtol=1e-4, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(copies, logits))


@pytest.mark.skipif("cpu" not in mtkernels.available_backends(), reason="needs the cpu backend")
@settings(max_examples=12, deadline=None, derandomize=True)
@given(batch=st.integers(1, 3), vocab=st.integers(16385, 40000), values=st.sampled_from(TIE_VALUES),
       top_p=st.sampled_from(TOP_P[1:]), seed=st.integers(0, 2**16))
def test_cpu_vocabulary_slices_match_reference_on_ties(batch, vocab, values, top_p, seed):
    """Large vocabularies split into slices per row (small batches); bf16 ties across slices."""
    logits = _make_logits(batch, vocab, [0, 3], [torch.bfloat16, torch.float16], values, seed)
    kwargs = dict(top_p=top_p, return_logprobs=True, temperature=0.5)
    for top_k in (0, 50):
        ids, logprobs = mtkernels.fused_collab_sample(logits, [1.0, -1.0], top_k=top_k, backend="cpu",
                                                      generator=torch.Generator().manual_seed(seed), **kwargs)
        rids, rlogprobs = mtkernels.fused_collab_sample(logits, [1.0, -1.0], top_k=top_k, backend="reference",
                                                        generator=torch.Generator().manual_seed(seed), **kwargs)
        z = ref.combined_logits(logits, torch.tensor([[1.0, -1.0]] * batch), torch.full((batch,), 0.5), vocab)
        rows = torch.ones(batch)
        exempt = _near_a_boundary(z, (rows * top_k).long(), rows * top_p, rows * 0)
        assert ((ids == rids) | exempt).all()
        torch.testing.assert_close(logprobs[~exempt], rlogprobs[~exempt], rtol=1e-4, atol=1e-4)
    out = mtkernels.fused_collab_softmax(logits, [1.0, -1.0], top_k=50, temperature=0.5, backend="cpu")
    expected = mtkernels.fused_collab_softmax(logits, [1.0, -1.0], top_k=50, temperature=0.5, backend="reference")
    assert torch.equal(out.ids, expected.ids)
    torch.testing.assert_close(out.lse, expected.lse)
    assert not math.isnan(float(out.probs.sum()))


@pytest.mark.parametrize("backend", ["reference"] + FUSED_BACKENDS)
def test_torch_compile_fullgraph(backend):
    device = device_for(backend)
    logits = [torch.randn(3, 1000, device=device), torch.randn(3, 1000, device=device).half()]

    def decode_step(large, small):
        out = mtkernels.fused_collab_softmax([large, small], [1.0, -0.5], top_k=8, backend=backend)
        ids = mtkernels.fused_collab_sample([large, small], [1.0, -0.5], top_k=20, top_p=0.9, greedy=True,
                                            backend=backend)
        z = mtkernels.collab_logits([large, small], [1.0, -0.5], backend=backend)
        return out.probs, out.ids, ids, z

    compiled = torch.compile(decode_step, fullgraph=True, backend="aot_eager" if device.type == "cpu" else "inductor")
    got = compiled(*logits)
    want = decode_step(*logits)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["reference"] + FUSED_BACKENDS)
def test_torch_compile_per_row_parameters(backend):
    """Per-row tensors of temperature / top_p / min_p work (and are checked) in compiled code."""
    device = device_for(backend)
    logits = [torch.randn(3, 500, device=device), torch.randn(3, 500, device=device).to(torch.bfloat16)]
    temperature = torch.tensor([0.5, 1.0, 2.0], device=device)
    top_p = torch.tensor([0.9, 1.0, 0.3], device=device)
    min_p = torch.tensor([0.0, 0.1, 0.05], device=device)

    def step(a, b, temperature, top_p, min_p, keys_seed):
        return mtkernels.fused_collab_sample([a, b], [1.0, 1.0], temperature=temperature, top_p=top_p, min_p=min_p,
                                             generator=torch.Generator().manual_seed(keys_seed), backend=backend)

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=False, backend="aot_eager" if device.type == "cpu" else "inductor")
    assert torch.equal(compiled(*logits, temperature, top_p, min_p, 3), step(*logits, temperature, top_p, min_p, 3))
