"""The MuMo head ops: top-k and cross-entropy over the concatenated vocabulary, every backend
against the concatenation spec (mtkernels/reference/mumo_head.py), and the row kernel of each
fused backend against its reference definition."""

import pytest
import torch

import mtkernels
from mtkernels import backends
from mtkernels.ops import chunked_loss
from mtkernels.reference import mumo_head as ref

from .conftest import FUSED_BACKENDS, device_for

BACKENDS = [b for b in mtkernels.available_backends() if backends.has_kernel(b, "mumo_head", "ce_rows")]
ROW_BACKENDS = [b for b in FUSED_BACKENDS if backends.has_kernel(b, "mumo_head", "ce_rows")]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NEG_INF = float("-inf")


def _head(n=6, h=24, d=16, v_multi=1003, v_mono=301, dtype=torch.float32, seed=0, bias=False, integer=False):
    """(hidden, multi_weight, mono_features, mono_weight, multi_bias, mono_bias) on the CPU."""
    g = torch.Generator().manual_seed(seed)
    if integer:  # small integers: exact GEMMs in every dtype, many ties
        draw = lambda *s: torch.randint(-2, 3, s, generator=g).float()  # noqa: E731
    else:
        draw = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    t = [draw(n, h), draw(v_multi, h) / (1 if integer else h**0.5), draw(n, d) * 2,
         draw(v_mono, d) / (1 if integer else d**0.5)]
    biases = [draw(v_multi), draw(v_mono)] if bias else [None, None]
    return [x.to(dtype) for x in t] + [None if b is None else b.to(dtype) for b in biases]


def _targets(n, v_multi, v_mono, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, v_multi + v_mono, (n,), generator=g)
    t[0] = v_multi - 1  # both sides of the boundary
    if n > 1:
        t[1] = v_multi if v_mono else 0
    if n > 3:
        t[3] = -100
    return t


def _to(tensors, device):
    return [None if t is None else t.to(device) for t in tensors]


# --- top-k ----------------------------------------------------------------------------------------

def _check_topk(backend, head, k, temperature=1.0, exact_ids=True):
    device = device_for(backend)
    h, wm, f, wo, bm, bo = _to(head, device)
    probs, ids, lse = mtkernels.mumo_head_topk(h, wm, f, wo, k=k, temperature=temperature, multi_bias=bm,
                                               mono_bias=bo, backend=backend)
    probs, ids, lse = probs.cpu(), ids.cpu(), lse.cpu()
    assert probs.shape == ids.shape == (head[0].shape[0], k) and lse.shape == (head[0].shape[0],)
    assert probs.dtype == lse.dtype == torch.float32 and ids.dtype == torch.int64
    want_p, want_ids, want_lse = ref.head_topk(*head[:4], k, temperature, head[4], head[5])
    torch.testing.assert_close(lse, want_lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(probs, want_p, rtol=1e-4, atol=1e-6)
    if exact_ids:
        assert torch.equal(ids, want_ids)
    else:  # the same probabilities at the ids returned (a set equal up to ties)
        z = ref.concatenated_logits(*head[:4], head[4], head[5]).double() / temperature
        p_at = torch.exp(z.gather(1, ids) - want_lse.double().unsqueeze(1)).float()
        torch.testing.assert_close(p_at, probs, rtol=1e-4, atol=1e-6)
    return probs, ids, lse


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 10])
@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_matches_concatenation(backend, k, dtype):
    head = _head(dtype=dtype)
    _check_topk(backend, head, k, exact_ids=dtype == torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_1024_across_both_blocks(backend):
    head = _head(n=3, v_multi=1003, v_mono=301)
    _, ids, _ = _check_topk(backend, head, 1024)
    assert (ids >= 1003).any() and (ids < 1003).any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_topk_temperature_and_biases(backend, temperature):
    _check_topk(backend, _head(bias=True, seed=3), 10, temperature=temperature)


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_without_mono_vocabulary(backend):
    probs, ids, _ = _check_topk(backend, _head(v_mono=0, seed=4), 10)
    assert (ids < 1003).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_ties_lowest_id_first(backend):
    # integer logits tie within and across the two blocks; the mono block's words scored like base tokens
    head = _head(n=5, h=4, d=4, v_multi=37, v_mono=29, integer=True, seed=5)
    _check_topk(backend, head, 20)
    _check_topk(backend, head, 66)


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_masked_columns(backend):
    head = _head(n=4, bias=True, seed=6)
    head[4][::3] = NEG_INF  # -inf logits in the base block
    head[5][:] = NEG_INF  # and every monolingual word masked
    _, ids, _ = _check_topk(backend, head, 10)
    assert (ids % 3 != 0).all() and (ids < 1003).all()


# --- cross-entropy --------------------------------------------------------------------------------

def _grads_of(loss, tensors):
    loss.sum().backward()
    return [None if t is None or t.grad is None else t.grad.detach().cpu().clone() for t in tensors]


def _ce(backend, head, targets, device, **kwargs):
    h, wm, f, wo, bm, bo = [None if t is None else t.detach().to(device).requires_grad_() for t in head]
    loss = mtkernels.mumo_head_cross_entropy(h, wm, f, wo, targets.to(device), multi_bias=bm, mono_bias=bo,
                                             backend=backend, **kwargs)
    return loss.detach().cpu(), _grads_of(loss, [h, wm, f, wo, bm, bo])


def _ce_spec(head, targets, **kwargs):
    h, wm, f, wo, bm, bo = [None if t is None else t.detach().clone().requires_grad_() for t in head]
    loss = ref.cross_entropy(h, wm, f, wo, targets, bm, bo, **kwargs)
    return loss.detach(), _grads_of(loss, [h, wm, f, wo, bm, bo])


TOLERANCE = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
             torch.float16: dict(rtol=5e-3, atol=5e-3)}


