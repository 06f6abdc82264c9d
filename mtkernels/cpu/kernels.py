"""The cpu backend: C++ kernels from csrc/cpu, built into ``mtkernels._C``."""

from __future__ import annotations

import warnings

from ..backends import register_kernels

try:
    from .. import _C  # noqa: F401  (registers torch.ops.mtkernels_cpu.*)
except ImportError as exc:
    UNAVAILABLE_REASON = f"the C++ extension mtkernels._C is not built ({exc}); reinstall with a C++ compiler"
    warnings.warn(f"mtkernels: {UNAVAILABLE_REASON}. CPU tensors fall back to the reference backend.",
                  RuntimeWarning, stacklevel=2)
else:
    UNAVAILABLE_REASON = None
