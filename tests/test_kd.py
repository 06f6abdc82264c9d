"""The fused self-evolution KD loss family against the reference, values and gradients (docs/kd.md)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtkernels
from mtkernels import backends
from mtkernels.reference import self_evolution_kd as ref

from .conftest import FUSED_BACKENDS, device_for

MODES = ref.MODES
KD_BACKENDS = [b for b in FUSED_BACKENDS if backends.has_kernel(b, "kd", "rows")]
# "chunked": the fused chunk loop over the reference row kernel, so the orchestration is always tested.
PATHS = ["chunked"] + KD_BACKENDS


def make_case(n=48, h_s=16, h_t=24, v_s=301, v_t=307, dtype=torch.float32, bias=True, seed=0, scale=1.0,
              ignore_every=5):
    g = torch.Generator().manual_seed(seed)
    case = dict(
        student_input=(torch.randn(n, h_s, generator=g) * scale).to(dtype),
        student_weight=(torch.randn(v_s, h_s, generator=g) / h_s**0.5).to(dtype),
        teacher_input=(torch.randn(n, h_t, generator=g) * scale).to(dtype),
        teacher_weight=(torch.randn(v_t, h_t, generator=g) / h_t**0.5).to(dtype),
        labels=torch.randint(0, min(v_s, v_t), (n,), generator=g),
        student_bias=(torch.randn(v_s, generator=g) * 0.1).to(dtype) if bias else None,
    )
    if ignore_every:
        case["labels"][::ignore_every] = -100
    return case


def run(path, case, grad_out=None, **options):
    """Loss and the student's gradients (input, weight, bias) through ``path``."""
    device = torch.device("cpu") if path in ("chunked", "reference") else device_for(path)
    inputs = {k: (v.to(device) if v is not None else None) for k, v in case.items()}
    for key in ("student_input", "student_weight", "student_bias"):
        if inputs[key] is not None:
            inputs[key] = inputs[key].detach().requires_grad_()
    if path == "chunked":
        loss = _chunked_over_reference_rows(inputs, options)
    else:
        loss = mtkernels.self_evolution_kd_loss(**inputs, backend=path, **options)
    weights = torch.ones_like(loss) if grad_out is None else grad_out.to(loss.device)
    (loss * weights).sum().backward()
    grads = [inputs[k].grad.cpu() if inputs[k] is not None else None
             for k in ("student_input", "student_weight", "student_bias")]
    return [loss.detach().cpu()] + grads


def _chunked_over_reference_rows(inputs, options):
    from mtkernels.ops.kd_args import num_items_tensor
    from mtkernels.ops.kd_options import KDOptions

    options = dict(options)
    num_items = num_items_tensor(options.pop("num_items_in_batch", None), torch.device("cpu"))
    kd = KDOptions(**{"chunk_size": 16, **{k: v for k, v in options.items() if v is not None}})
    return torch.ops.mtkernels.self_evolution_kd(
        inputs["student_input"], inputs["student_weight"], inputs["student_bias"], inputs.get("teacher_input"),
        inputs.get("teacher_weight"), None, inputs.get("teacher_logits"), inputs["labels"], num_items, *kd.flat(),
        "reference", True)[0]


