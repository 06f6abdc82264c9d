"""Self-evolution KD loss, forward + backward: the fused loss on each backend beside the eager
reference (full logits, autograd), Liger-Kernel's chunked JSD loss where installed (``beta=0`` is
forward KL: compared on ``forward_kd``), and the GEMM floor (the four GEMMs alone: student logits,
the two student-gradient GEMMs, teacher logits). Peak memory (MiB above the inputs) in extra_info.

    pytest benchmarks/bench_kd.py --benchmark-only            # (N, H, V) = (512, 256, 32000)
    pytest benchmarks/bench_kd.py --benchmark-only --large    # (4096, 1024, 32000), (1024, 1024, 128256)
"""

import pytest
import torch

import mtkernels
from mtkernels import backends
from mtkernels.bench.measure import PEAK_MEMORY_METHOD, peak_memory_mb

DEFAULT = [(512, 256, 32000)]
LARGE = [(4096, 1024, 32000), (1024, 1024, 128256)]
KD_BACKENDS = [b for b in mtkernels.available_backends()
               if b != "reference" and ("kd", "rows") in backends._load(b).kernels and b != "triton"]


def _shapes(config):
    large = config.getoption("--large") or config.getoption("--bench-sizes") == "large"
    return LARGE if large else DEFAULT


def pytest_generate_tests(metafunc):
    if "kd_shape" in metafunc.fixturenames:
        shapes = _shapes(metafunc.config)
        metafunc.parametrize("kd_shape", shapes, ids=[f"N{n}-H{h}-V{v}" for n, h, v in shapes])


def _inputs(n, h, v):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::10] = -100
    return (torch.randn(n, h, generator=g), torch.randn(v, h, generator=g) / h**0.5,
            torch.randn(n, h, generator=g), torch.randn(v, h, generator=g) / h**0.5, labels)


def _fused(backend):
    def step(h, w, ht, wt, labels):
        h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
        mtkernels.self_evolution_kd_loss(h, w, ht, wt, labels, mode="forward_kd", backend=backend).backward()
    return step


def _eager(h, w, ht, wt, labels, lam=0.5):
    """forward_kd in plain float32 PyTorch: full logits, log-softmaxes, autograd."""
    h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
    log_q = torch.log_softmax(h @ w.T, dim=-1)
    log_p = torch.log_softmax((ht @ wt.T).detach(), dim=-1)
    valid = labels != -100
    ce = torch.nn.functional.nll_loss(log_q, labels, ignore_index=-100, reduction="sum")
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)[valid].sum()
    (((1 - lam) * ce + lam * kl) / valid.sum()).backward()


def _gemm_floor(h, w, ht, wt, labels):
    s = h @ w.T
    s @ w, s.T @ h, ht @ wt.T


def _liger():
    liger = pytest.importorskip("liger_kernel.chunked_loss")
    loss = liger.LigerFusedLinearJSDLoss(beta=0.0, weight_hard_loss=0.5, weight_soft_loss=0.5, ignore_index=-100)

    def step(h, w, ht, wt, labels):
        h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
        loss(h, w, ht, wt, labels).backward()
    return step


CASES = {**{f"fused-{b}": (lambda b=b: _fused(b)) for b in KD_BACKENDS}, "eager-reference": lambda: _eager,
         "liger-chunked-jsd": _liger, "gemm-floor": lambda: _gemm_floor}


@pytest.mark.parametrize("case", list(CASES))
def test_kd_forward_backward(benchmark, kd_shape, case):
    fn = CASES[case]()
    args = _inputs(*kd_shape)
    benchmark.group = f"kd forward_kd fwd+bwd N{kd_shape[0]} H{kd_shape[1]} V{kd_shape[2]}"
    benchmark.extra_info.update(case=case, shape=kd_shape, peak_memory_mb=peak_memory_mb(lambda: fn(*args), torch.device("cpu")),
                                peak_memory_method=PEAK_MEMORY_METHOD)
    benchmark.pedantic(fn, args=args, rounds=3, warmup_rounds=1)
