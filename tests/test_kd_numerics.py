"""The KD loss where numerics and arguments are hard: small temperatures, masked (-inf) teacher
logits, ``num_items_in_batch`` edge values, mixed dtypes and the errors a user meets."""

import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtkernels
from mtkernels.reference import self_evolution_kd as ref

from .conftest import device_for
from .test_kd import KD_BACKENDS, MODES, make_case, run

KDL = mtkernels.self_evolution_kd_loss_from_logits
ROOT = Path(__file__).resolve().parents[1]


def _truth(student, teacher, labels, **options):
    """Loss and d loss / d student_logits from the reference in float64 (the float64 truth)."""
    options = {k: v for k, v in options.items() if k != "chunk_size"}  # the reference works on whole tensors
    s = student.detach().double().requires_grad_()
    loss, _ = ref.self_evolution_kd_loss_from_logits(s, teacher.double(), labels, **options)
    loss.sum().backward()
    return loss.detach(), s.grad


def _fused(path, student, teacher, labels, **options):
    device = device_for(path)
    s = student.detach().to(device).requires_grad_()
    loss = KDL(s, teacher.to(device), labels.to(device), backend=path, **options)
    loss.sum().backward()
    return loss.detach().cpu().double(), s.grad.cpu().double()


def assert_gradient_close(got, want, temperature, row_weight=1.0, rtol=2e-5):
    """Within ``rtol`` of the largest true entry, or of float32 rounding of the O(1) terms each entry is
    formed from (q, ỹ, r·q: like autograd in float32), whichever is larger: ``row_weight / τ`` scales
    those terms to the raw logits. An entry far smaller than that is float32 noise on every backend."""
    floor = 4e-7 * row_weight / temperature
    err = (got - want).abs().max().item()
    assert err <= rtol * want.abs().max().item() + floor, (err, want.abs().max().item(), floor)


def _sharp_case(n=8, v=4000):
    """Large logits with a teacher close to the student: at small τ both are nearly one-hot."""
    torch.manual_seed(0)
    s = torch.randn(n, v) * 10
    return s, s + torch.randn(n, v) * 5, torch.randint(0, v, (n,))


@pytest.mark.parametrize("path", KD_BACKENDS)
@pytest.mark.parametrize("temperature", [0.02, 0.1, 0.5])
@pytest.mark.parametrize("mode", ["skew", "self_evolution", "noevo", "forward_kd", "reverse_kd"])
def test_small_temperatures_match_float64(path, temperature, mode):
    """Losses within 1e-5 relative of the float64 truth, gradients as close as float32 allows
    (assert_gradient_close), at temperatures where the logits divided by τ reach 1e3."""
    s, t, y = _sharp_case()
    options = dict(mode=mode, temperature=temperature, reduction="none")
    loss, grad = _fused(path, s, t, y, **options)
    want_loss, want_grad = _truth(s, t, y, **options)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    assert_gradient_close(grad, want_grad, temperature)


@pytest.mark.parametrize("path", KD_BACKENDS)
def test_small_temperature_weight_gradient_of_the_linear_form(path):
    case = make_case(n=16, h_s=32, h_t=32, v_s=997, v_t=997, bias=False, seed=3, scale=4.0)
    want = run("reference", case, mode="skew", temperature=0.02, reduction="sum")
    got = run(path, case, mode="skew", temperature=0.02, reduction="sum")
    scale = want[2].abs().max().item()
    assert (got[2] - want[2]).abs().max().item() <= 1e-4 * scale + 1e-9