def _check_ce(backend, head, targets, dtype=torch.float32, **kwargs):
    loss, grads = _ce(backend, head, targets, device_for(backend), **kwargs)
    want, want_grads = _ce_spec(head, targets, **kwargs)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(loss, want, **tol)
    assert grads[0] is None and grads[1] is None and grads[4] is None  # constants of the loss
    for i in (2, 3, 5):  # mono_features, mono_weight, mono_bias
        got, exp, t = grads[i], want_grads[i], head[i]
        if t is None:
            continue
        assert got.dtype == t.dtype and got.shape == t.shape
        torch.testing.assert_close(got.float(), exp.float(), **tol)
    return loss, grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ce_values_and_gradients(backend, dtype, reduction):
    head = _head(n=9, dtype=dtype, bias=True, seed=7)
    _check_ce(backend, head, _targets(9, 1003, 301), dtype, reduction=reduction)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ce_several_chunks(backend, monkeypatch):
    # a budget of 3 rows of (1003 + 301) float32 logits: chunks of 3, 3, 3, 2
    monkeypatch.setitem(chunked_loss.CHUNK_BYTES, device_for(backend).type, 3 * 4 * 1304)
    _check_ce(backend, _head(n=11, seed=8), _targets(11, 1003, 301))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ce_num_items_and_all_ignored(backend):
    head = _head(n=8, seed=9)
    targets = _targets(8, 1003, 301)
    _check_ce(backend, head, targets, num_items_in_batch=23)
    _check_ce(backend, head, targets, num_items_in_batch=torch.tensor(5))
    loss, grads = _check_ce(backend, head, torch.full((8,), -100))
    assert loss == 0 and all(g is None or not g.any() for g in grads)
    loss, grads = _check_ce(backend, head, targets, num_items_in_batch=0)
    assert loss == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_ce_without_mono_vocabulary_and_masked_logits(backend):
    _check_ce(backend, _head(n=5, v_mono=0, seed=10), _targets(5, 1003, 0))
    head = _head(n=6, bias=True, seed=11)
    head[4][5:40] = NEG_INF  # masked base tokens (never targets)
    _check_ce(backend, head, _targets(6, 1003, 301))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ce_large_logits_stay_finite(backend):
    head = _head(n=6, seed=12)
    head[2] = head[2] * 1e3  # mono logits of magnitude ~1e4
    _check_ce(backend, head, _targets(6, 1003, 301))