def assert_same(got, want, rtol, atol, atol_per_magnitude=False):
    """``atol_per_magnitude``: atol is relative to each tensor's largest magnitude (float32 sums of
    large logits leave absolute errors of that scale in elements near 0)."""
    for g, w in zip(got, want):
        if w is None:
            assert g is None
        else:
            scale = max(1.0, w.abs().max().item()) if atol_per_magnitude and w.numel() else 1.0
            torch.testing.assert_close(g.float(), w.float(), rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_modes_and_reductions(path, mode, reduction):
    case = make_case()
    grad_out = torch.randn(48, generator=torch.Generator().manual_seed(1)) if reduction == "none" else None
    options = dict(mode=mode, reduction=reduction, chunk_size=7)
    assert_same(run(path, case, grad_out, **options), run("reference", case, grad_out, **options), 1e-4, 1e-6)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("lam,beta,gamma", [(0.0, 0.5, 0.4), (1.0, 0.5, 0.4), (0.5, 1.0, 0.4), (0.5, 0.5, 0.0),
                                            (0.5, 0.5, 1e9), (0.3, 0.2, 0.1)])
def test_edge_parameters(path, lam, beta, gamma):
    case = make_case(seed=2)
    for mode in ("self_evolution", "skew", "reverse_kd"):
        options = dict(mode=mode, lam=lam, beta=beta, gamma=gamma, temperature=1.5)
        assert_same(run(path, case, **options), run("reference", case, **options), 1e-4, 1e-6)


@pytest.mark.parametrize("path", PATHS)
def test_topk_selection_num_items_and_teacher_logits(path):
    case = make_case(n=40, seed=3)
    for fraction in (0.0, 0.2, 1.0):
        options = dict(mode="self_evolution_topk", hard_fraction=fraction, num_items_in_batch=123)
        assert_same(run(path, case, **options), run("reference", case, **options), 1e-4, 1e-6)
    with torch.no_grad():
        teacher_logits = case["teacher_input"] @ case["teacher_weight"].T
    by_logits = dict(case, teacher_logits=teacher_logits, teacher_input=None, teacher_weight=None)
    assert_same(run(path, by_logits), run("reference", case), 1e-4, 1e-6)


@pytest.mark.parametrize("path", PATHS)
def test_all_rows_ignored_gives_zero(path):
    case = make_case(n=9, seed=4)
    case["labels"][:] = -100
    loss, grad_input, grad_weight, grad_bias = run(path, case)
    assert loss.item() == 0.0 and not grad_input.any() and not grad_weight.any() and not grad_bias.any()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("vocab", [32000, 128256])
def test_large_vocabularies(path, vocab):
    case = make_case(n=6, h_s=8, h_t=8, v_s=vocab, v_t=vocab + 3, seed=5, bias=False)
    assert_same(run(path, case, chunk_size=4), run("reference", case), 1e-4, 1e-7)


@pytest.mark.parametrize("path", KD_BACKENDS)
def test_bf16_inputs(path):
    case = make_case(dtype=torch.bfloat16, seed=6)
    got, want = run(path, case), run("reference", case)
    assert_same(got[:1], want[:1], 2e-3, 1e-4)
    assert_same(got[1:], want[1:], 2e-2, 2e-3)  # bf16 grad GEMMs round differently from the reference


@pytest.mark.parametrize("path", KD_BACKENDS)
def test_huge_bf16_logits_stay_finite(path):
    case = make_case(n=8, dtype=torch.bfloat16, seed=7, scale=3e3)
    for mode in MODES:
        loss, *grads = run(path, case, mode=mode)
        assert torch.isfinite(loss).all() and all(torch.isfinite(g).all() for g in grads)


def test_forward_kd_and_noevo_share_gradients():
    case = make_case(seed=8)
    forward = run("reference", case, mode="forward_kd")
    noevo = run("reference", case, mode="noevo")
    assert_same(forward[1:], noevo[1:], 1e-6, 1e-9)


def test_reference_gradients_by_gradcheck():
    g = torch.Generator().manual_seed(9)
    student = torch.randn(6, 13, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(6, 15, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 3, -100, 12, 5, 7])
    for mode in ("skew", "noevo", "forward_kd", "reverse_kd"):
        def loss(s, mode=mode):
            return ref.self_evolution_kd_loss_from_logits(s, teacher, labels, mode=mode, lam=0.3, beta=0.4)[0].double()
        assert torch.autograd.gradcheck(loss, (student,))


def test_reference_row_kernel_gradient_formulas_equal_autograd():
    """docs/kd.md's closed-form gradients (the row kernels' definition) against autograd on the spec."""
    from mtkernels.reference import kernels as ref_kernels

    g = torch.Generator().manual_seed(10)
    student = torch.randn(12, 50, generator=g) * 2
    teacher = torch.randn(12, 55, generator=g) * 2
    labels = torch.randint(0, 50, (12,), generator=g)
    labels[3] = -100
    for mode in range(6):
        hard = (torch.arange(12) % 2 == 0) if mode == 1 else None
        s = student.clone()
        loss, _, is_hard = ref_kernels.kd_rows(s, teacher, labels, hard, torch.ones(12), mode, 0.4, 0.6, 0.5, 1.3,
                                               -100, 50, True)
        x = student.double().requires_grad_()
        d, easy, hard_loss, fkd, rkd = ref.per_row_terms(x, teacher, labels.clamp_min(0), 0.4, 0.6, 1.3)
        rows = [torch.where(is_hard, hard_loss, easy)] * 4 + [fkd, rkd]
        (grad,) = torch.autograd.grad((rows[mode] * (labels != -100)).sum(), x)
        torch.testing.assert_close(s, grad.float(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("path", KD_BACKENDS + ["reference"])
def test_from_logits_matches_linear_form(path):
    case = make_case(n=20, seed=11)
    device = device_for(path) if path != "reference" else torch.device("cpu")
    with torch.no_grad():
        s = (case["student_input"] @ case["student_weight"].T + case["student_bias"]).reshape(4, 5, -1)
        t = (case["teacher_input"] @ case["teacher_weight"].T).reshape(4, 5, -1)
    s = s.to(device).requires_grad_()
    loss, stats = mtkernels.self_evolution_kd_loss_from_logits(s, t.to(device), case["labels"].reshape(4, 5).to(device),
                                                               return_stats=True, backend=path)
    loss.backward()
    want = run("reference", case)
    torch.testing.assert_close(loss.cpu(), want[0], rtol=1e-5, atol=1e-6)
    assert stats.num_valid.item() == 16 and 0 <= stats.num_hard.item() <= 16
    assert s.grad.shape == (4, 5, 301) and torch.isfinite(s.grad).all()


def test_stats_and_module():
    case = make_case(seed=12)
    loss, stats = mtkernels.self_evolution_kd_loss(**case, return_stats=True, backend="reference")
    module = mtkernels.nn.SelfEvolutionKDLoss(mode="self_evolution", backend="reference")
    assert torch.equal(module(case["student_input"], case["student_weight"], case["teacher_input"],
                              case["teacher_weight"], case["labels"], student_bias=case["student_bias"]), loss)
    valid = case["labels"] != -100
    assert stats.num_valid.item() == int(valid.sum()) and stats.mean_difficulty.item() > 0


def test_torch_compile():
    case = make_case(seed=13)
    path = KD_BACKENDS[0] if KD_BACKENDS and device_for(KD_BACKENDS[0]).type == "cpu" else "auto"

    def step(h, w, ht, wt, labels):
        return mtkernels.self_evolution_kd_loss(h, w, ht, wt, labels, mode="skew", chunk_size=16, backend=path)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    args = [case[k] for k in ("student_input", "student_weight", "teacher_input", "teacher_weight", "labels")]
    h = args[0].clone().requires_grad_()
    got = compiled(h, *args[1:])
    got.backward()
    h2 = args[0].clone().requires_grad_()
    want = step(h2, *args[1:])
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(h.grad, h2.grad)


BAD = [
    (dict(mode="kd"), ValueError, "mode"),
    (dict(lam=1.5), ValueError, "lam"),
    (dict(beta=0.0), ValueError, "beta"),
    (dict(gamma=-1.0), ValueError, "gamma"),
    (dict(hard_fraction=2.0), ValueError, "hard_fraction"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(reduction="batchmean"), ValueError, "reduction"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
    (dict(labels=torch.full((48,), 400)), ValueError, "labels"),
    (dict(labels=torch.zeros(47, dtype=torch.int64)), ValueError, "labels"),
    (dict(labels=torch.zeros(48, dtype=torch.int32)), ValueError, "labels"),
    (dict(student_weight=torch.randn(301, 15)), ValueError, "student_weight"),
    (dict(student_input=torch.randn(48, 16).double()), TypeError, "student_input"),
    (dict(teacher_input=None), ValueError, "teacher_input"),
    (dict(student_bias=torch.randn(300)), ValueError, "student_bias"),
    (dict(teacher_logits=torch.randn(48, 307)), ValueError, "teacher_logits"),
]


@pytest.mark.parametrize("change,exc,match", BAD)
def test_bad_input(change, exc, match):
    case = make_case()
    case.update(change)
    with pytest.raises(exc, match=match):
        mtkernels.self_evolution_kd_loss(**case)


def test_inputs_are_not_modified():
    case = make_case(seed=14)
    before = {k: v.clone() for k, v in case.items() if v is not None}
    for path in PATHS:
        run(path, case, mode="self_evolution_topk")
    for k, v in before.items():
        assert torch.equal(v, case[k])


@pytest.mark.parametrize("path", KD_BACKENDS)
def test_backward_scales_by_incoming_gradient_and_refuses_a_second_backward(path):
    case = make_case(seed=15, bias=True)
    device = device_for(path)
    inputs = {k: (v.to(device) if v is not None else None) for k, v in case.items()}
    want = None
    for scale in (2.5, 1.0):  # a scaled loss, as under gradient accumulation, and the plain one
        for key in ("student_input", "student_weight", "student_bias"):
            inputs[key] = inputs[key].detach().requires_grad_()
        loss = mtkernels.self_evolution_kd_loss(**inputs, backend=path)
        (loss * scale).backward(retain_graph=True)
        grads = [inputs[k].grad.cpu() / scale for k in ("student_input", "student_weight", "student_bias")]
        if want is not None:
            assert_same(grads, want, 1e-5, 1e-7)
        want = grads
        # backward only scales the gradients formed in forward, in place: a second one must fail loudly
        with pytest.raises(RuntimeError, match="second backward"):
            loss.backward()


@pytest.mark.parametrize("path", KD_BACKENDS)
def test_from_logits_backward_scales_in_place_once(path):
    case = make_case(seed=17)
    device = device_for(path)
    s = (case["student_input"] @ case["student_weight"].T).to(device)
    t = (case["teacher_input"] @ case["teacher_weight"].T).to(device)
    labels = case["labels"].to(device)
    grads = []
    for scale in (3.0, 1.0):
        leaf = s.detach().requires_grad_()
        loss = mtkernels.self_evolution_kd_loss_from_logits(leaf, t, labels, backend=path)
        (loss * scale).backward(retain_graph=True)
        grads.append(leaf.grad.cpu() / scale)
        with pytest.raises(RuntimeError, match="second backward"):
            loss.backward()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-8)


def test_peak_memory_is_the_gradients_plus_one_chunk():
    from mtkernels.bench.measure import peak_memory_mb

    n, h, v, chunk = 64, 32, 5003, 8
    case = make_case(n=n, h_s=h, h_t=h, v_s=v, v_t=v, bias=False, seed=16)
    chunk_mb = chunk * 2 * v * 4 / 2**20  # student + teacher float32 logits of one chunk
    slack_mb = 0.1  # O(N) statistics and a few (chunk, H) rows

    def linear():
        run("cpu", case, chunk_size=chunk)

    def from_logits():
        s = (case["student_input"] @ case["student_weight"].T).requires_grad_()
        t = case["teacher_input"] @ case["teacher_weight"].T
        mtkernels.self_evolution_kd_loss_from_logits(s, t, case["labels"], chunk_size=chunk, backend="cpu").backward()

    gradients_mb = (n * h + v * h) * 4 / 2**20  # grad_input + grad_weight
    assert peak_memory_mb(linear, "cpu") <= gradients_mb + chunk_mb + slack_mb
    logits_mb = n * v * 4 / 2**20  # from_logits allocates its inputs (2 x logits) and the logits' gradient
    assert peak_memory_mb(from_logits, "cpu") <= 3 * logits_mb + chunk_mb + slack_mb


@st.composite
def kd_case(draw):
    n = draw(st.integers(1, 24))
    v_s, v_t = draw(st.integers(2, 300)), draw(st.integers(2, 300))
    params = dict(mode=draw(st.sampled_from(MODES)), lam=draw(st.sampled_from([0.0, 0.3, 1.0])),
                  beta=draw(st.sampled_from([0.2, 1.0])), gamma=draw(st.sampled_from([0.0, 0.4, 5.0])),
                  hard_fraction=draw(st.sampled_from([0.0, 0.5, 1.0])), temperature=draw(st.sampled_from([0.5, 2.0])),
                  reduction=draw(st.sampled_from(["mean", "sum", "none"])), chunk_size=draw(st.integers(1, 9)))
    return n, v_s, v_t, draw(st.integers(0, 2**16)), draw(st.booleans()), params


@pytest.mark.parametrize("path", KD_BACKENDS)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=kd_case())
def test_property_every_backend_matches_reference(path, case):
    n, v_s, v_t, seed, bias, params = case
    inputs = make_case(n=n, h_s=8, h_t=12, v_s=v_s, v_t=v_t, bias=bias, seed=seed, scale=3.0, ignore_every=3)
    grad_out = torch.randn(n, generator=torch.Generator().manual_seed(seed)) if params["reduction"] == "none" else None
    got, want = run(path, inputs, grad_out, **params), run("reference", inputs, grad_out, **params)
    assert all(torch.isfinite(g).all() for g in got if g is not None)
    assert_same(got, want, 1e-4, 1e-5, atol_per_magnitude=True)
