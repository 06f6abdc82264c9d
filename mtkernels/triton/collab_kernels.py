"""Triton device code of the collab primitives: the combined-logits tile and the four kernels.
Their launchers and launch configuration are in mtkernels/triton/collab.py.

Every kernel runs on a ``(B, S)`` grid: program ``(b, s)`` owns one power-of-two tile of row b's
vocabulary, ``[s * TILE, (s + 1) * TILE)``, computes the combined logits ``z`` of that tile once
(``combined_logits_tile``, shared so that z is bit-identical in all four kernels), and writes a
small partial result: (max, sum-exp) and its k best tokens for ``topk``, one mass and token count
per keep set for ``threshold_mass``, one perturbed arg-max for ``gumbel_argmax``. A keep set
``(theta, cut)`` keeps ``z > theta``, and ``z == theta`` for ids ``<= cut``.

The model arguments of every kernel: ``x0 .. x3`` point at the models' logits ``(B, >= V)`` (unit
column stride, fp32 / bf16 / fp16; slots past NUM_MODELS repeat model 0), ``st0 .. st3`` are their
row strides, ``w_ptr`` the weights ``(B, NUM_MODELS)`` fp32, ``tau_ptr`` the temperatures ``(B,)``
fp32 and ``inv_tau_ptr`` their reciprocals ``(B,)`` fp64, ``V`` the vocabulary size.

Ranking uses one int64 "rank key" per token, smaller = better: the high 32 bits hold the
order-preserving 32-bit image of ``z`` inverted (larger z, smaller key), the low 32 bits the token
id, so the key order is "descending value, lowest id on ties", exactly the spec's, and keys are
unique (a min-reduction or a sort of keys needs no tie-breaking of its own).
"""

from __future__ import annotations

import triton
import triton.language as tl

MAX_MODELS = 4  # logits pointers a kernel takes; NUM_MODELS (constexpr) of them are read


# --- shared device helpers -----------------------------------------------------------------------

