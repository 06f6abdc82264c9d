"""Each fused backend's self-evolution KD row kernel against its reference definition."""

import pytest
import torch

from mtkernels import backends
from mtkernels.reference import kernels as ref

from .conftest import FUSED_BACKENDS, device_for

KD_BACKENDS = [b for b in FUSED_BACKENDS if backends.has_kernel(b, "kd", "rows")]


def _case(n, v_s, v_t, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n, v_s, generator=g) * scale
    teacher = torch.randn(n, v_t, generator=g) * scale
    labels = torch.randint(0, min(v_s, v_t), (n,), generator=g)
    labels[1::5] = -100
    grad_scale = torch.rand(n, generator=g) + 0.5
    return student, teacher, labels, grad_scale


def _run(backend, student, teacher, labels, hard, grad_scale, mode, lam=0.5, beta=0.5, gamma=0.4, temperature=1.0,
         compute_grad=True):
    device = device_for(backend)
    vocab = min(student.shape[1], teacher.shape[1])
    s = student.clone().to(device)
    out = backends.kernel("kd", "rows", backend)(
        s, teacher.to(device), labels.to(device), None if hard is None else hard.to(device), grad_scale.to(device),
        mode, lam, beta, gamma, temperature, -100, vocab, compute_grad)
    return [o.cpu() for o in out] + [s.cpu()]


def _check(backend, student, teacher, labels, hard, grad_scale, mode, **params):
    got = _run(backend, student, teacher, labels, hard, grad_scale, mode, **params)
    want = _run("reference", student, teacher, labels, hard, grad_scale, mode, **params)
    torch.testing.assert_close(got[0], want[0], rtol=2e-4, atol=2e-5)  # loss
    torch.testing.assert_close(got[1], want[1], rtol=2e-4, atol=2e-5)  # d
    assert torch.equal(got[2], want[2])  # is_hard
    torch.testing.assert_close(got[3], want[3], rtol=2e-4, atol=1e-6)  # gradient (or untouched logits)


@pytest.mark.parametrize("backend", KD_BACKENDS)
@pytest.mark.parametrize("mode", [0, 2, 3, 4, 5])
@pytest.mark.parametrize("vocab", [(37, 37), (1000, 1003), (4099, 4000)])
def test_rows_match_reference(backend, mode, vocab):
    student, teacher, labels, grad_scale = _case(12, *vocab)
    _check(backend, student, teacher, labels, None, grad_scale, mode, gamma=0.4 if mode else 3.0)


@pytest.mark.parametrize("backend", KD_BACKENDS)
@pytest.mark.parametrize("lam,beta,temperature", [(0.0, 0.5, 1.0), (1.0, 0.5, 1.0), (0.5, 1.0, 1.0),
                                                  (0.3, 0.2, 2.0), (1.0, 1.0, 0.5)])
@pytest.mark.parametrize("mode", [0, 2, 5])
def test_rows_edge_parameters(backend, lam, beta, temperature, mode):
    student, teacher, labels, grad_scale = _case(10, 301, 301, seed=1)
    _check(backend, student, teacher, labels, None, grad_scale, mode, lam=lam, beta=beta, temperature=temperature,
           gamma=0.0)


@pytest.mark.parametrize("backend", KD_BACKENDS)
def test_rows_given_hard_mask_and_stats_only(backend):
    student, teacher, labels, grad_scale = _case(16, 500, 520, seed=2)
    hard = torch.rand(16, generator=torch.Generator().manual_seed(3)) < 0.5
    _check(backend, student, teacher, labels, hard, grad_scale, 1)
    _check(backend, student, teacher, labels, None, grad_scale, 3, compute_grad=False)


@pytest.mark.parametrize("backend", KD_BACKENDS)
def test_rows_large_logits_stay_finite(backend):
    student, teacher, labels, grad_scale = _case(8, 2000, 2000, seed=4, scale=1e4)
    for mode in (0, 2, 4, 5):
        loss, d, _, grad = _run(backend, student, teacher, labels, None, grad_scale, mode)
        assert torch.isfinite(loss).all() and torch.isfinite(d).all() and torch.isfinite(grad).all()
