"""Launcher of the Triton cross-entropy row kernel of the MuMo head loss
(mtkernels/triton/mumo_head_kernels.py): the contract's ``mumo_head`` ``ce_rows`` kernel
(docs/mumo_head.md; reference ``ce_rows``). The head's top-k uses the collab ``topk`` launcher.
"""

from __future__ import annotations

from typing import Tuple

import torch

from .mumo_head_kernels import ce_rows_kernel
from .utils import LAUNCH_OPTIONS, Tensor, next_pow2

GPU_BLOCKS = (256, 512, 1024, 2048, 4096)


def ce_config(cols: int, device: torch.device) -> Tuple[int, int]:
    """(BLOCK, num_warps): tiles of up to 4096 columns, 16 per thread at most (the kernel keeps
    two values per column live). The interpreter uses the same tiles, so tests walk rows of
    several tiles, a ragged last one included."""
    block = max(GPU_BLOCKS[0], min(next_pow2(cols), GPU_BLOCKS[-1]))
    return block, max(1, min(8, block // 256)) if device.type == "cuda" else 1


def ce_rows(logits: Tensor, targets: Tensor, grad_scale: Tensor, ignore_index: int, compute_grad: bool) -> Tensor:
    """loss ``(r,)`` fp32 of logits ``(r, V)`` fp32 (unit column stride; overwritten by the gradient
    when compute_grad), targets ``(r,)`` int64, grad_scale ``(r,)`` fp32."""
    if logits.dim() != 2 or logits.dtype != torch.float32 or logits.stride(1) != 1:
        raise ValueError(f"logits: expected (r, V) float32 with unit column stride, got {tuple(logits.shape)} "
                         f"{logits.dtype}")
    n, cols = logits.shape
    if targets.shape != (n,) or grad_scale.shape != (n,):
        raise ValueError(f"targets, grad_scale: expected ({n},), got {tuple(targets.shape)}, {tuple(grad_scale.shape)}")
    device = logits.device
    targets = targets.to(device=device, dtype=torch.int64).contiguous()
    grad_scale = grad_scale.to(device=device, dtype=torch.float32).contiguous()
    loss = torch.empty(n, dtype=torch.float32, device=device)
    if n:
        block, warps = ce_config(cols, device)
        ce_rows_kernel[(n,)](logits, targets, grad_scale, loss, logits.stride(0), cols, ignore_index,
                             int(bool(compute_grad)), BLOCK=block, num_warps=warps, **LAUNCH_OPTIONS)
    return loss
