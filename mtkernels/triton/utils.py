"""What the Triton kernel families share: launch options, the dtypes they read, small host helpers."""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

# Every kernel launches (and compiles ahead of time, aot_specs.py) with these options.
# enable_fp_fusion off: no contraction, one rounding per operation, the same in every kernel and as
# the reference's operations. maxnreg: without a register budget, ptxas 13 (sm_90) caps a
# 256-thread kernel near 80 registers and spills; with .maxnreg 128 it allocates what it needs
# (<= 128 keeps >= 2 blocks of 8 warps per SM).
LAUNCH_OPTIONS = {"enable_fp_fusion": False, "maxnreg": 128}

# torch dtype -> Triton's name of the element type (signatures: "*fp32", ...)
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive b."""
    return -(-a // b)


def log_or_neg_inf(x: float) -> float:
    """log x, -inf for x = 0 (a kernel argument: exp of it is exactly 0)."""
    return math.log(x) if x > 0 else -math.inf
