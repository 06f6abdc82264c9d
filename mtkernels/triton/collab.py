"""Launchers of the Triton collab kernels (mtkernels/triton/collab_kernels.py) and their launch
configuration; see mtkernels/ops/collab_sampling.py for their use.

Each launcher checks and prepares its arguments, picks the tile of the ``(B, S)`` grid (when B is
small the tiles shrink so that the ``B * S`` programs still fill the GPU), launches one kernel and
merges the ``S`` partials of a row with a few torch ops on ``(B, S)`` / ``(B, S * k)`` tensors.
The arguments common to all four: ``logits``, 1 to MAX_MODELS tensors ``(B, >= vocab_size)`` of
float32 / bfloat16 / float16; ``weights`` ``(B, M)``; ``temperature`` ``(B,)``.
"""

from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

import torch

from ..ops.collab_args import MAX_TOP_K
from ..ops.collab_sampling import key_to_float
from .collab_kernels import (MAX_MODELS, collab_gumbel_argmax_kernel, collab_logits_kernel,
                             collab_threshold_mass_kernel, collab_topk_kernel)
from .utils import DTYPE_NAMES, LAUNCH_OPTIONS, Tensor, cdiv, next_pow2


# --- launch configuration (aot_specs.py compiles the variants it picks) ---------------------------

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
    splits_wanted = max(1, cdiv(_target_programs(device), max(batch, 1)))
    tile = next_pow2(cdiv(vocab, splits_wanted))
    return max(16, min(max(tile, min_tile), max_tile, next_pow2(vocab)))


