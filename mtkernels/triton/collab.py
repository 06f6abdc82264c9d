"""Triton kernels for the collab primitives (see mtkernels/ops/collab_sampling.py for their use).

Every kernel runs on a ``(B, S)`` grid: program ``(b, s)`` owns one power-of-two tile of row b's
vocabulary, ``[s * TILE, (s + 1) * TILE)``, computes the combined logits ``z`` of that tile once
(``combined_logits_tile``, shared so that z is bit-identical in all four kernels), and writes a
small partial result: (max, sum-exp) and its k best tokens for ``topk``, one mass and token count
per keep set for ``threshold_mass``, one perturbed arg-max for ``gumbel_argmax``. A keep set
``(theta, cut)`` keeps ``z > theta``, and ``z == theta`` for ids ``<= cut``. The launcher merges the
``S`` partials of a row with a few torch ops on ``(B, S)`` / ``(B, S * k)`` tensors. When B is
small the tiles shrink so that the ``B * S`` programs still fill the GPU.

Ranking uses one int64 "rank key" per token, smaller = better: the high 32 bits hold the
order-preserving 32-bit image of ``z`` inverted (larger z, smaller key), the low 32 bits the token
id, so the key order is "descending value, lowest id on ties", exactly the spec's, and keys are
unique (a min-reduction or a sort of keys needs no tie-breaking of its own).
"""

from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ..ops.collab_args import MAX_TOP_K
from ..ops.collab_sampling import key_to_float

Tensor = torch.Tensor
MAX_MODELS = 4  # logits pointers a kernel takes; NUM_MODELS (constexpr) of them are read
# enable_fp_fusion off: no contraction, the same rounding in every kernel. maxnreg: without a
# register budget, ptxas 13 (sm_90) caps a 256-thread kernel near 80 registers and spills; with
# .maxnreg 128 it allocates what it needs (<= 128 keeps >= 2 blocks of 8 warps per SM).
LAUNCH_OPTIONS = {"enable_fp_fusion": False, "maxnreg": 128}

_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


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
    """The k smallest keys, ascending, in a K_PAD vector: k min-reductions. Used under the CPU
    interpreter, where tl.topk's xor-reductions run element by element in Python."""
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
    """Per tile: (max, sum-exp) into part_*[b, s], and its k best rank keys, best first, into
    cand[b, s, :k]. K_PAD = next_pow2(k) <= TILE. BITONIC (GPU): tl.topk, a partial bitonic
    sort; otherwise k min-reductions (fast under the interpreter)."""
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
    """out[b, :V] = z[b, :V] (contiguous)."""
    row = tl.program_id(0)
    cols = tl.program_id(1) * TILE + tl.arange(0, TILE)
    z = combined_logits_tile(x0, x1, x2, x3, st0, st1, st2, st3, w_ptr, tau_ptr, inv_tau_ptr, row, cols, V, NUM_MODELS)
    tl.store(out_ptr + row.to(tl.int64) * V + cols, z, mask=cols < V)


@triton.jit
def collab_threshold_mass_kernel(x0, x1, x2, x3, st0, st1, st2, st3, w_ptr, tau_ptr, inv_tau_ptr, V,
                                 thr_ptr, cut_ptr, active_ptr, lse_ptr, T, mass_ptr, count_ptr,
                                 NUM_MODELS: tl.constexpr, TILE: tl.constexpr):
    """mass[b, s, t] / count[b, s, t] = sum of exp(z - lse[b]) / number of the tile's tokens in the
    keep set (thresholds[b, t], cuts[b, t]). Rows with active[b] == 0 (every threshold NaN) are not
    read: their partials are 0."""
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
    """Per tile: the rank key of the best z + G over the keep set (threshold[b], cut[b]) (others
    count as -inf, so an empty tile loses to any eligible token elsewhere), and that token's z."""
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


# --- launch configuration (shared with the AOT test through aot_specs) ----------------------------