@triton.jit
def _add_model(acc, masked, x_ptr, row_stride, w_ptr, row, m: tl.constexpr, cols, V,
               NUM_MODELS: tl.constexpr):
    """acc += w[row, m] * x_m[row, cols]; -inf entries add 0 and are recorded in ``masked``.
    Columns past V read as -inf, so they end up masked too."""
    x = tl.load(x_ptr + row * row_stride + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
    w = tl.load(w_ptr + row * NUM_MODELS + m)
    is_masked = x == float("-inf")
    # float64: the product of two floats is exact, so each step rounds once (fma or not)
    acc = acc + w.to(tl.float64) * tl.where(is_masked, 0.0, x).to(tl.float64)
    return acc, masked | is_masked


@triton.jit
def _divide(acc, tau, inv_tau):
    """acc / tau correctly rounded in float64, from inv_tau = RN(1 / tau): the product, one
    residual correction (then within one ulp: faithful), and Markstein's correction, which turns a
    faithful quotient into the correctly rounded one (the residuals acc - q * tau are exact in an
    fma). Unlike div.rn.f64 this needs no slow-path call. A non-finite acc keeps acc * inv_tau."""
    tau = tau.to(tl.float64)
    q = acc * inv_tau
    q = tl.fma(tl.fma(-q, tau, acc), inv_tau, q)
    q = tl.fma(tl.fma(-q, tau, acc), inv_tau, q)
    return tl.where(q == q, q, acc * inv_tau)  # recomputed: keeping the first product live costs registers


@triton.jit
def combined_logits_tile(x0, x1, x2, x3, st0, st1, st2, st3, w_ptr, tau_ptr, inv_tau_ptr, row, cols, V,
                         NUM_MODELS: tl.constexpr):
    """z[row, cols] = (sum_m w[row, m] * x_m[row, cols]) / tau[row], models in order 0..M-1;
    -inf where any model is -inf (whatever the weight's sign) and past V; NaN propagates.

    The sum runs in float64 (each product exact), is divided by tau in float64 (correctly
    rounded, _divide) and rounded to float32 once: z is
    then float32 of the reference's float64 z, bit-identical to the cpu backend's, so thresholds
    taken from any backend's z select the same tokens. Starting from +0.0 turns a -0.0 product
    into +0.0, so z == 0 has one bit pattern."""
    row = row.to(tl.int64)
    acc = tl.zeros(cols.shape, tl.float64)
    masked = cols >= V
    acc, masked = _add_model(acc, masked, x0, st0, w_ptr, row, 0, cols, V, NUM_MODELS)
    if NUM_MODELS > 1:
        acc, masked = _add_model(acc, masked, x1, st1, w_ptr, row, 1, cols, V, NUM_MODELS)
    if NUM_MODELS > 2:
        acc, masked = _add_model(acc, masked, x2, st2, w_ptr, row, 2, cols, V, NUM_MODELS)
    if NUM_MODELS > 3:
        acc, masked = _add_model(acc, masked, x3, st3, w_ptr, row, 3, cols, V, NUM_MODELS)
    # Unconditional (exact for tau == 1 too): a branch on tau keeps two float64 tiles live and spills
    # the widest top-k variant; five float64 fmas per element are far below the memory-bound rate.
    acc = _divide(acc, tl.load(tau_ptr + row), tl.load(inv_tau_ptr + row))
    return tl.where(masked, float("-inf"), acc.to(tl.float32))


@triton.jit
def in_keep_set(z, cols, theta, cut, V):
    """The tile's tokens in the keep set (theta, cut); a NaN theta keeps nothing. The cut (int64)
    is clamped to [-1, V - 1], so the comparison runs on the int32 column ids."""
    cut = tl.minimum(tl.maximum(cut, -1), V - 1).to(tl.int32)
    return (z > theta) | ((z == theta) & (cols <= cut))


@triton.jit
def tile_max_sumexp(z):
    """(max z, sum exp(z - max z)) of a tile. An all -inf tile gives (-inf, 0) rather than the
    NaN of -inf - -inf; a NaN in z makes the sum NaN (whether or not max saw it)."""
    m = tl.max(z, axis=0)
    shift = tl.where(m == float("-inf"), 0.0, m)
    return m, tl.sum(tl.exp(z - shift), axis=0)


@triton.jit
def rank_keys(z, cols):
    """int64 keys ordered as (z descending, id ascending): see the module docstring."""
    bits = z.to(tl.uint32, bitcast=True)
    # order-preserving uint32: negatives have all bits flipped, non-negatives the sign bit set
    ordered = tl.where((bits & 0x80000000) != 0, ~bits, bits | 0x80000000)
    # invert (best first) and move to signed int32 order: ~ordered ^ 0x80000000
    high = (ordered ^ 0x7FFFFFFF).to(tl.int32, bitcast=True).to(tl.int64)
    return (high << 32) | cols.to(tl.int64)


@triton.jit
def smallest_keys_by_repeated_min(ranks, k, K_PAD: tl.constexpr):
    """The k smallest keys of ranks ``(TILE,)``, ascending, in a ``(K_PAD,)`` vector: k
    min-reductions. Used under the CPU interpreter, where tl.topk's xor-reductions run element by
    element in Python."""
    offs = tl.arange(0, K_PAD)
    best = tl.zeros([K_PAD], tl.int64)
    for i in range(k):
        smallest = tl.min(ranks, axis=0)
        best = tl.where(offs == i, smallest, best)
        ranks = tl.where(ranks == smallest, 0x7FFFFFFFFFFFFFFF, ranks)  # keys are unique
    return best


@triton.jit
def _fmix32(x):
    """murmur3's 32-bit finaliser; uint32 multiplies wrap mod 2**32."""
    x ^= x >> 16
    x *= tl.full((), 0x85EBCA6B, tl.uint32)
    x ^= x >> 13
    x *= tl.full((), 0xC2B2AE35, tl.uint32)
    x ^= x >> 16
    return x


@triton.jit
def gumbel_noise(key, cols):
    """G(key, j) of mtkernels/gumbel.py for the ids ``cols``; ``key`` is a uint32 scalar."""
    x = _fmix32(cols.to(tl.uint32) ^ _fmix32(key))
    x = _fmix32(x + key)
    u = ((x >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07  # 2**-23; exact
    # tl.log on float32 lowers to libdevice's __nv_logf (accurate, not lg2.approx)
    return -tl.log(-tl.log(u))


# --- kernels ---------------------------------------------------------------------------------------

@triton.jit
def collab_topk_kernel(x0, x1, x2, x3, st0, st1, st2, st3, w_ptr, tau_ptr, inv_tau_ptr, V, k,
                       cand_ptr, part_max_ptr, part_sum_ptr,
                       NUM_MODELS: tl.constexpr, TILE: tl.constexpr, K_PAD: tl.constexpr,
                       BITONIC: tl.constexpr):
    """Per tile: (max, sum-exp) into part_max / part_sum ``(B, S)`` fp32 at [b, s], and its k best
    rank keys, best first, into cand ``(B, S, k)`` int64 at [b, s, :k]. K_PAD = next_pow2(k) <= TILE.
    BITONIC (GPU): tl.topk, a partial bitonic sort; otherwise k min-reductions (fast under the
    interpreter)."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    part = row.to(tl.int64) * tl.num_programs(1) + split
    cols = split * TILE + tl.arange(0, TILE)
    z = combined_logits_tile(x0, x1, x2, x3, st0, st1, st2, st3, w_ptr, tau_ptr, inv_tau_ptr, row, cols, V, NUM_MODELS)
    m, s = tile_max_sumexp(z)
    tl.store(part_max_ptr + part, m)
    tl.store(part_sum_ptr + part, s)
    if K_PAD == 1:  # a plain min; tl.topk with k = 1 does not compile on older Triton
        best = tl.zeros([K_PAD], tl.int64) + tl.min(rank_keys(z, cols), axis=0)
    elif BITONIC:
        # smallest keys via the largest of their complements: tl.topk is max-first on every version
        best = ~tl.topk(~rank_keys(z, cols), K_PAD)
    else:
        best = smallest_keys_by_repeated_min(rank_keys(z, cols), k, K_PAD)
    offs = tl.arange(0, K_PAD)
    tl.store(cand_ptr + part * k + offs, best, mask=offs < k)


@triton.jit
def collab_logits_kernel(x0, x1, x2, x3, st0, st1, st2, st3, w_ptr, tau_ptr, inv_tau_ptr, V, out_ptr,
                         NUM_MODELS: tl.constexpr, TILE: tl.constexpr):
    """out ``(B, V)`` fp32, contiguous: out[b, :V] = z[b, :V]."""
    row = tl.program_id(0)
    cols = tl.program_id(1) * TILE + tl.arange(0, TILE)
    z = combined_logits_tile(x0, x1, x2, x3, st0, st1, st2, st3, w_ptr, tau_ptr, inv_tau_ptr, row, cols, V, NUM_MODELS)
    tl.store(out_ptr + row.to(tl.int64) * V + cols, z, mask=cols < V)


@triton.jit
def collab_threshold_mass_kernel(x0, x1, x2, x3, st0, st1, st2, st3, w_ptr, tau_ptr, inv_tau_ptr, V,
                                 thr_ptr, cut_ptr, active_ptr, lse_ptr, T, mass_ptr, count_ptr,
                                 NUM_MODELS: tl.constexpr, TILE: tl.constexpr):
    """mass ``(B, S, T)`` fp32 / count ``(B, S, T)`` int32 at [b, s, t] = sum of exp(z - lse[b]) /
    number of the tile's tokens in the keep set (thresholds[b, t], cuts[b, t]); thresholds
    ``(B, T)`` fp32, cuts ``(B, T)`` int64, lse ``(B,)`` fp32. Rows with active[b] == 0 (active
    ``(B,)`` int8; every threshold NaN) are not read: their partials are 0."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    part = row.to(tl.int64) * tl.num_programs(1) + split
    if tl.load(active_ptr + row) != 0:
        cols = split * TILE + tl.arange(0, TILE)
        z = combined_logits_tile(x0, x1, x2, x3, st0, st1, st2, st3, w_ptr, tau_ptr, inv_tau_ptr, row, cols, V, NUM_MODELS)
        p = tl.exp(z - tl.load(lse_ptr + row))
        # the tile stays in registers and each threshold is one masked reduction over it
        # (a (T, TILE) block would cost T times the registers)
        for t in range(T):
            theta = tl.load(thr_ptr + row.to(tl.int64) * T + t)
            cut = tl.load(cut_ptr + row.to(tl.int64) * T + t)
            keep = in_keep_set(z, cols, theta, cut, V)
            tl.store(mass_ptr + part * T + t, tl.sum(tl.where(keep, p, 0.0), axis=0))
            tl.store(count_ptr + part * T + t, tl.sum(keep.to(tl.int32), axis=0))
    else:
        for t in range(T):
            tl.store(mass_ptr + part * T + t, 0.0)
            tl.store(count_ptr + part * T + t, 0)


@triton.jit
def collab_gumbel_argmax_kernel(x0, x1, x2, x3, st0, st1, st2, st3, w_ptr, tau_ptr, inv_tau_ptr, V,
                                thr_ptr, cut_ptr, keys_ptr, best_ptr, best_z_ptr,
                                NUM_MODELS: tl.constexpr, TILE: tl.constexpr):
    """Per tile: the rank key of the best z + G(keys[b], ·) over the keep set (threshold[b],
    cut[b]) into best ``(B, S)`` int64 (others count as -inf, so an empty tile loses to any eligible
    token elsewhere), and that token's z into best_z ``(B, S)`` fp32; threshold ``(B,)`` fp32, cut
    and keys ``(B,)`` int64."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    part = row.to(tl.int64) * tl.num_programs(1) + split
    cols = split * TILE + tl.arange(0, TILE)
    z = combined_logits_tile(x0, x1, x2, x3, st0, st1, st2, st3, w_ptr, tau_ptr, inv_tau_ptr, row, cols, V, NUM_MODELS)
    key = tl.load(keys_ptr + row).to(tl.uint32)  # keys are in [0, 2**32): truncation is exact
    eligible = in_keep_set(z, cols, tl.load(thr_ptr + row), tl.load(cut_ptr + row), V)
    perturbed = tl.where(eligible, z + gumbel_noise(key, cols), float("-inf"))
    ranks = rank_keys(perturbed, cols)
    best = tl.min(ranks, axis=0)
    tl.store(best_ptr + part, best)
    tl.store(best_z_ptr + part, tl.max(tl.where(ranks == best, z, float("-inf")), axis=0))

