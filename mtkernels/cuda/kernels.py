"""The cuda backend: CUDA C++ kernels from csrc/cuda, compiled on first use (``mtkernels.jit``) for
the visible GPUs' architectures (or ``$TORCH_CUDA_ARCH_LIST``).

Thin wrappers over ``torch.ops.mtkernels_cuda.*`` (the four collab primitives of
mtkernels/ops/collab_sampling.py). The fused top-k handles ``k <= 1024``; a wider ``k`` falls back to
the ``logits`` kernel and a stable sort, which materialises ``(B, V)`` but stays exact.
The self-evolution KD row kernel is ``torch.ops.mtkernels_cuda.kd_rows`` (csrc/cuda/self_evolution_kd.cu).
"""

from __future__ import annotations

import functools

import torch

from .. import jit
from ..backends import register_kernels
from ..ops.collab_args import MAX_TOP_K


def _unavailable_reason():
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is not a CUDA build"
    if cpp_extension.CUDA_HOME is None:
        return "no CUDA toolkit (nvcc) found: set $CUDA_HOME"
    if not jit.compiler_available():
        return "no C++ compiler found (set $CXX)"
    return None


UNAVAILABLE_REASON = _unavailable_reason()


@functools.lru_cache(maxsize=None)
def _ops():
    """``torch.ops.mtkernels_cuda``, compiling the extension on the first call (then cached on disk)."""
    jit.load(jit.cuda_plan())
    return torch.ops.mtkernels_cuda


def topk(logits, weights, temperature, vocab_size, k):
    if k > MAX_TOP_K:
        z = _ops().collab_logits(list(logits), weights, temperature, vocab_size)
        values, ids = torch.sort(z, dim=1, descending=True, stable=True)
        return values[:, :k].contiguous(), ids[:, :k].contiguous(), torch.logsumexp(z, dim=1)
    return _ops().collab_topk(list(logits), weights, temperature, vocab_size, k)


def logits(logits, weights, temperature, vocab_size):
    return _ops().collab_logits(list(logits), weights, temperature, vocab_size)


def threshold_mass(logits, weights, temperature, vocab_size, thresholds, lse, id_cuts=None):
    return _ops().collab_threshold_mass(list(logits), weights, temperature, vocab_size, thresholds, id_cuts, lse)


def gumbel_argmax(logits, weights, temperature, vocab_size, threshold, keys, id_cut=None):
    return _ops().collab_gumbel_argmax(list(logits), weights, temperature, vocab_size, threshold, id_cut, keys)


register_kernels("cuda", "collab", topk=topk, logits=logits, threshold_mass=threshold_mass, gumbel_argmax=gumbel_argmax)


def kd_rows(student, teacher, labels, hard, grad_scale, mode, lam, beta, gamma, temperature, ignore_index, vocab,
            compute_grad):
    """(loss, d, is_hard) per row; overwrites ``student`` with the gradient if ``compute_grad``
    (contract: docs/kd.md, definition: ``kd_rows`` in mtkernels/reference/kernels.py)."""
    return _ops().kd_rows(student, teacher, labels, hard, grad_scale, int(mode), float(lam), float(beta),
                          float(gamma), float(temperature), int(ignore_index), int(vocab), bool(compute_grad))


register_kernels("cuda", "kd", rows=kd_rows)


def mumo_ce_rows(logits, targets, grad_scale, ignore_index, compute_grad):
    """MuMo head cross-entropy row kernel (csrc/cuda/mumo_head.cu): loss ``(r,)``; ``logits`` becomes
    the gradient in place when ``compute_grad`` (definition: ``ce_rows`` in mtkernels/reference/mumo_head.py)."""
    return _ops().mumo_ce_rows(logits, targets, grad_scale, int(ignore_index), bool(compute_grad))


register_kernels("cuda", "mumo_head", ce_rows=mumo_ce_rows)
