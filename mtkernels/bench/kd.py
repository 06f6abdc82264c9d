"""Self-evolution KD loss, forward + backward: the cases shared by ``mtkernels bench`` and
``benchmarks/bench_kd.py``.

- ``fused-<backend>``: :func:`mtkernels.self_evolution_kd_loss` (mode ``forward_kd``);
- ``eager``: forward_kd in plain float32 PyTorch (full logits, log-softmaxes, autograd);
- ``liger-chunked-jsd``: Liger-Kernel's ``LigerFusedLinearJSDLoss(beta=0, compiled=False)``
  (forward KL with the same 0.5 / 0.5 weights), when liger-kernel is installed;
- ``gemm-floor``: the four GEMMs alone (student logits, the two student-gradient GEMMs, teacher logits).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch

import mtkernels
from mtkernels import backends

from .measure import Timing, median_time_ms, peak_memory_mb

Shape = Tuple[int, int, int]  # (N, H, V)
DEFAULT_SHAPES: List[Shape] = [(512, 256, 32000)]
LARGE_SHAPES: List[Shape] = [(4096, 1024, 32000), (1024, 1024, 128256)]


def kd_backends() -> List[str]:
    """Fused backends with KD kernels that run on CPU tensors here (Triton only runs on a GPU)."""
    return [b for b in mtkernels.available_backends()
            if b not in ("reference", "triton") and backends.has_kernel(b, "kd", "rows")]


def make_inputs(shape: Shape, device="cpu"):
    """``(h_s (N,H), W_s (V,H), h_t (N,H), W_t (V,H), labels (N,))``, every tenth label ignored."""
    n, h, v = shape
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::10] = -100
    tensors = (torch.randn(n, h, generator=g), torch.randn(v, h, generator=g) / h**0.5,
               torch.randn(n, h, generator=g), torch.randn(v, h, generator=g) / h**0.5, labels)
    return tuple(t.to(device) for t in tensors)


def _with_grad(h, w):
    return h.detach().requires_grad_(), w.detach().requires_grad_()


def fused(backend: str) -> Callable:
    def step(h, w, ht, wt, labels):
        h, w = _with_grad(h, w)
        mtkernels.self_evolution_kd_loss(h, w, ht, wt, labels, mode="forward_kd", backend=backend).backward()
    return step


def eager(h, w, ht, wt, labels, lam=0.5):
    h, w = _with_grad(h, w)
    log_q = torch.log_softmax(h @ w.T, dim=-1)
    log_p = torch.log_softmax((ht @ wt.T).detach(), dim=-1)
    valid = labels != -100
    ce = torch.nn.functional.nll_loss(log_q, labels, ignore_index=-100, reduction="sum")
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)[valid].sum()
    (((1 - lam) * ce + lam * kl) / valid.sum()).backward()


def gemm_floor(h, w, ht, wt, labels):
    s = h @ w.T
    return s @ w, s.T @ h, ht @ wt.T


def liger() -> Callable:
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    loss = LigerFusedLinearJSDLoss(beta=0.0, weight_hard_loss=0.5, weight_soft_loss=0.5, ignore_index=-100,
                                   compiled=False)

    def step(h, w, ht, wt, labels):
        h, w = _with_grad(h, w)
        loss(h, w, ht, wt, labels).backward()
    return step


def cases() -> Dict[str, Callable[[], Callable]]:
    """Case name -> factory of the step function (a factory, so a missing Liger only skips its case)."""
    out = {f"fused-{b}": (lambda b=b: fused(b)) for b in kd_backends()}
    out.update({"eager": lambda: eager, "liger-chunked-jsd": liger, "gemm-floor": lambda: gemm_floor})
    return out


def run(shapes=DEFAULT_SHAPES, timing: Timing = Timing()) -> List[Dict]:
    """One record per (shape, case): time, peak memory above the inputs, ratios to eager and the floor."""
    records = []
    for shape in shapes:
        args = make_inputs(shape)
        group = []
        for name, factory in cases().items():
            try:
                fn = factory()
            except ImportError:
                continue
            call = lambda fn=fn: fn(*args)  # noqa: E731
            group.append(dict(op="kd_forward_kd_fwd_bwd", shape=shape, case=name,
                              time_ms=median_time_ms(call, torch.device("cpu"), timing),
                              peak_mb=peak_memory_mb(call, torch.device("cpu"))))
        by_case = {r["case"]: r["time_ms"] for r in group}
        for r in group:
            r["x_eager"] = by_case["eager"] / r["time_ms"]
            r["x_floor"] = r["time_ms"] / by_case["gemm-floor"]
        records += group
    return records


def format_table(records: List[Dict]) -> str:
    head = f"{'op':<22}{'(N, H, V)':<22}{'case':<20}{'time ms':>10}{'x eager':>9}{'/ floor':>9}{'peak MB':>10}"
    lines = [head, "-" * len(head)]
    for r in records:
        lines.append(f"{r['op']:<22}{str(r['shape']):<22}{r['case']:<20}{r['time_ms']:>10.1f}{r['x_eager']:>9.2f}"
                     f"{r['x_floor']:>9.2f}{r['peak_mb']:>10.1f}")
    return "\n".join(lines)
