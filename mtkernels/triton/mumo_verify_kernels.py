"""Triton kernels of the MuMo verification primitives (docs/mumo_verify.md; launchers and launch
configuration in mtkernels/triton/mumo_verify.py).

- ``lse_pick_kernel``: one program per selected row walks it in BLOCK-wide tiles keeping a running
  maximum and rescaled sum per lane (one read of the row), merged across lanes at the end; and the
  logit of the row's id.
- ``linear_lse_kernel``: one program per (BLOCK_M rows, vocabulary split) forms the logits tile by
  tile, ``tl.dot`` over BLOCK_K slices of H, never storing them, and folds each tile into a running
  per-row maximum and sum; the launcher merges the splits' partials.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _rescale(m_old, m_new):
    """exp(m_old - m_new), 0 where nothing finite was seen yet (m_old = -inf)."""
    return tl.where(m_old == float("-inf"), 0.0, tl.exp(m_old - tl.where(m_new == float("-inf"), 0.0, m_new)))


@triton.jit
def _round_bf16(x):
    """float32 x rounded to the nearest bfloat16 (ties to even), as float32: by its bits, because the
    interpreter's float32 -> bfloat16 cast truncates."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _rounded(x, dtype, UPCAST: tl.constexpr):
    """float32 x rounded once to ``dtype`` (the weight's), returned as float32."""
    if UPCAST and dtype == tl.bfloat16:
        return _round_bf16(x)
    return x.to(dtype).to(tl.float32)


@triton.jit
def lse_pick_kernel(x_ptr, rows_ptr, ids_ptr, lse_ptr, picked_ptr, stride_row, V,
                    HAS_ROWS: tl.constexpr, HAS_IDS: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0)
    row = tl.load(rows_ptr + i).to(tl.int64) if HAS_ROWS else i.to(tl.int64)
    base = x_ptr + row * stride_row
    cols = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    for v0 in range(0, V, BLOCK):
        valid = v0 + cols < V
        x = tl.load(base + v0 + cols, mask=valid, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * _rescale(m, m_new) + tl.exp(x - shift)
        m = m_new
    row_max = tl.max(m, axis=0)
    total = tl.sum(s * _rescale(m, row_max), axis=0)
    lse = tl.where(row_max == float("-inf"), float("-inf"), row_max + tl.log(total))
    tl.store(lse_ptr + i, lse)
    if HAS_IDS:
        tok = tl.load(ids_ptr + i)
        tl.store(picked_ptr + i, tl.load(base + tok).to(tl.float32))


@triton.jit
def linear_lse_kernel(h_ptr, w_ptr, b_ptr, max_ptr, sum_ptr, n, V, H, stride_h, stride_w, cols_per_split,
                      HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    splits = tl.num_programs(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    v_begin = split * cols_per_split
    v_end = tl.minimum(V, v_begin + cols_per_split)
    ks = tl.arange(0, BLOCK_K)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_M], tl.float32)
    for v0 in range(v_begin, v_end, BLOCK_N):
        cols = v0 + tl.arange(0, BLOCK_N)
        col_ok = cols < v_end
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, H, BLOCK_K):
            k_ok = k0 + ks < H
            # int32 offsets from scalar bases (the launcher keeps V * stride_w and n * stride_h < 2^31)
            w = tl.load(w_ptr + (cols[:, None] * stride_w + (k0 + ks)[None, :]),
                        mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            h = tl.load(h_ptr + (rows[:, None] * stride_h + (k0 + ks)[None, :]),
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            if UPCAST:  # the interpreter's dot of 16-bit floats is wrong: the same products in float32
                h = _rounded(h.to(tl.float32), w.dtype, UPCAST)
                acc = tl.dot(h, tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
            elif IEEE:  # float32 weights: a float32 GEMM, as torch's default (no TF32)
                acc = tl.dot(h.to(w.dtype), tl.trans(w), acc, input_precision="ieee")
            else:
                acc = tl.dot(h.to(w.dtype), tl.trans(w), acc)
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        # rounded once to the weight's dtype, as the GEMM the fused form replaces writes its output
        z = tl.where(col_ok[None, :], _rounded(acc, w_ptr.dtype.element_ty, UPCAST), float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * _rescale(m, m_new) + tl.sum(tl.exp(z - shift[:, None]), axis=1)
        m = m_new
    tl.store(max_ptr + rows * splits + split, m, mask=row_ok)
    tl.store(sum_ptr + rows * splits + split, s, mask=row_ok)