@pytest.mark.parametrize("path", KD_BACKENDS + ["reference"])
@pytest.mark.parametrize("temperature", [1e-7, 1e-10])
def test_tiny_temperatures_stay_finite_and_bounded(path, temperature):
    """KL(ỹ ‖ m) <= -log(1 - β) (m >= (1 - β) ỹ): log 2 for β = 0.5, however sharp the logits."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    labels = torch.arange(4)
    device = device_for(path) if path != "reference" else torch.device("cpu")
    for mode in MODES:
        loss = KDL(s.to(device), t.to(device), labels.to(device), mode=mode, temperature=temperature,
                   reduction="none", backend=path).cpu()
        want, _ = ref.self_evolution_kd_loss_from_logits(s.double(), t.double(), labels, mode=mode,
                                                          temperature=temperature, reduction="none")
        assert torch.isfinite(loss).all(), (mode, loss)
        torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
        if mode == "skew":
            assert (loss <= math.log(2) + 1e-6).all()


def _masked_case():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 50, generator=g) * 2, torch.randn(6, 50, generator=g) * 2
    t[:, ::3] = float("-inf")  # a padded / masked teacher vocabulary
    t[5, :] = float("-inf")
    t[5, 4] = 1.0  # a teacher certain of one token, not the label
    labels = torch.tensor([1, 2, 4, -100, 5, 2])
    return s, t, labels


@pytest.mark.parametrize("path", KD_BACKENDS + ["reference"])
@pytest.mark.parametrize("mode", MODES)
def test_masked_teacher_logits(path, mode):
    """Masked teacher entries carry no target mass: 0 log 0 = 0, never NaN. reverse_kd is +inf
    where the student gives mass to a token the teacher masks: that is KL(q ‖ p)."""
    s, t, labels = _masked_case()
    options = dict(mode=mode, reduction="none")
    want_loss, want_grad = _truth(s, t, labels, **options)
    if path == "reference":
        loss, grad = want_loss, want_grad
    else:
        loss, grad = _fused(path, s, t, labels, **options)
    valid = labels != -100
    if mode == "reverse_kd":
        assert torch.isinf(loss[valid]).all() and (loss[~valid] == 0).all()
        return
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("path", KD_BACKENDS + ["reference"])
def test_a_row_without_distribution_is_nan(path):
    """Every teacher (or student) logit -inf: no distribution, so NaN loss, d and gradient on that row."""
    s, t = torch.randn(4, 9), torch.randn(4, 9)
    t[1] = float("-inf")
    s[2] = float("-inf")
    labels = torch.tensor([0, 1, 2, 3])
    device = device_for(path) if path != "reference" else torch.device("cpu")
    for mode in MODES:
        x = s.clone().to(device).requires_grad_()
        loss = KDL(x, t.to(device), labels.to(device), mode=mode, reduction="none", backend=path)
        loss.sum().backward()
        loss, grad = loss.detach().cpu(), x.grad.cpu()
        assert torch.isnan(loss[1:3]).all() and torch.isfinite(loss[[0, 3]]).all(), (mode, loss)
        assert torch.isnan(grad[1]).all() and torch.isfinite(grad[[0, 3]]).all(), mode


def test_masked_teacher_noevo_value():
    """A masked vocabulary changes nothing but the teacher's support (float64 by hand)."""
    s, t, labels = _masked_case()
    got = KDL(s, t, labels, mode="noevo", backend="reference").item()
    valid = labels != -100
    log_q = torch.log_softmax(s.double(), 1)
    p = torch.softmax(t.double(), 1)
    y = 0.5 * torch.nn.functional.one_hot(labels.clamp_min(0), 50) + 0.5 * p
    rows = torch.where(y > 0, y * (torch.log(y) - log_q), torch.zeros_like(y)).sum(1)
    assert got == pytest.approx(rows[valid].mean().item(), rel=1e-6)


@pytest.mark.parametrize("path", KD_BACKENDS + ["reference"])
@pytest.mark.parametrize("count", [0, torch.tensor(0), torch.tensor(0.0)])
def test_num_items_zero_gives_zero_loss_and_gradients(path, count):
    """Hugging Face's Trainer passes 0 when an accumulated batch has no label token."""
    case = make_case(n=12, seed=2)
    loss, *grads = run(path, case, num_items_in_batch=count)
    assert loss.item() == 0.0
    assert all(not g.any() for g in grads if g is not None)


@pytest.mark.parametrize("count", [torch.tensor(-5.0), torch.tensor(float("nan")), 0.5, torch.tensor(2.5), -1,
                                   float("inf"), torch.ones(2)])
def test_num_items_must_be_a_whole_count(count):
    case = make_case(n=12, seed=2)
    with pytest.raises(ValueError, match="num_items_in_batch"):
        mtkernels.self_evolution_kd_loss(**case, num_items_in_batch=count)
    with pytest.raises(ValueError, match="num_items_in_batch"):
        KDL(torch.randn(3, 5), torch.randn(3, 5), torch.arange(3), num_items_in_batch=count)


@pytest.mark.parametrize("count", [True, "12", torch.tensor(True)])
def test_num_items_type(count):
    with pytest.raises(TypeError, match="num_items_in_batch"):
        KDL(torch.randn(3, 5), torch.randn(3, 5), torch.arange(3), num_items_in_batch=count)


@pytest.mark.parametrize("path", KD_BACKENDS)
def test_num_items_counts_scale_the_loss(path):
    case = make_case(n=12, seed=2)
    per_count = [run(path, case, num_items_in_batch=c)[0].item() for c in (5, torch.tensor(10), 20.0)]
    assert per_count[0] == pytest.approx(2 * per_count[1], rel=1e-6) == pytest.approx(4 * per_count[2], rel=1e-6)