def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _target_programs(device: torch.device) -> int:
    """Programs worth launching per call: a few per SM on a GPU. Under the CPU interpreter few
    large tiles are fastest (each program is a sequence of numpy calls)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _tile(vocab: int, batch: int, device: torch.device, min_tile: int, max_tile: int) -> int:
    """Power-of-two tile: small enough that B * S programs fill the device, within bounds,
    and no larger than the vocabulary needs."""
    splits_wanted = max(1, -(-_target_programs(device) // max(batch, 1)))
    tile = _next_pow2(-(-vocab // splits_wanted))
    return max(16, min(max(tile, min_tile), max_tile, _next_pow2(vocab)))


def _num_warps(tile: int, max_warps: int = 8) -> int:
    """~16 elements per thread at most (a tile in registers, no spills), 1..max_warps warps."""
    return max(1, min(max_warps, tile // 512))


def topk_config(k: int, vocab: int, batch: int, device: torch.device) -> Tuple[int, int, int]:
    """(TILE, K_PAD, num_warps) of collab_topk_kernel. A tile holds at least 8 * K_PAD tokens, so
    the S * k candidates of a row are at most ~V / 8; k = 1024 uses 8192-token tiles."""
    k_pad = _next_pow2(k)
    tile = max(_tile(vocab, batch, device, min_tile=max(1024, 8 * k_pad), max_tile=max(4096, 8 * k_pad)), k_pad)
    return tile, k_pad, _num_warps(tile, max_warps=16)


def stream_config(vocab: int, batch: int, device: torch.device) -> Tuple[int, int]:
    """(TILE, num_warps) of the logits / threshold_mass / gumbel_argmax kernels."""
    tile = _tile(vocab, batch, device, min_tile=512, max_tile=4096)
    return tile, _num_warps(tile)


# --- launchers -------------------------------------------------------------------------------------

def _model_args(logits: Sequence[Tensor], weights: Tensor, temperature: Tensor, vocab_size: int) -> Tuple[list, Tensor]:
    """The 2 * MAX_MODELS pointer/row-stride arguments (unused slots repeat model 0), weights,
    temperature and its float64 reciprocal (correctly rounded, as torch divides); and the weights."""
    m = len(logits)
    if not 1 <= m <= MAX_MODELS:
        raise ValueError(f"triton collab kernels take 1 to {MAX_MODELS} models' logits, got {m}; "
                         f"use the cpu/cuda/reference backend for more")
    xs = []
    for i, x in enumerate(logits):
        if x.dim() != 2 or x.shape[1] < vocab_size or x.shape[0] != logits[0].shape[0]:
            raise ValueError(f"logits[{i}]: expected (B, >= {vocab_size}), got {tuple(x.shape)}")
        if x.dtype not in _DTYPE_NAMES:
            raise TypeError(f"logits[{i}]: dtype must be float32, bfloat16 or float16, got {x.dtype}")
        xs.append(x if x.stride(1) == 1 else x.contiguous())
    ptrs = xs + [xs[0]] * (MAX_MODELS - m)
    strides = [x.stride(0) for x in xs] + [0] * (MAX_MODELS - m)
    weights = weights.to(device=xs[0].device, dtype=torch.float32).contiguous()
    temperature = temperature.to(device=xs[0].device, dtype=torch.float32).contiguous()
    if weights.shape != (xs[0].shape[0], m):
        raise ValueError(f"weights: expected shape {(xs[0].shape[0], m)}, got {tuple(weights.shape)}")
    if temperature.shape != (xs[0].shape[0],):
        raise ValueError(f"temperature: expected shape {(xs[0].shape[0],)}, got {tuple(temperature.shape)}")
    return ptrs + strides + [weights, temperature, 1.0 / temperature.double()], weights


def rank_keys_to_values(keys: Tensor) -> Tensor:
    """Inverse of rank_keys' high half: the float32 z of int64 rank keys."""
    ordered = ((keys >> 32) & 0xFFFFFFFF) ^ 0x7FFFFFFF
    return key_to_float(ordered)


def merge_lse(part_max: Tensor, part_sum: Tensor) -> Tensor:
    """log sum exp over a row from per-tile (max, sum exp(z - max)), (B, S) each."""
    m = part_max.amax(dim=1)  # NaN propagates
    shift = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    total = (part_sum * torch.exp(part_max - shift.unsqueeze(1))).sum(dim=1)
    return m + torch.log(total)  # all -inf: -inf + log(0) = -inf


