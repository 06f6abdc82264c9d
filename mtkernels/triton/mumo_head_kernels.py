"""Triton cross-entropy row kernel of the MuMo head loss (docs/mumo_head.md; contract: the
reference ``ce_rows`` in mtkernels/reference/mumo_head.py). Its launcher is
mtkernels/triton/mumo_head.py.

One program per row walks the row in BLOCK-sized tiles, twice at most:

1. the log-sum-exp, streamed: the raw running max m and s = Σ e^{x - m}, rescaled when m moves
   (no exp ever sees a positive argument); loss = log s - (x_g - m), which keeps the small
   difference exact at any magnitude of the logits;
2. compute_grad only: ``grad_scale · (softmax - onehot(g))`` written over the row.

Ignored rows get loss 0 and a zero gradient; a row that is -inf everywhere gets NaN.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def ce_rows_kernel(logits_ptr, targets_ptr, grad_scale_ptr, loss_ptr, stride, cols, ignore_index, compute_grad,
                   BLOCK: tl.constexpr):
    """Program i (grid ``(n,)``): logits ``(n, cols)`` fp32 with row stride ``stride`` and unit
    column stride (overwritten by the gradient when compute_grad), targets ``(n,)`` int64,
    grad_scale ``(n,)`` fp32; out: loss ``(n,)`` fp32."""
    row = tl.program_id(0)
    x_row = logits_ptr + row.to(tl.int64) * stride
    target = tl.load(targets_ptr + row)
    offs = tl.arange(0, BLOCK)
    if target != ignore_index:
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.zeros((), tl.float32)
        for start in range(0, cols, BLOCK):
            c = start + offs
            x = tl.load(x_row + c, mask=c < cols, other=float("-inf"))
            new_m = tl.maximum(m, tl.max(x, axis=0))
            # while nothing finite was seen, s is 0 and the shift origin 0 (no -inf - (-inf))
            s = tl.where(m == float("-inf"), 0.0, s * tl.exp(m - new_m))
            origin = tl.where(new_m == float("-inf"), 0.0, new_m)
            s += tl.sum(tl.exp(x - origin), axis=0)
            m = new_m
        has_distribution = (m > float("-inf")) & (s > 0.0)
        log_s = tl.log(s)
        x_g = tl.load(x_row + target)
        loss = tl.where(has_distribution, log_s - (x_g - m), float("nan"))
        tl.store(loss_ptr + row, loss)
        if compute_grad:
            scale = tl.load(grad_scale_ptr + row)
            for start in range(0, cols, BLOCK):
                c = start + offs
                valid = c < cols
                x = tl.load(x_row + c, mask=valid, other=float("-inf"))
                grad = (tl.exp((x - m) - log_s) - tl.where(c == target, 1.0, 0.0)) * scale
                tl.store(x_row + c, tl.where(has_distribution, grad, float("nan")), mask=valid)
    else:
        tl.store(loss_ptr + row, 0.0)
        if compute_grad:
            for start in range(0, cols, BLOCK):
                c = start + offs
                tl.store(x_row + c, tl.zeros((BLOCK,), tl.float32), mask=c < cols)
