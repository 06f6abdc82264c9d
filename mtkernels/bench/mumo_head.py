"""MuMo head ops: the cases shared by ``mtkernels bench`` and ``benchmarks/bench_mumo_head.py``, on
CPU tensors and, where there is a CUDA device, on CUDA tensors.

Top-k (``mumo_head_topk``, k = 10), shape ``(N, H, V_multi, V_mono)``, d_mono = H:

- ``fused-<backend>``: :func:`mtkernels.mumo_head_topk`;
- ``eager``: ``torch.cat`` of the two blocks' logits, ``softmax``, ``topk``;
- ``gemm-floor``: the two GEMMs alone (both sides pay them; the win is everything after).

Cross-entropy forward + backward (``mumo_head_cross_entropy``, gradients to the mono block):

- ``fused-<backend>``: :func:`mtkernels.mumo_head_cross_entropy`;
- ``eager``: the concatenated float32 logits, ``F.cross_entropy``, autograd;
- ``gemm-floor``: the two logits GEMMs and the two gradient GEMMs of the mono block.

A case that cannot run here raises ``Unavailable`` with the reason, from ``make_case``.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch

import mtkernels
from mtkernels import backends

from .case_table import add_ratios, format_case_table, timed_record
from .kd import DEVICES, FUSED_CANDIDATES, Unavailable, cuda_missing_reason
from .measure import Timing

Shape = Tuple[int, int, int, int]  # (N, H, V_multi, V_mono)
TOPK_SHAPES: List[Shape] = [(16, 1024, 128256, 30000)]
CE_SHAPES: List[Shape] = [(512, 256, 32000, 8000)]
CE_LARGE_SHAPES: List[Shape] = [(1024, 1024, 128256, 30000)]
OPS = ("mumo_head_topk", "mumo_head_ce_fwd_bwd")
BASELINE_CASES: Tuple[str, ...] = ("eager", "gemm-floor")
TOP_K = 10
__all__ = ["DEVICES", "TOPK_SHAPES", "CE_SHAPES", "CE_LARGE_SHAPES", "Unavailable", "case_names", "cuda_missing_reason",
           "make_case", "make_inputs", "run", "format_table"]


def head_backends(device="cpu") -> List[str]:
    """Fused backends with MuMo head kernels that run on ``device`` tensors here."""
    device = torch.device(device)
    if device.type == "cuda" and cuda_missing_reason() is not None:
        return []
    out = []
    for b in FUSED_CANDIDATES.get(device.type, ()):
        if b in mtkernels.available_backends() and backends.has_kernel(b, "mumo_head", "ce_rows"):
            try:
                backends.resolve_backend(b, device, "mumo_head")
            except (RuntimeError, ValueError, NotImplementedError):
                continue
            out.append(b)
    return out


def case_names(device="cpu") -> List[str]:
    return [f"fused-{b}" for b in FUSED_CANDIDATES[torch.device(device).type]] + list(BASELINE_CASES)


def make_inputs(shape: Shape, device="cpu", dtype: torch.dtype = torch.float32):
    """``(hidden (N,H), W_multi (V_multi,H), mono_features (N,H), W_mono (V_mono,H), targets (N,))``,
    drawn in float32 on the CPU from one seed, then cast and moved; every tenth target ignored,
    a fifth of them monolingual words."""
    n, h, v_multi, v_mono = shape
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, v_multi, (n,), generator=g)
    targets[::5] = v_multi + torch.randint(0, v_mono, (len(targets[::5]),), generator=g)
    targets[::10] = -100
    floats = (torch.randn(n, h, generator=g), torch.randn(v_multi, h, generator=g) / h**0.5,
              torch.randn(n, h, generator=g), torch.randn(v_mono, h, generator=g) / h**0.5)
    return tuple(t.to(device, dtype) for t in floats) + (targets.to(device),)


# --- top-k -----------------------------------------------------------------------------------------

def topk_fused(backend: str) -> Callable:
    def step(h, wm, f, wo, targets):
        return mtkernels.mumo_head_topk(h, wm, f, wo, k=TOP_K, backend=backend)
    return step


def topk_eager(h, wm, f, wo, targets):
    z = torch.cat([h @ wm.T, f @ wo.T], dim=1).float()
    probs = torch.softmax(z, dim=1)
    return torch.topk(probs, TOP_K, dim=1)


def topk_gemm_floor(h, wm, f, wo, targets):
    return h @ wm.T, f @ wo.T


# --- cross-entropy -----------------------------------------------------------------------------------

def ce_fused(backend: str) -> Callable:
    def step(h, wm, f, wo, targets):
        f, wo = f.detach().requires_grad_(), wo.detach().requires_grad_()
        loss = mtkernels.mumo_head_cross_entropy(h, wm, f, wo, targets, backend=backend)
        loss.backward()
        return loss.detach()
    return step


def ce_eager(h, wm, f, wo, targets):
    f, wo = f.detach().requires_grad_(), wo.detach().requires_grad_()
    z = torch.cat([(h @ wm.T).float(), (f @ wo.T).float()], dim=1)
    loss = torch.nn.functional.cross_entropy(z, targets, ignore_index=-100)
    loss.backward()
    return loss.detach()


def ce_gemm_floor(h, wm, f, wo, targets):
    s = f @ wo.T
    return h @ wm.T, s @ wo, s.T @ f


_CASES = {"mumo_head_topk": (topk_fused, topk_eager, topk_gemm_floor),
          "mumo_head_ce_fwd_bwd": (ce_fused, ce_eager, ce_gemm_floor)}


def make_case(op: str, name: str, device="cpu") -> Callable:
    """The step function ``fn(h, wm, f, wo, targets)`` of case ``name`` of ``op`` on ``device``
    tensors, or ``Unavailable`` saying why it cannot run here."""
    device = torch.device(device)
    if device.type == "cuda" and cuda_missing_reason() is not None:
        raise Unavailable(cuda_missing_reason())
    fused, eager, floor = _CASES[op]
    if name.startswith("fused-"):
        backend = name[len("fused-"):]
        if backend in head_backends(device):
            return fused(backend)
        state = mtkernels.backend_report().get(backend, "not a backend")
        if state.startswith("available"):
            state = f"{state}, but it runs no MuMo head kernel on {device.type} tensors here"
        raise Unavailable(f"backend {backend!r} is {state}")
    if name == "eager":
        return eager
    if name == "gemm-floor":
        return floor
    raise ValueError(f"unknown MuMo head case {name!r}; one of {', '.join(case_names(device))}")


def run(topk_shapes=TOPK_SHAPES, ce_shapes=CE_SHAPES, timing: Timing = Timing(), devices: Sequence[str] = ("cpu",),
        dtype: torch.dtype = torch.float32) -> List[Dict]:
    """One record per (op, shape, device, case) that can run here: time, peak memory above the
    inputs, ratios to eager and to the GEMM floor of the same op, shape and device."""
    records = []
    for device in devices:
        device = torch.device(device)
        for op, shapes in (("mumo_head_topk", topk_shapes), ("mumo_head_ce_fwd_bwd", ce_shapes)):
            for shape in shapes:
                args = make_inputs(shape, device, dtype)
                group = []
                for name in case_names(device):
                    try:
                        fn = make_case(op, name, device)
                    except Unavailable:
                        continue
                    group.append(timed_record(op, shape, device, dtype, name, lambda fn=fn: fn(*args), timing))
                add_ratios(group)
                records += group
    return records


def format_table(records: List[Dict]) -> str:
    return format_case_table(records, "(N, H, V_multi, V_mono)", shape_width=28)
