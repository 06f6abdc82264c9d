"""Launchers of the Triton MuMo verification kernels (mtkernels/triton/mumo_verify_kernels.py): the
``mumo`` family's ``lse_pick`` and ``linear_lse`` primitives (definitions: ``mumo_lse_pick`` and
``mumo_linear_lse`` in mtkernels/reference/kernels.py), and their launch configuration."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .mumo_verify_kernels import linear_lse_kernel, lse_pick_kernel
from .utils import LAUNCH_OPTIONS, Tensor, cdiv, next_pow2

# --- launch configuration (aot_specs.py compiles the variants it picks) ---------------------------

LSE_BLOCKS = (128, 512, 2048)


def lse_config(vocab: int, device: torch.device) -> Tuple[int, int]:
    """(BLOCK, num_warps) of ``lse_pick_kernel``: tiles up to 2048 columns, 8 per thread."""
    block = max(LSE_BLOCKS[0], min(next_pow2(vocab), LSE_BLOCKS[-1]))
    block = min(b for b in LSE_BLOCKS if b >= block)
    return block, max(1, block // 256) if device.type == "cuda" else 1


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps) of linear_lse_kernel: on a GPU tensor-core tiles; under the
# interpreter small ones, so tests cover several tiles of every loop. Eight warps: with four, the
# accumulator, both operand tiles and the online-lse state exceed 128 registers per thread and
# ptxas keeps a stack frame on sm_80 and sm_90 (tests/test_triton_aot.py).
GPU_LINEAR = {2: (64, 64, 64, 8), 4: (32, 64, 16, 8)}  # by element size of the weight
INTERPRETER_LINEAR = (16, 32, 16, 1)


def linear_config(weight: Tensor) -> Tuple[int, int, int, int]:
    if weight.device.type != "cuda":
        return INTERPRETER_LINEAR
    return GPU_LINEAR[2 if weight.element_size() == 2 else 4]


def _splits(row_blocks: int, vocab: int, block_n: int, device: torch.device) -> int:
    """Vocabulary splits: enough programs to fill the GPU (a few per SM), at least 4 tiles each."""
    if device.type != "cuda":
        return max(1, min(3, cdiv(vocab, block_n)))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(cdiv(4 * sms, row_blocks), cdiv(vocab, 4 * block_n)))


# --- launchers -------------------------------------------------------------------------------------

def lse_pick(logits: Tensor, rows: Optional[Tensor], ids: Optional[Tensor]):
    """``(lse (n,), picked (n,))`` float32 of the selected rows of ``logits (R, V)`` (unit column stride)."""
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"logits: expected (R, V) with unit column stride, got {tuple(logits.shape)}")
    n = logits.shape[0] if rows is None else rows.shape[0]
    device = logits.device
    lse = torch.empty(n, dtype=torch.float32, device=device)
    picked = torch.empty(n if ids is not None else 0, dtype=torch.float32, device=device)
    if n:
        block, warps = lse_config(logits.shape[1], device)
        rows_arg = rows.contiguous() if rows is not None else lse
        ids_arg = ids.contiguous() if ids is not None else lse
        lse_pick_kernel[(n,)](logits, rows_arg, ids_arg, lse, picked if ids is not None else lse,
                              logits.stride(0), logits.shape[1], HAS_ROWS=rows is not None,
                              HAS_IDS=ids is not None, BLOCK=block, num_warps=warps, **LAUNCH_OPTIONS)
    return lse, picked


def linear_lse(hidden: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``(n,)`` float32 log-sum-exp of ``hidden (n, H) @ weight (V, H).T + bias (V,)``, fused: the
    logits exist only a tile at a time, in registers."""
    n, h = hidden.shape
    vocab = weight.shape[0]
    if max(n, vocab) * h >= 2**31:  # the kernel's int32 element offsets
        raise ValueError(f"linear_lse: rows x H and V x H must stay below 2^31, got {n}, {vocab}, {h}")
    if n == 0:
        return torch.full((0,), -math.inf, dtype=torch.float32, device=hidden.device)
    hidden = hidden if hidden.stride(1) == 1 else hidden.contiguous()
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    block_m, block_n, block_k, warps = linear_config(weight)
    row_blocks = cdiv(n, block_m)
    splits = _splits(row_blocks, vocab, block_n, hidden.device)
    per_split = cdiv(cdiv(vocab, splits), block_n) * block_n
    splits = cdiv(vocab, per_split)
    part_max = torch.empty(n, splits, dtype=torch.float32, device=hidden.device)
    part_sum = torch.empty_like(part_max)
    bias_arg = bias.to(weight.dtype).contiguous() if bias is not None else part_max
    linear_lse_kernel[(row_blocks, splits)](
        hidden, weight, bias_arg, part_max, part_sum, n, vocab, h, hidden.stride(0), weight.stride(0), per_split,
        HAS_BIAS=bias is not None, IEEE=weight.dtype == torch.float32,
        UPCAST=weight.device.type != "cuda" and weight.dtype != torch.float32, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=block_k, num_warps=warps, **LAUNCH_OPTIONS)
    top = part_max.amax(dim=1, keepdim=True)
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = (part_sum * torch.exp(part_max - shift)).sum(dim=1)
    return torch.where(top.squeeze(1) == -math.inf, top.squeeze(1), shift.squeeze(1) + torch.log(total))