def num_warps_for(tile: int, max_warps: int = 8) -> int:
    """~16 elements per thread at most (a tile in registers, no spills), 1..max_warps warps."""
    return max(1, min(max_warps, tile // 512))


TOPK_MAX_WARPS = 16  # the top-k kernel's warp limit (stream kernels: num_warps_for's default, 8)


def topk_config(k: int, vocab: int, batch: int, device: torch.device) -> Tuple[int, int, int]:
    """(TILE, K_PAD, num_warps) of collab_topk_kernel. A tile holds at least 8 * K_PAD tokens, so
    the S * k candidates of a row are at most ~V / 8; k = 1024 uses 8192-token tiles."""
    k_pad = next_pow2(k)
    tile = max(_tile(vocab, batch, device, min_tile=max(1024, 8 * k_pad), max_tile=max(4096, 8 * k_pad)), k_pad)
    return tile, k_pad, num_warps_for(tile, max_warps=TOPK_MAX_WARPS)


def stream_config(vocab: int, batch: int, device: torch.device) -> Tuple[int, int]:
    """(TILE, num_warps) of the logits / threshold_mass / gumbel_argmax kernels."""
    tile = _tile(vocab, batch, device, min_tile=512, max_tile=4096)
    return tile, num_warps_for(tile)


# --- host helpers ----------------------------------------------------------------------------------

def _model_args(logits: Sequence[Tensor], weights: Tensor, temperature: Tensor, vocab_size: int) -> Tuple[list, Tensor]:
    """The 2 * MAX_MODELS pointer/row-stride arguments (unused slots repeat model 0), weights
    ``(B, M)`` fp32, temperature ``(B,)`` fp32 and its float64 reciprocal (correctly rounded, as
    torch divides); and the weights."""
    m = len(logits)
    if not 1 <= m <= MAX_MODELS:
        raise ValueError(f"triton collab kernels take 1 to {MAX_MODELS} models' logits, got {m}; "
                         f"use the cpu/cuda/reference backend for more")
    xs = []
    for i, x in enumerate(logits):
        if x.dim() != 2 or x.shape[1] < vocab_size or x.shape[0] != logits[0].shape[0]:
            raise ValueError(f"logits[{i}]: expected (B, >= {vocab_size}), got {tuple(x.shape)}")
        if x.dtype not in DTYPE_NAMES:
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
    """Inverse of rank_keys' high half: the float32 z of int64 rank keys (any shape)."""
    ordered = ((keys >> 32) & 0xFFFFFFFF) ^ 0x7FFFFFFF
    return key_to_float(ordered)


def merge_lse(part_max: Tensor, part_sum: Tensor) -> Tensor:
    """log sum exp ``(B,)`` over a row from per-tile (max, sum exp(z - max)), ``(B, S)`` each."""
    m = part_max.amax(dim=1)  # NaN propagates
    shift = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    total = (part_sum * torch.exp(part_max - shift.unsqueeze(1))).sum(dim=1)
    return m + torch.log(total)  # all -inf: -inf + log(0) = -inf


def _id_cuts(id_cuts: Optional[Tensor], like: Tensor, vocab_size: int) -> Tensor:
    """The keep sets' id cuts as int64 shaped like the thresholds; None: every tie is kept."""
    if id_cuts is None:
        return torch.full(like.shape, vocab_size - 1, dtype=torch.int64, device=like.device)
    return id_cuts.to(device=like.device, dtype=torch.int64).contiguous()


# --- launchers -------------------------------------------------------------------------------------

def topk(logits: List[Tensor], weights: Tensor, temperature: Tensor, vocab_size: int, k: int,
         bitonic: Optional[bool] = None):
    """(values ``(B, k)`` fp32, ids ``(B, k)`` int64, lse ``(B,)`` fp32) of the combined logits.
    bitonic: tl.topk (default on a GPU) or repeated min (default under the interpreter)."""
    if not 1 <= k <= min(vocab_size, MAX_TOP_K):
        raise ValueError(f"k must be in [1, min(V, {MAX_TOP_K})], got k={k} with V={vocab_size}")
    args, weights = _model_args(logits, weights, temperature, vocab_size)
    batch, device = weights.shape[0], weights.device
    tile, k_pad, warps = topk_config(k, vocab_size, batch, device)
    splits = cdiv(vocab_size, tile)
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
    """The combined logits ``(B, vocab_size)`` fp32."""
    args, weights = _model_args(logits, weights, temperature, vocab_size)
    batch, device = weights.shape[0], weights.device
    tile, warps = stream_config(vocab_size, batch, device)
    out = torch.empty((batch, vocab_size), dtype=torch.float32, device=device)
    if batch:
        collab_logits_kernel[(batch, cdiv(vocab_size, tile))](*args, vocab_size, out, NUM_MODELS=len(logits),
                                                              TILE=tile, num_warps=warps, **LAUNCH_OPTIONS)
    return out


def threshold_mass(logits: List[Tensor], weights: Tensor, temperature: Tensor, vocab_size: int, thresholds: Tensor,
                   lse: Tensor, id_cuts: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """(mass ``(B, T)`` fp32, count ``(B, T)`` int64) of the keep sets (thresholds ``(B, T)``,
    id_cuts ``(B, T)``), given each row's lse ``(B,)``."""
    args, weights = _model_args(logits, weights, temperature, vocab_size)
    batch, device = weights.shape[0], weights.device
    thresholds = thresholds.to(device=device, dtype=torch.float32).contiguous()
    cuts = _id_cuts(id_cuts, thresholds, vocab_size)
    active = (~torch.isnan(thresholds).all(dim=1)).to(torch.int8)  # rows to read
    lse = lse.to(device=device, dtype=torch.float32).contiguous()
    n_thr = thresholds.shape[1]
    tile, warps = stream_config(vocab_size, batch, device)
    splits = cdiv(vocab_size, tile)
    mass = torch.empty((batch, splits, n_thr), dtype=torch.float32, device=device)
    count = torch.empty((batch, splits, n_thr), dtype=torch.int32, device=device)
    if batch and n_thr:
        collab_threshold_mass_kernel[(batch, splits)](*args, vocab_size, thresholds, cuts, active, lse, n_thr, mass,
                                                      count, NUM_MODELS=len(logits), TILE=tile, num_warps=warps,
                                                      **LAUNCH_OPTIONS)
    return mass.sum(dim=1), count.sum(dim=1, dtype=torch.int64)


def gumbel_argmax(logits: List[Tensor], weights: Tensor, temperature: Tensor, vocab_size: int, threshold: Tensor,
                  keys: Tensor, id_cut: Optional[Tensor] = None):
    """(token ``(B,)`` int64, its z ``(B,)`` fp32): the arg-max of z + G(keys[b], ·) over the keep
    set (threshold ``(B,)``, id_cut ``(B,)``)."""
    args, weights = _model_args(logits, weights, temperature, vocab_size)
    batch, device = weights.shape[0], weights.device
    threshold = threshold.to(device=device, dtype=torch.float32).contiguous()
    cut = _id_cuts(id_cut, threshold, vocab_size)
    keys = keys.to(device=device, dtype=torch.int64).contiguous()
    tile, warps = stream_config(vocab_size, batch, device)
    splits = cdiv(vocab_size, tile)
    best = torch.empty((batch, splits), dtype=torch.int64, device=device)
    best_z = torch.empty((batch, splits), dtype=torch.float32, device=device)
    if batch:
        collab_gumbel_argmax_kernel[(batch, splits)](*args, vocab_size, threshold, cut, keys, best, best_z,
                                                     NUM_MODELS=len(logits), TILE=tile, num_warps=warps,
                                                     **LAUNCH_OPTIONS)
    pick = best.argmin(dim=1, keepdim=True)  # unique keys: the spec's tie order
    return (best.gather(1, pick) & 0xFFFFFFFF).squeeze(1), best_z.gather(1, pick).squeeze(1)