def test_ce_gradcheck_float64_reference():
    head = [t.double() for t in _head(n=4, h=5, d=3, v_multi=7, v_mono=6, bias=True, seed=13)]
    targets = torch.tensor([2, 8, -100, 12])
    h, wm, f, wo, bm, bo = head

    def fn(f, wo, bo):
        return ref.cross_entropy(h, wm, f, wo, targets, bm, bo)

    assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in (f, wo, bo)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ce_second_backward_refused_and_no_grad_mode(backend):
    if backend == "reference":
        pytest.skip("the reference path is plain autograd")
    device = device_for(backend)
    h, wm, f, wo, _, _ = _to(_head(n=4, seed=14), device)
    f.requires_grad_()
    targets = _targets(4, 1003, 301).to(device)
    loss = mtkernels.mumo_head_cross_entropy(h, wm, f, wo, targets, backend=backend)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()
    with torch.no_grad():
        torch.testing.assert_close(mtkernels.mumo_head_cross_entropy(h, wm, f, wo, targets, backend=backend), loss)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_unmodified(backend):
    head = _to(_head(n=5, bias=True, seed=15), device_for(backend))
    targets = _targets(5, 1003, 301).to(head[0].device)
    before = [t.clone() for t in head] + [targets.clone()]
    mtkernels.mumo_head_topk(*head[:4], k=10, multi_bias=head[4], mono_bias=head[5], backend=backend)
    f = head[2].requires_grad_()
    loss = mtkernels.mumo_head_cross_entropy(*head[:4], targets, multi_bias=head[4], mono_bias=head[5],
                                             backend=backend)
    loss.backward()
    for a, b in zip(head + [targets], before):
        assert torch.equal(a.detach(), b)
    assert f.grad is not None


# --- row kernels ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ROW_BACKENDS)
@pytest.mark.parametrize("cols", [37, 1003, 4099])
@pytest.mark.parametrize("compute_grad", [True, False])
def test_ce_rows_match_reference(backend, cols, compute_grad):
    g = torch.Generator().manual_seed(cols)
    x = torch.randn(10, cols, generator=g) * 3
    x[2, ::2] = NEG_INF
    x[5] = NEG_INF  # no distribution: NaN
    x[6] *= 1e4
    targets = torch.randint(0, cols, (10,), generator=g)
    targets[3] = -100
    targets[7] = 4
    x[7, 4] = NEG_INF  # the target masked: loss +inf
    scale = torch.rand(10, generator=g) + 0.5
    device = device_for(backend)
    got_x, want_x = x.clone().to(device), x.clone()
    got = backends.kernel("mumo_head", "ce_rows", backend)(got_x, targets.to(device), scale.to(device), -100,
                                                           compute_grad).cpu()
    want = ref.ce_rows(want_x, targets, scale, -100, compute_grad)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(got_x.cpu(), want_x, rtol=1e-4, atol=1e-6, equal_nan=True)


# --- bad input ------------------------------------------------------------------------------------

def _good():
    head = _head(n=4, v_multi=50, v_mono=20, seed=16)
    return head[:4], _targets(4, 50, 20)


