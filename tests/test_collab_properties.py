"""Property test over random shapes and parameters, and torch.compile over the ops."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtkernels
from mtkernels.reference import collab as ref

from .conftest import FUSED_BACKENDS, device_for

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@st.composite
def collab_case(draw):
    num_models = draw(st.integers(1, 3))
    batch = draw(st.integers(1, 4))
    vocab = draw(st.integers(1, 700))
    extra = [draw(st.integers(0, 5)) for _ in range(num_models)]
    dtypes = [draw(st.sampled_from(DTYPES)) for _ in range(num_models)]
    weights = [draw(st.floats(-2.0, 2.0, allow_nan=False, width=32)) for _ in range(num_models)]
    weights[0] = draw(st.floats(0.25, 2.0, width=32))  # keep some spread in z
    seed = draw(st.integers(0, 2**16))
    params = dict(
        temperature=draw(st.floats(0.25, 4.0, width=32)),
        top_k=draw(st.integers(0, min(vocab, 64))),
        top_p=draw(st.sampled_from([1.0, 0.95, 0.5, 0.1])),
        min_p=draw(st.sampled_from([0.0, 0.05, 0.5])),
    )
    return num_models, batch, vocab, extra, dtypes, weights, seed, params


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=collab_case())
def test_every_backend_matches_reference(backend, case):
    num_models, batch, vocab, extra, dtypes, weights, seed, params = case
    device = device_for(backend)
    g = torch.Generator().manual_seed(seed)
    logits = [(torch.randn(batch, vocab + e, generator=g) * 2).to(d) for e, d in zip(extra, dtypes)]
    copies = [t.clone() for t in logits]
    k = max(1, params["top_k"])

    out = mtkernels.fused_collab_softmax([t.to(device) for t in logits], weights, top_k=k, vocab_size=vocab,
                                         temperature=params["temperature"], backend=backend)
    expected = mtkernels.fused_collab_softmax(logits, weights, top_k=k, temperature=params["temperature"],
                                              vocab_size=vocab, backend="reference")
    torch.testing.assert_close(out.lse.cpu(), expected.lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.probs.cpu(), expected.probs, rtol=1e-5, atol=1e-6)
    z = ref.combined_logits(logits, torch.tensor([weights]).expand(batch, -1),
                            torch.full((batch,), params["temperature"]), vocab)
    # ids may differ only between tokens of equal value (float32 vs float64 rounding of the sum)
    torch.testing.assert_close(z.gather(1, out.ids.cpu()), z.gather(1, expected.ids), rtol=1e-5, atol=1e-5)

    params["vocab_size"] = vocab
    ids, logprobs = mtkernels.fused_collab_sample([t.to(device) for t in logits], weights, return_logprobs=True,
                                                  generator=torch.Generator().manual_seed(seed), backend=backend,
                                                  **params)
    rids, rlogprobs = mtkernels.fused_collab_sample(logits, weights, return_logprobs=True, backend="reference",
                                                    generator=torch.Generator().manual_seed(seed), **params)
    assert torch.equal(ids.cpu(), rids)
    torch.testing.assert_close(logprobs.cpu(), rlogprobs, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(copies, logits))


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