@pytest.mark.parametrize("path", KD_BACKENDS + ["reference"])
def test_mixed_dtypes_follow_the_weight(path):
    """fp16 / bf16 hidden states with fp32 weights, and a bias of another dtype: the GEMMs run in the
    weight's dtype (as autocast), the gradients come back in each tensor's own dtype."""
    case = make_case(n=20, seed=4)
    mixed = dict(case, student_input=case["student_input"].half(), teacher_input=case["teacher_input"].bfloat16(),
                 student_bias=case["student_bias"].bfloat16())
    cast = dict(case, student_input=mixed["student_input"].float(), teacher_input=mixed["teacher_input"].float(),
                student_bias=mixed["student_bias"].float())
    got, want = run(path, mixed), run("reference", cast)
    assert got[1].dtype == torch.float16 and got[3].dtype == torch.bfloat16
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1].float(), want[1], rtol=1e-2, atol=1e-4)  # fp16 grad_input
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[3].float(), want[3], rtol=1e-2, atol=1e-4)  # bf16 grad_bias


@pytest.mark.parametrize("path", KD_BACKENDS + ["reference"])
def test_non_contiguous_labels(path):
    case = make_case(n=20, seed=5)
    strided = torch.stack([case["labels"], torch.zeros_like(case["labels"])], 1)[:, 0]
    assert not strided.is_contiguous()
    got, want = run(path, dict(case, labels=strided)), run(path, case)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    device = device_for(path) if path != "reference" else torch.device("cpu")
    s, t = torch.randn(20, 7), torch.randn(20, 7)
    by_logits = KDL(s.to(device), t.to(device), (strided % 7).to(device), backend=path)
    assert torch.isfinite(by_logits)


@pytest.mark.parametrize("path", KD_BACKENDS)
def test_second_backward_names_the_cause(path):
    case = make_case(n=10, seed=6)
    device = device_for(path)
    inputs = {k: (v.to(device) if v is not None else None) for k, v in case.items()}
    inputs["student_weight"] = inputs["student_weight"].requires_grad_()
    loss = mtkernels.self_evolution_kd_loss(**inputs, backend=path)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward.*retain_graph.*compute the loss again"):
        loss.backward()
    s = torch.randn(10, 9, device=device, requires_grad=True)
    loss = KDL(s, torch.randn(10, 9, device=device), torch.arange(10, device=device) % 9, backend=path)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()