@pytest.mark.parametrize("change,error,match", [
    (dict(hidden=torch.randn(4, 23)), ValueError, "multi_weight"),
    (dict(hidden=torch.randn(4)), ValueError, "hidden"),
    (dict(mono_features=torch.randn(5, 16)), ValueError, "mono_features"),
    (dict(mono_weight=torch.randn(20, 15)), ValueError, "mono_weight"),
    (dict(multi_weight=torch.randn(0, 24)), ValueError, "V_multi >= 1"),
    (dict(hidden=torch.randint(0, 3, (4, 24))), TypeError, "hidden: dtype"),
    (dict(mono_weight=torch.randn(20, 16, dtype=torch.float64)), TypeError, "mono_weight: dtype"),
    (dict(mono_weight=torch.randn(20, 16, device="meta")), ValueError, "mono_weight: on meta"),
    (dict(multi_bias=torch.randn(49)), ValueError, "multi_bias"),
    (dict(mono_bias=torch.randn(20, device="meta")), ValueError, "mono_bias: on meta"),
    (dict(k=71), ValueError, "k: must be in"),
    (dict(k=0), ValueError, "k: must be in"),
    (dict(k=2.0), TypeError, "k: expected an int"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(temperature=torch.tensor(1.0)), TypeError, "temperature"),
    (dict(backend="nope"), ValueError, "backend"),
])
def test_topk_bad_input(change, error, match):
    (h, wm, f, wo), _ = _good()
    kwargs = dict(hidden=h, multi_weight=wm, mono_features=f, mono_weight=wo, k=10)
    kwargs.update(change)
    with pytest.raises(error, match=match):
        mtkernels.mumo_head_topk(kwargs.pop("hidden"), kwargs.pop("multi_weight"), kwargs.pop("mono_features"),
                                 kwargs.pop("mono_weight"), **kwargs)


def test_topk_k_over_1024():
    head = _head(n=2, v_multi=1003, v_mono=301)
    with pytest.raises(ValueError, match="1024"):
        mtkernels.mumo_head_topk(*head[:4], k=1025)


@pytest.mark.parametrize("change,error,match", [
    (dict(targets=torch.tensor([0, 1, 70, 2])), ValueError, r"targets: must be in \[0, V_multi \+ V_mono\)"),
    (dict(targets=torch.tensor([0, 1, -1, 2])), ValueError, "targets: must be in"),
    (dict(targets=torch.tensor([0, 1, 2])), ValueError, r"targets: expected shape \(4,\)"),
    (dict(targets=torch.tensor([0.0, 1, 2, 3])), TypeError, "targets: expected a"),
    (dict(targets=torch.zeros(4, dtype=torch.int64, device="meta")), ValueError, "targets: on meta"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(ignore_index=1.5), TypeError, "ignore_index"),
    (dict(num_items_in_batch=-1), ValueError, "num_items_in_batch"),
    (dict(num_items_in_batch=2.5), ValueError, "num_items_in_batch"),
    (dict(mono_features=torch.randn(4, 16, dtype=torch.float16).int()), TypeError, "mono_features: dtype"),
])
def test_ce_bad_input(change, error, match):
    (h, wm, f, wo), targets = _good()
    kwargs = dict(hidden=h, multi_weight=wm, mono_features=f, mono_weight=wo, targets=targets)
    kwargs.update(change)
    with pytest.raises(error, match=match):
        mtkernels.mumo_head_cross_entropy(kwargs.pop("hidden"), kwargs.pop("multi_weight"), kwargs.pop("mono_features"),
                                          kwargs.pop("mono_weight"), kwargs.pop("targets"), **kwargs)


# --- torch.compile ----------------------------------------------------------------------------------

def test_torch_compile_fullgraph():
    head = _head(n=5, bias=True, seed=17)
    targets = _targets(5, 1003, 301)

    def step(h, wm, f, wo, bm, bo, targets):
        probs, ids, lse = mtkernels.mumo_head_topk(h, wm, f, wo, k=8, multi_bias=bm, mono_bias=bo)
        loss = mtkernels.mumo_head_cross_entropy(h, wm, f, wo, targets, multi_bias=bm, mono_bias=bo)
        return probs, ids, lse, loss

    def run(fn):
        f, wo = head[2].clone().requires_grad_(), head[3].clone().requires_grad_()
        out = fn(head[0], head[1], f, wo, head[4], head[5], targets)
        out[3].backward()
        return out, f.grad, wo.grad

    compiled = run(torch.compile(step, fullgraph=True, backend="aot_eager"))
    eager = run(step)
    for a, b in zip(compiled[0] + compiled[1:], eager[0] + eager[1:]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_vocabulary(backend):
    head = _head(n=3, h=16, d=8, v_multi=32003, v_mono=4001, bias=True, seed=18)
    _check_topk(backend, head, 10)
    _check_ce(backend, head, _targets(3, 32003, 4001))
