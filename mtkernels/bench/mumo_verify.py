"""MuMo verification scores: the cases shared by ``benchmarks/bench_mumo_verify.py`` and a
``mtkernels bench`` section (``run`` -> records, ``format_table``).

From logits ``(B, K, L, V)``: ``fused-<backend>`` (:func:`mtkernels.mumo_verify_scores`) beside
``eager`` (``log_softmax + gather + masked mean``) and ``read-floor`` (one ``amax`` pass over the
logits: a single read of every element, the least any exact method costs).
From hidden states ``(B, K, L, H)`` and the head ``(V, H)``: ``fused-<backend>``
(:func:`mtkernels.mumo_verify_scores_fused`) beside ``eager`` (``hidden @ W.T`` then the eager
chain) and ``gemm-floor`` (the GEMM alone). Lengths are drawn in 1..L, so padding is present.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch

import mtkernels

from .case_table import add_ratios, format_case_table, runnable_backends, timed_record
from .measure import Timing

LogitsShape = Tuple[int, int, int, int]  # (B, K, L, V)
FusedShape = Tuple[int, int, int, int, int]  # (B, K, L, H, V)
LOGITS_SHAPES: List[LogitsShape] = [(8, 10, 4, 128256)]
FUSED_SHAPES: List[FusedShape] = [(8, 10, 4, 1024, 128256)]
FUSED_CANDIDATES = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}


def logits_inputs(shape: LogitsShape, device="cpu", dtype=torch.float32):
    b, k, length, vocab = shape
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(b, k, length, vocab, generator=g) * 3
    ids = torch.randint(0, vocab, (b, k, length), generator=g)
    lengths = torch.randint(1, length + 1, (b, k), generator=g)
    return logits.to(device, dtype), ids.to(device), lengths.to(device)


def fused_inputs(shape: FusedShape, device="cpu", dtype=torch.float32):
    b, k, length, h, vocab = shape
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(b, k, length, h, generator=g)
    weight = torch.randn(vocab, h, generator=g) / h**0.5
    ids = torch.randint(0, vocab, (b, k, length), generator=g)
    lengths = torch.randint(1, length + 1, (b, k), generator=g)
    return hidden.to(device, dtype), weight.to(device, dtype), ids.to(device), lengths.to(device)


def eager_scores(logits, ids, lengths):
    """The chain the op replaces: a full float32 log-softmax, a gather, a masked mean."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    picked = log_p.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    inside = torch.arange(logits.shape[2], device=logits.device) < lengths.unsqueeze(-1)
    return (picked * inside).sum(-1) / lengths


def fused_backends(device) -> List[str]:
    return runnable_backends(device, "mumo_verify", FUSED_CANDIDATES.get(torch.device(device).type, ()))


def logits_cases(device="cpu") -> Dict[str, Callable]:
    cases = {f"fused-{b}": (lambda x, i, n, b=b: mtkernels.mumo_verify_scores(x, i, n, backend=b))
             for b in fused_backends(device)}
    cases["eager"] = eager_scores
    cases["read-floor"] = lambda x, i, n: x.amax(-1)
    return cases


def fused_cases(device="cpu") -> Dict[str, Callable]:
    cases = {f"fused-{b}": (lambda h, w, i, n, b=b: mtkernels.mumo_verify_scores_fused(h, w, i, n, backend=b))
             for b in fused_backends(device)}
    cases["eager"] = lambda h, w, i, n: eager_scores(h @ w.T, i, n)
    cases["gemm-floor"] = lambda h, w, i, n: h @ w.T
    return cases


def _group(op, shape, device, dtype, cases, args, timing, floor, avoided_mb):
    group = [timed_record(op, shape, device, dtype, name, lambda fn=fn: fn(*args), timing)
             for name, fn in cases.items()]
    add_ratios(group, floor)
    for r in group:
        r["peak_pct_of_logits"] = 100 * r["peak_mb"] / avoided_mb
    return group


def run(logits_shapes: Sequence[LogitsShape] = LOGITS_SHAPES, fused_shapes: Sequence[FusedShape] = FUSED_SHAPES,
        timing: Timing = Timing(), devices: Sequence[str] = ("cpu",), dtype=torch.float32) -> List[Dict]:
    """One record per (shape, device, case): time, peak memory above the inputs (MiB, and as a % of
    the float32 (B, K, L, V) logits the fused form avoids), ratios to eager and to the floor."""
    records = []
    for device in devices:
        for shape in logits_shapes:
            args = logits_inputs(shape, device, dtype)
            avoided = shape[0] * shape[1] * shape[2] * shape[3] * 4 / 2**20
            records += _group("mumo_verify_logits", shape, device, dtype, logits_cases(device), args, timing,
                              "read-floor", avoided)
        for shape in fused_shapes:
            args = fused_inputs(shape, device, dtype)
            avoided = shape[0] * shape[1] * shape[2] * shape[4] * 4 / 2**20
            records += _group("mumo_verify_fused", shape, device, dtype, fused_cases(device), args, timing,
                              "gemm-floor", avoided)
    return records


def format_table(records: List[Dict]) -> str:
    return format_case_table(records, "shape", shape_width=30, extra=[("% logits", "peak_pct_of_logits", ".2f")])


if __name__ == "__main__":
    print(format_table(run()))
