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
    # values are checked as the kernels see them: in float32
    (dict(temperature=1e-300), ValueError, r"temperature: .*float32.*1e-300 is 0 in float32"),
    (dict(temperature=1e39), ValueError, r"temperature: .*1e\+39 overflows float32"),
    (dict(temperature=torch.tensor([1.0, 1e-300], dtype=torch.float64)), ValueError, "temperature"),
    (dict(temperature=torch.tensor([1.0, 1e39], dtype=torch.float64)), ValueError, "temperature"),
    (dict(weights=[1e300]), ValueError, r"weights: .*weights\[0\] = 1e\+300 \(1e\+300 overflows float32\)"),
    (dict(weights=[1e-300]), ValueError, r"weights: .*1e-300 is 0 in float32"),
    (dict(weights=torch.tensor([1e300], dtype=torch.float64)), ValueError, "weights"),
    (dict(weights=torch.tensor([[1.0], [1e-300]], dtype=torch.float64)), ValueError, "weights"),
    (dict(weights=[True]), TypeError, "weights"),
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
    (dict(top_p=1e-50), r"top_p: .*1e-50 is 0 in float32"),
    (dict(min_p=0.999999999), "min_p"),  # 1.0 in float32
    (dict(min_p=torch.tensor([0.1, 1.0])), "min_p"),
    (dict(top_p=torch.tensor([0.5, -1.0], dtype=torch.float64)), "top_p"),
]


@pytest.mark.parametrize("kwargs,match", SAMPLE_CASES)
def test_sample_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mtkernels.fused_collab_sample([x()], **kwargs)


def test_sample_rejects_bad_types():
    with pytest.raises(TypeError, match=r"top_p: expected a float in \(0, 1\].* got NoneType"):
        mtkernels.fused_collab_sample([x()], top_p=None)
    with pytest.raises(TypeError, match=r"min_p: expected a float in \[0, 1\).* got NoneType"):
        mtkernels.fused_collab_sample([x()], min_p=None)
    with pytest.raises(TypeError, match="temperature: expected a float"):
        mtkernels.fused_collab_sample([x()], temperature=None)
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


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_collab_logits_overflow_names_temperature_and_weights(backend):
    """Finite logits whose combination overflows float32 raise; -inf (masked) and +inf inputs do not."""
    device = device_for(backend)
    if device.type != "cpu":
        pytest.skip("overflow is detected on CPU tensors (on a GPU it would cost a host sync)")
    big = torch.full((2, 40), 3e38).to(device)
    with pytest.raises(ValueError, match=r"temperature / weights: .* row 0 overflow float32"):
        mtkernels.collab_logits([big, big], backend=backend)
    small = torch.randn(3, 40).to(device)
    small[2, 7] = 100.0
    with pytest.raises(ValueError, match=r"temperature / weights: .* row 2 overflow"):
        mtkernels.collab_logits([small], temperature=1e-37, backend=backend)
    masked = torch.randn(2, 40)
    masked[0, :3] = float("-inf")
    masked[1, 5] = float("inf")
    z = mtkernels.collab_logits([masked.to(device)], [2.0], temperature=0.5, backend=backend)
    assert (z[0, :3] == float("-inf")).all() and z[1, 5] == float("inf")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_no_distribution_error_names_temperature_and_weights(backend):
    device = device_for(backend)
    if device.type != "cpu":
        pytest.skip("on a GPU such rows are marked (lse NaN, id -1) instead of raising")
    big = torch.full((2, 40), 1e38)
    big[:, 1] = 3e38
    for call in (lambda: mtkernels.fused_collab_softmax([big.to(device)], [2.0], top_k=3, backend=backend),
                 lambda: mtkernels.fused_collab_sample([big.to(device)], temperature=1e-3, backend=backend)):
        with pytest.raises(ValueError, match="a temperature too small or weights too large"):
            call()


COMPILED_BAD_PARAMETERS = [
    ("temperature", lambda b: torch.full((b,), -1.0)),
    ("temperature", lambda b: torch.tensor([1.0] * (b - 1) + [1e-300], dtype=torch.float64)),
    ("weights", lambda b: torch.tensor([1.0, float("inf")])),
    ("top_p", lambda b: torch.full((b,), 1.5)),
    ("top_p", lambda b: torch.full((b,), -1.0)),
    ("min_p", lambda b: torch.full((b,), 1.0)),
]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("name,make", COMPILED_BAD_PARAMETERS, ids=[f"{n}{i}" for i, (n, _) in
                                                                    enumerate(COMPILED_BAD_PARAMETERS)])
def test_per_row_checks_hold_under_torch_compile(backend, name, make):
    """The value checks of tensor parameters run in the op body, so compiled code raises too (on a
    GPU, where raising would cost a host sync, compiled code marks the rows instead)."""
    device = device_for(backend)
    logits = [torch.randn(4, 50, device=device), torch.randn(4, 50, device=device)]
    value = make(4).to(device)

    def call(a, b, value):
        kwargs = {name: value}
        weights = kwargs.pop("weights", [1.0, 0.5])
        if name in ("top_p", "min_p"):
            return mtkernels.fused_collab_sample([a, b], weights, backend=backend, **kwargs)
        return (mtkernels.fused_collab_softmax([a, b], weights, top_k=3, backend=backend, **kwargs).probs,
                mtkernels.collab_logits([a, b], weights, backend=backend, **kwargs))

    torch._dynamo.reset()  # every case compiles the same function: stay below the recompile limit
    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
    with pytest.raises(ValueError, match=name):
        call(*logits, value)
    if device.type == "cpu":
        with pytest.raises(ValueError, match=name):
            compiled(*logits, value)
        return
    if name == "weights":  # one (M,) weight vector serves every row
        bad = torch.ones(4, dtype=torch.bool)
    else:
        bad = ~mtkernels.ops.collab_args.RANGES[name][1](value, value.float()).cpu()
    out = compiled(*logits, value)
    if name in ("top_p", "min_p"):
        assert (out.cpu()[bad] == -1).all()
    else:
        probs, z = out
        assert torch.isnan(probs.cpu()[bad]).all() and torch.isnan(z.cpu()[bad]).all()


def test_compiled_softmax_with_a_negative_temperature_raises():
    x = torch.randn(4, 50)
    compiled = torch.compile(lambda x, t: mtkernels.fused_collab_softmax([x], top_k=3, temperature=t), fullgraph=True)
    with pytest.raises(ValueError, match="temperature"):
        compiled(x, torch.full((4,), -1.0))