def topk(logits: List[Tensor], weights: Tensor, temperature: Tensor, vocab_size: int, k: int,
         bitonic: Optional[bool] = None):
    """bitonic: tl.topk (default on a GPU) or repeated min (default under the interpreter)."""
    if not 1 <= k <= min(vocab_size, MAX_TOP_K):
        raise ValueError(f"k must be in [1, min(V, {MAX_TOP_K})], got k={k} with V={vocab_size}")
    args, weights = _model_args(logits, weights, temperature, vocab_size)
    batch, device = weights.shape[0], weights.device
    tile, k_pad, warps = topk_config(k, vocab_size, batch, device)
    splits = -(-vocab_size // tile)
    cand = torch.empty((batch, splits, k), dtype=torch.int64, device=device)
    part_max = torch.empty((batch, splits), dtype=torch.float32, device=device)
    part_sum = torch.empty_like(part_max)
    if batch:
        collab_topk_kernel[(batch, splits)](*args, vocab_size, k, cand, part_max, part_sum,
                                            NUM_MODELS=len(logits), TILE=tile, K_PAD=k_pad,
                                            BITONIC=device.type == "cuda" if bitonic is None else bitonic,
                                            num_warps=warps, **LAUNCH_OPTIONS)
    cand = cand.view(batch, splits * k)
    if splits > 1:  # keys are unique, so the k smallest are exactly the spec's order
        cand = torch.topk(cand, k, dim=1, largest=False, sorted=True).values
    return rank_keys_to_values(cand), cand & 0xFFFFFFFF, merge_lse(part_max, part_sum)


def logits(logits: List[Tensor], weights: Tensor, temperature: Tensor, vocab_size: int) -> Tensor:
    args, weights = _model_args(logits, weights, temperature, vocab_size)
    batch, device = weights.shape[0], weights.device
    tile, warps = stream_config(vocab_size, batch, device)
    out = torch.empty((batch, vocab_size), dtype=torch.float32, device=device)
    if batch:
        collab_logits_kernel[(batch, -(-vocab_size // tile))](*args, vocab_size, out, NUM_MODELS=len(logits),
                                                              TILE=tile, num_warps=warps, **LAUNCH_OPTIONS)
    return out


def _id_cuts(id_cuts: Optional[Tensor], like: Tensor, vocab_size: int) -> Tensor:
    """The keep sets' id cuts as int64 shaped like the thresholds; None: every tie is kept."""
    if id_cuts is None:
        return torch.full(like.shape, vocab_size - 1, dtype=torch.int64, device=like.device)
    return id_cuts.to(device=like.device, dtype=torch.int64).contiguous()


def threshold_mass(logits: List[Tensor], weights: Tensor, temperature: Tensor, vocab_size: int, thresholds: Tensor,
                   lse: Tensor, id_cuts: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    args, weights = _model_args(logits, weights, temperature, vocab_size)
    batch, device = weights.shape[0], weights.device
    thresholds = thresholds.to(device=device, dtype=torch.float32).contiguous()
    cuts = _id_cuts(id_cuts, thresholds, vocab_size)
    active = (~torch.isnan(thresholds).all(dim=1)).to(torch.int8)  # rows to read
    lse = lse.to(device=device, dtype=torch.float32).contiguous()
    n_thr = thresholds.shape[1]
    tile, warps = stream_config(vocab_size, batch, device)
    splits = -(-vocab_size // tile)
    mass = torch.empty((batch, splits, n_thr), dtype=torch.float32, device=device)
    count = torch.empty((batch, splits, n_thr), dtype=torch.int32, device=device)
    if batch and n_thr:
        collab_threshold_mass_kernel[(batch, splits)](*args, vocab_size, thresholds, cuts, active, lse, n_thr, mass,
                                                      count, NUM_MODELS=len(logits), TILE=tile, num_warps=warps,
                                                      **LAUNCH_OPTIONS)
    return mass.sum(dim=1), count.sum(dim=1, dtype=torch.int64)


def gumbel_argmax(logits: List[Tensor], weights: Tensor, temperature: Tensor, vocab_size: int, threshold: Tensor,
                  keys: Tensor, id_cut: Optional[Tensor] = None):
    args, weights = _model_args(logits, weights, temperature, vocab_size)
    batch, device = weights.shape[0], weights.device
    threshold = threshold.to(device=device, dtype=torch.float32).contiguous()
    cut = _id_cuts(id_cut, threshold, vocab_size)
    keys = keys.to(device=device, dtype=torch.int64).contiguous()
    tile, warps = stream_config(vocab_size, batch, device)
    splits = -(-vocab_size // tile)
    best = torch.empty((batch, splits), dtype=torch.int64, device=device)
    best_z = torch.empty((batch, splits), dtype=torch.float32, device=device)
    if batch:
        collab_gumbel_argmax_kernel[(batch, splits)](*args, vocab_size, threshold, cut, keys, best, best_z,
                                                     NUM_MODELS=len(logits), TILE=tile, num_warps=warps,
                                                     **LAUNCH_OPTIONS)
    pick = best.argmin(dim=1, keepdim=True)  # unique keys: the spec's tie order
    return (best.gather(1, pick) & 0xFFFFFFFF).squeeze(1), best_z.gather(1, pick).squeeze(1)


# --- ahead-of-time compile specs (tests/test_triton_aot.py) ----------------------------------------

_MODEL_ARGS = ["x0", "x1", "x2", "x3", "st0", "st1", "st2", "st3", "w_ptr", "tau_ptr", "inv_tau_ptr", "V"]


def _signature(kernel, dtypes: Sequence[str], extra: Dict[str, str]) -> Dict[str, str]:
    """Argument types in kernel order: models' pointers (unused slots repeat model 0), int32
    row strides, the given extra arguments, constexprs last."""
    dtypes = list(dtypes) + [dtypes[0]] * (MAX_MODELS - len(dtypes))
    types = {f"x{i}": f"*{d}" for i, d in enumerate(dtypes)}
    types.update({f"st{i}": "i32" for i in range(MAX_MODELS)}, w_ptr="*fp32", tau_ptr="*fp32", inv_tau_ptr="*fp64",
                 V="i32", **extra)
    return {name: types.get(name, "constexpr") for name in kernel.arg_names}


def aot_specs() -> List[dict]:
    """Every kernel with the constexpr variants and num_warps its launcher picks: each dtype, 1
    and 4 models, and the tile / K_PAD range (tiles from the smallest to the largest, k from 1 to
    1024). Each entry: name, fn, signature, constexprs, num_warps, aligned (see aot_attrs)."""
    mixed = ["fp32", "bf16", "fp16", "bf16"]  # 4 models: the most loads in flight
    singles = [["fp32"], ["bf16"], ["fp16"]]
    specs = []

    def add(fn, dtypes, extra, num_warps, **constexprs):
        sig = _signature(fn, dtypes, extra)
        tag = ",".join(f"{k}={v}" for k, v in constexprs.items())
        # one model: row strides and V divisible by 16 (V = 32000, 152064, ...), as the JIT then
        # specialises them; several models: unaligned rows (padded heads, V = 4099, ...)
        aligned = len(dtypes) == 1
        specs.append(dict(name=f"{fn.fn.__name__}[{'/'.join(dtypes)};{tag};w{num_warps}{';D' if aligned else ''}]",
                          fn=fn, signature=sig, constexprs=dict(constexprs, NUM_MODELS=len(dtypes)),
                          num_warps=num_warps, aligned=aligned))

    topk_extra = dict(k="i32", cand_ptr="*i64", part_max_ptr="*fp32", part_sum_ptr="*fp32")
    topk_shapes = [(16, 16), (1024, 1), (1024, 128), (4096, 1), (4096, 8), (4096, 64), (4096, 512), (8192, 1024)]
    for dtypes, shapes in [(mixed, topk_shapes)] + [(d, [(4096, 64)]) for d in singles]:
        for tile, k_pad in shapes:
            add(collab_topk_kernel, dtypes, topk_extra, _num_warps(tile, 16), TILE=tile, K_PAD=k_pad, BITONIC=True)
    stream = [(collab_logits_kernel, dict(out_ptr="*fp32"), {}),
              (collab_threshold_mass_kernel, dict(thr_ptr="*fp32", cut_ptr="*i64", active_ptr="*i8", lse_ptr="*fp32",
                                                  T="i32", mass_ptr="*fp32", count_ptr="*i32"), {}),
              (collab_gumbel_argmax_kernel, dict(thr_ptr="*fp32", cut_ptr="*i64", keys_ptr="*i64", best_ptr="*i64",
                                                 best_z_ptr="*fp32"), {})]
    for fn, extra, consts in stream:
        for dtypes, tiles in [(mixed, (512, 4096))] + [(d, (4096,)) for d in singles]:
            for tile in tiles:
                add(fn, dtypes, extra, _num_warps(tile), TILE=tile, **consts)
    return specs


def aot_attrs(spec: dict) -> dict:
    """tt.divisibility=16 on every pointer (the JIT sees aligned tensors) and, for aligned specs,
    on the used row strides and V."""
    sig = spec["signature"]
    names = list(sig)
    divisible = [n for n, t in sig.items() if t.startswith("*")]
    if spec["aligned"]:
        divisible += [f"st{i}" for i in range(spec["constexprs"]["NUM_MODELS"])] + ["V"]
    return {(names.index(n),): [["tt.divisibility", 16]] for n in divisible}