BAD_OPTIONS = [
    (dict(lam=torch.tensor(0.5)), TypeError, r"lam: expected a Python float .*Tensor.*lam\.item\(\)"),
    (dict(temperature=torch.tensor(2.0)), TypeError, "temperature: expected a Python float"),
    (dict(ignore_index=2**63), ValueError, "ignore_index: must fit in int64"),
    (dict(ignore_index=-2**63 - 1), ValueError, "ignore_index"),
    (dict(ignore_index=1.5), TypeError, "ignore_index"),
    (dict(temperature=1e-300), ValueError, "temperature.*float32"),
    (dict(temperature=1e39), ValueError, "temperature.*float32"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
]


@pytest.mark.parametrize("change,exc,match", BAD_OPTIONS)
def test_bad_options_name_the_argument(change, exc, match):
    with pytest.raises(exc, match=match):
        mtkernels.self_evolution_kd_loss(**make_case(n=8), **change)
    with pytest.raises(exc, match=match):
        KDL(torch.randn(3, 5), torch.randn(3, 5), torch.arange(3), **change)


def test_empty_vocabulary_is_an_error():
    with pytest.raises(ValueError, match="student_logits.*non-empty vocabulary"):
        KDL(torch.randn(0, 0), torch.randn(0, 0), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="student_weight.*non-empty vocabulary"):
        mtkernels.self_evolution_kd_loss(torch.randn(3, 4), torch.randn(0, 4), torch.randn(3, 4), torch.randn(5, 4),
                                         torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("path", KD_BACKENDS + ["reference"])
def test_no_rows_is_a_zero_loss(path):
    device = device_for(path) if path != "reference" else torch.device("cpu")
    s = torch.randn(0, 5, device=device, requires_grad=True)
    loss = KDL(s, torch.randn(0, 5, device=device), torch.zeros(0, dtype=torch.long, device=device), backend=path)
    loss.backward()
    assert loss.item() == 0.0 and s.grad.shape == (0, 5)


def test_unshifted_labels_say_shift():
    case = make_case(n=8)
    with pytest.raises(ValueError, match="shift"):
        mtkernels.self_evolution_kd_loss(**dict(case, labels=torch.zeros(9, dtype=torch.long)))


def test_mode_codes_are_one_contract():
    """The C++ Mode enum (CPU and CUDA) follows the Python MODES order, and the Triton kernel and
    launcher take their hard rules and loss kinds from kd_options."""
    from mtkernels.ops.kd_options import MODE_RULES, HardRule, LossKind, Mode

    header = (ROOT / "csrc" / "common" / "kd_row.h").read_text()
    enum = re.search(r"enum class Mode : int \{(.*?)\};", header, re.S).group(1)
    codes = {name: int(value) for name, value in re.findall(r"k(\w+) = (\d+)", enum)}
    assert sorted(codes.values()) == list(range(len(MODES)))
    assert {name.lower(): code for name, code in codes.items()} == {m.replace("_", ""): i for i, m in enumerate(MODES)}
    assert f"kNumModes = {len(MODES)};" in header
    assert [m.name.lower() for m in Mode] == list(MODES) and set(MODE_RULES) == set(Mode)
    pytest.importorskip("triton")
    from mtkernels.triton import kd_kernels
    from mtkernels.triton import self_evolution_kd as triton_kd

    # the kernel compares against constants taken from the enums (HardRule.NONE: no comparison)
    constants = {f"HARD_{r.name}": int(r) for r in HardRule if r != HardRule.NONE}
    constants.update({f"LOSS_{k.name}": int(k) for k in LossKind})
    assert {name: getattr(kd_kernels, name).value for name in constants} == constants
    assert not re.findall(r"(?:rule|loss_kind)\s*[!=]=\s*\d", Path(kd_kernels.__file__).read_text())
    # the launcher passes the mode's rule, or the caller's mask
    for mode, (rule, kind) in MODE_RULES.items():
        assert triton_kd.kernel_rules(int(mode), False) == (int(rule), int(kind))
        assert triton_kd.kernel_rules(int(mode), True) == (int(HardRule.FROM_MASK), int(kind))


@st.composite
def logits_case(draw):
    """Student and teacher logits in fp32 / bf16 / fp16, optionally with forced ties (few distinct
    values) and masked teacher entries, and options over the whole valid range."""
    n, v = draw(st.integers(1, 8)), draw(st.integers(2, 150))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    ties, masked = draw(st.booleans()), draw(st.booleans())
    mode = draw(st.sampled_from(MODES))
    if masked and mode == "reverse_kd":
        mode = "forward_kd"  # reverse KD is +inf on masked teacher entries (tested above)
    # with ties, rows of equal difficulty may rank either way within float error: only 0 or all hard
    fractions = [0.0, 1.0] if ties else [0.0, 0.3, 1.0]
    options = dict(mode=mode, lam=draw(st.sampled_from([0.0, 0.2, 0.5, 1.0])),
                   beta=draw(st.sampled_from([0.1, 0.5, 1.0])), gamma=draw(st.sampled_from([0.0, 0.4, 3.0])),
                   hard_fraction=draw(st.sampled_from(fractions)),
                   temperature=draw(st.floats(0.05, 4.0, allow_nan=False)),
                   reduction=draw(st.sampled_from(["mean", "sum", "none"])), chunk_size=draw(st.integers(1, 5)))
    return n, v, dtype, ties, masked, draw(st.integers(0, 2**16)), options


@pytest.mark.parametrize("path", KD_BACKENDS)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=logits_case())
def test_property_logits_dtypes_ties_and_temperatures(path, case):
    n, v, dtype, ties, masked, seed, options = case
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(n, v, generator=g) * 3, torch.randn(n, v, generator=g) * 3
    if ties:
        s, t = s.round(), t.round()  # a handful of distinct values: many exact ties
    if masked:
        t.masked_fill_(torch.rand(n, v, generator=g) < 0.3, float("-inf"))
        t[:, 0] = 0.0  # at least one unmasked entry per row
    s, t = s.to(dtype), t.to(dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::3] = -100
    want_loss, want_grad = _truth(s, t, labels, **options)
    loss, grad = _fused(path, s, t, labels, **options)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(loss, want_loss, rtol=1e-4, atol=1e-5 * max(1.0, want_loss.abs().max().item()))
    # the fused gradient comes back in the logits' dtype: one rounding of that dtype
    eps = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    valid = int((labels != -100).sum())
    row_weight = 1.0 / max(valid, 1) if options["reduction"] == "mean" else 1.0
    assert_gradient_close(grad, want_grad, options["temperature"], row_weight, rtol=eps)


def test_num_items_is_checked_under_torch_compile():
    path = KD_BACKENDS[0] if KD_BACKENDS and device_for(KD_BACKENDS[0]).type == "cpu" else "auto"

    def loss(s, t, y, n):
        return KDL(s, t, y, num_items_in_batch=n, backend=path)

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    s, t, y = torch.randn(4, 9), torch.randn(4, 9), torch.arange(4)
    torch.testing.assert_close(compiled(s, t, y, torch.tensor(3)), loss(s, t, y, torch.tensor(3)))
    with pytest.raises(RuntimeError, match="num_items_in_batch"):
        compiled(s, t, y, torch.tensor(-3))
