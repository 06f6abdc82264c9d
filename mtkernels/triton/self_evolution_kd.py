"""Launcher of the Triton self-evolution KD row kernel (mtkernels/triton/kd_kernels.py) and its
launch configuration: the contract's ``kd`` ``rows`` kernel (docs/kd.md; reference ``kd_rows``).

A mode reaches the kernel as (hard rule, loss kind), runtime ints from ``kd_options.MODE_RULES``
(one compiled variant serves every mode); a caller-given hard mask makes the rule
``HardRule.FROM_MASK``.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ..ops.kd_options import MODE_RULES, HardRule, Mode
from .kd_kernels import kd_rows_kernel
from .utils import LAUNCH_OPTIONS, Tensor, log_or_neg_inf, next_pow2

# --- launch configuration (aot_specs.py compiles the variants it picks) ---------------------------

GPU_BLOCKS = (128, 256, 512, 1024, 2048)


def kd_config(row_len: int, device: torch.device) -> Tuple[int, int]:
    """(BLOCK, num_warps): tiles of up to 2048 columns, 8 per thread at most (pass 3 keeps about a
    dozen values per column live; 16 columns per thread spill at the 128-register budget). The
    interpreter (one thread of numpy calls) uses the same tiles, so the tests walk rows of several
    tiles, a ragged last one included."""
    block = max(GPU_BLOCKS[0], min(next_pow2(row_len), GPU_BLOCKS[-1]))
    return block, max(1, min(8, block // 256)) if device.type == "cuda" else 1


# --- launcher --------------------------------------------------------------------------------------

def kernel_rules(mode: int, hard_mask_given: bool) -> Tuple[int, int]:
    """(hard rule, loss kind) codes of the kernel for a mode code (``Mode``)."""
    hard_rule, loss_kind = MODE_RULES[mode]
    if hard_mask_given:
        hard_rule = HardRule.FROM_MASK
    return int(hard_rule), int(loss_kind)


def rows(student: Tensor, teacher: Tensor, labels: Tensor, hard: Optional[Tensor], grad_scale: Tensor, mode: int,
         lam: float, beta: float, gamma: float, temperature: float, ignore_index: int, vocab: int,
         compute_grad: bool):
    """The contract's ``kd`` ``rows`` kernel: (loss ``(n,)`` fp32, d ``(n,)`` fp32, is_hard ``(n,)``
    bool), student overwritten by the gradient (when compute_grad).

    student ``(n, V_s)`` fp32 with unit column stride, teacher ``(n, V_t)`` fp32, labels ``(n,)``,
    hard ``(n,)`` bool or None, grad_scale ``(n,)``; 1 <= vocab <= min(V_s, V_t)."""
    n = student.shape[0]
    if student.dim() != 2 or teacher.dim() != 2 or teacher.shape[0] != n or labels.shape != (n,):
        raise ValueError(f"expected student (n, V_s), teacher (n, V_t), labels (n,); got "
                         f"{tuple(student.shape)}, {tuple(teacher.shape)}, {tuple(labels.shape)}")
    if student.dtype != torch.float32 or teacher.dtype != torch.float32:
        raise TypeError(f"student and teacher must be float32, got {student.dtype}, {teacher.dtype}")
    if student.stride(1) != 1:  # the gradient is written in place: no copy allowed
        raise ValueError("student must have unit column stride")
    if not 1 <= vocab <= min(student.shape[1], teacher.shape[1]):
        raise ValueError(f"vocab must be in [1, min(V_s, V_t)], got {vocab}")
    if mode not in MODE_RULES:
        raise ValueError(f"mode must be in 0..{len(Mode) - 1}, got {mode}")
    device = student.device
    teacher = teacher if teacher.stride(1) == 1 else teacher.contiguous()
    labels = labels.to(device=device, dtype=torch.int64).contiguous()
    grad_scale = grad_scale.to(device=device, dtype=torch.float32).contiguous()
    loss = torch.empty(n, dtype=torch.float32, device=device)
    d = torch.empty_like(loss)
    is_hard = torch.empty(n, dtype=torch.int8, device=device)
    hard_rule, loss_kind = kernel_rules(mode, hard is not None)
    if hard is not None:
        hard_ptr = hard.to(device=device, dtype=torch.bool).contiguous().view(torch.int8)
    else:
        hard_ptr = is_hard  # never read
    if n:
        block, warps = kd_config(student.shape[1], device)
        kd_rows_kernel[(n,)](
            student, teacher, labels, hard_ptr, grad_scale, loss, d, is_hard,
            student.stride(0), teacher.stride(0), student.shape[1], vocab, ignore_index,
            hard_rule, loss_kind, int(bool(compute_grad)),
            float(lam), log_or_neg_inf(lam), lam * math.log(lam) if lam > 0 else 0.0,
            log_or_neg_inf(beta), log_or_neg_inf(1.0 - beta), float(beta), float(gamma), 1.0 / temperature,
            BLOCK=block, num_warps=warps, **LAUNCH_OPTIONS)
    return loss, d, is_hard.view(torch.bool)
