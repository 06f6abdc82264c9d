"""Bad input raises a clear error naming the argument, before any kernel runs."""

import pytest
import torch

import mtkernels

from .conftest import FUSED_BACKENDS, device_for

ALL_BACKENDS = ["reference"] + FUSED_BACKENDS


def x(b=2, v=50, dtype=torch.float32):
    return torch.randn(b, v).to(dtype)


SOFTMAX_CASES = [
    (dict(logits=[]), ValueError, "logits"),
    (dict(logits=torch.randn(50)), ValueError, "logits"),
    (dict(logits=[x(), "not a tensor"]), TypeError, r"logits\[1\]"),
    (dict(logits=[x(), x(b=3)]), ValueError, "batch size"),
    (dict(logits=[x(dtype=torch.float64)]), TypeError, "dtype"),
    (dict(logits=[x().long()]), TypeError, "dtype"),
    (dict(logits=[torch.randn(2, 3, 4, 5)]), ValueError, "logits"),
    (dict(weights=[1.0, 2.0]), ValueError, "weights"),
    (dict(weights=torch.ones(3, 1)), ValueError, "weights"),
    (dict(weights=[float("nan")]), ValueError, "weights"),
    (dict(weights="1"), TypeError, "weights"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(top_k=51), ValueError, "top_k"),
    (dict(top_k=1.5), TypeError, "top_k"),
    (dict(top_k=torch.tensor([3, 0])), ValueError, "top_k"),
    (dict(top_k=torch.tensor([3, 4, 5])), ValueError, "top_k"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(temperature=torch.tensor([1.0, 0.0])), ValueError, "temperature"),
    (dict(vocab_size=51), ValueError, "vocab_size"),
    (dict(vocab_size=0), ValueError, "vocab_size"),
    (dict(backend="gpu"), ValueError, "backend"),
]


@pytest.mark.parametrize("kwargs,exc,match", SOFTMAX_CASES)
def test_softmax_rejects_bad_input(kwargs, exc, match):
    call = dict(logits=[x()], top_k=5)
    call.update(kwargs)
    logits = call.pop("logits")
    with pytest.raises(exc, match=match):
        mtkernels.fused_collab_softmax(logits, **call)


SAMPLE_CASES = [
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=torch.tensor([0.5, 0.0])), "top_p"),
    (dict(min_p=1.0), "min_p"),
    (dict(min_p=-0.1), "min_p"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=51), "top_k"),
]


@pytest.mark.parametrize("kwargs,match", SAMPLE_CASES)
def test_sample_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mtkernels.fused_collab_sample([x()], **kwargs)


def test_sample_rejects_bad_types():
    with pytest.raises(TypeError, match="greedy"):
        mtkernels.fused_collab_sample([x()], greedy=1)
    with pytest.raises(TypeError, match="generator"):
        mtkernels.fused_collab_sample([x()], generator=42)
    with pytest.raises(TypeError, match="top_p"):
        mtkernels.fused_collab_sample([x()], top_p=torch.tensor([1, 1]))


def test_unavailable_backend_is_a_clear_error():
    missing = [b for b in ("cpu", "triton", "cuda") if b not in mtkernels.available_backends()]
    for name in missing:
        with pytest.raises(RuntimeError, match=f"backend '{name}' is not available"):
            mtkernels.fused_collab_softmax([x()], top_k=2, backend=name)
    report = mtkernels.backend_report()
    assert set(report) == {"reference", "cpu", "triton", "cuda"}
    assert report["reference"].startswith("available")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_rows_without_a_distribution_raise_on_cpu(backend):
    device = device_for(backend)
    if device.type != "cpu":
        pytest.skip("on a GPU such rows are marked (lse NaN, id -1) instead of raising")
    nan_row = x()
    nan_row[1, 3] = float("nan")
    masked_row = x()
    masked_row[0] = float("-inf")
    inf_row = x()
    inf_row[0, 0] = float("inf")
    for bad, row in [(nan_row, 1), (masked_row, 0), (inf_row, 0)]:
        with pytest.raises(ValueError, match=rf"rows \[{row}\]"):
            mtkernels.fused_collab_softmax([bad], top_k=3, backend=backend)
        for top_k in (0, 3):
            with pytest.raises(ValueError, match=rf"rows \[{row}\]"):
                mtkernels.fused_collab_sample([bad], top_k=top_k, backend=backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_inputs_are_not_modified(backend):
    device = device_for(backend)
    logits = [x(4, 300).to(device), x(4, 310, torch.bfloat16).to(device)]
    logits[0][0, :5] = float("-inf")
    weights = torch.tensor([[1.0, -1.0]] * 4)
    temperature = torch.tensor([0.5, 1.0, 2.0, 1.0])
    before = [t.clone() for t in logits + [weights, temperature]]
    mtkernels.fused_collab_softmax(logits, weights, top_k=4, temperature=temperature, backend=backend)
    mtkernels.fused_collab_sample(logits, weights, top_p=0.5, temperature=temperature, backend=backend)
    mtkernels.collab_logits(logits, weights, temperature=temperature, backend=backend)
    for a, b in zip(before, logits + [weights, temperature]):
        assert torch.equal(a, b)
