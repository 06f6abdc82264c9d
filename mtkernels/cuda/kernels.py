"""The cuda backend: CUDA C++ kernels from csrc/cuda, built into ``mtkernels._C_cuda``.

Thin wrappers over ``torch.ops.mtkernels_cuda.*`` (the four collab primitives of
mtkernels/ops/collab_sampling.py). The fused top-k handles ``k <= 1024``; a wider ``k`` falls back to
the ``logits`` kernel and a stable sort, which materialises ``(B, V)`` but stays exact.
The self-evolution KD row kernel is ``torch.ops.mtkernels_cuda.kd_rows`` (csrc/cuda/self_evolution_kd.cu).
"""

from __future__ import annotations

import torch

from ..backends import register_kernels

MAX_FUSED_TOP_K = 1024  # kMaxTopK in csrc/cuda/collab.cuh

try:
    from .. import _C_cuda  # noqa: F401  (registers torch.ops.mtkernels_cuda.*)
except ImportError as exc:
    UNAVAILABLE_REASON = (f"the CUDA extension mtkernels._C_cuda is not built ({exc}); "
                          "reinstall with a CUDA build of torch and nvcc on the PATH")
else:
    UNAVAILABLE_REASON = None


def topk(logits, weights, temperature, vocab_size, k):
    if k > MAX_FUSED_TOP_K:
        z = torch.ops.mtkernels_cuda.collab_logits(list(logits), weights, temperature, vocab_size)
        values, ids = torch.sort(z, dim=1, descending=True, stable=True)
        return values[:, :k].contiguous(), ids[:, :k].contiguous(), torch.logsumexp(z, dim=1)
    return torch.ops.mtkernels_cuda.collab_topk(list(logits), weights, temperature, vocab_size, k)


def logits(logits, weights, temperature, vocab_size):
    return torch.ops.mtkernels_cuda.collab_logits(list(logits), weights, temperature, vocab_size)


def threshold_mass(logits, weights, temperature, vocab_size, thresholds, lse, id_cuts=None):
    return torch.ops.mtkernels_cuda.collab_threshold_mass(list(logits), weights, temperature, vocab_size, thresholds,
                                                          id_cuts, lse)


def gumbel_argmax(logits, weights, temperature, vocab_size, threshold, keys, id_cut=None):
    return torch.ops.mtkernels_cuda.collab_gumbel_argmax(list(logits), weights, temperature, vocab_size, threshold,
                                                         id_cut, keys)


register_kernels("cuda", "collab", topk=topk, logits=logits, threshold_mass=threshold_mass, gumbel_argmax=gumbel_argmax)


def kd_rows(student, teacher, labels, hard, grad_scale, mode, lam, beta, gamma, temperature, ignore_index, vocab,
            compute_grad):
    """(loss, d, is_hard) per row; overwrites ``student`` with the gradient if ``compute_grad``
    (contract: docs/kd.md, definition: ``kd_rows`` in mtkernels/reference/kernels.py)."""
    return torch.ops.mtkernels_cuda.kd_rows(student, teacher, labels, hard, grad_scale, int(mode), float(lam),
                                            float(beta), float(gamma), float(temperature), int(ignore_index),
                                            int(vocab), bool(compute_grad))


register_kernels("cuda", "kd", rows=kd_rows)
