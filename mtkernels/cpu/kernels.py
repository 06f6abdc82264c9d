"""The cpu backend: C++ kernels from csrc/cpu, built into ``mtkernels._C``.

The four collab primitives (mtkernels/ops/collab_sampling.py) are thin wrappers around
``torch.ops.mtkernels_cpu.*`` (registered by the extension); arguments are already checked by
``mtkernels.ops``, the C++ side re-checks the basic preconditions. ``logits`` raises ValueError when
a finite input overflows float32 (csrc/cpu/collab.h).
"""

from __future__ import annotations

import warnings

import torch

from ..backends import register_kernels

try:
    from .. import _C  # noqa: F401  (registers torch.ops.mtkernels_cpu.*)
except ImportError as exc:
    UNAVAILABLE_REASON = f"the C++ extension mtkernels._C is not built ({exc}); reinstall with a C++ compiler"
    warnings.warn(f"mtkernels: {UNAVAILABLE_REASON}. CPU tensors fall back to the reference backend.",
                  RuntimeWarning, stacklevel=2)
else:
    UNAVAILABLE_REASON = None


def topk(logits, weights, temperature, vocab_size, k):
    return torch.ops.mtkernels_cpu.collab_topk(list(logits), weights, temperature, int(vocab_size), int(k))


def logits(logits, weights, temperature, vocab_size):  # noqa: F811  (the primitive's name)
    return torch.ops.mtkernels_cpu.collab_logits(list(logits), weights, temperature, int(vocab_size))


def threshold_mass(logits, weights, temperature, vocab_size, thresholds, lse, id_cuts=None):
    return torch.ops.mtkernels_cpu.collab_threshold_mass(list(logits), weights, temperature, int(vocab_size),
                                                         thresholds, id_cuts, lse)


def gumbel_argmax(logits, weights, temperature, vocab_size, threshold, keys, id_cut=None):
    return torch.ops.mtkernels_cpu.collab_gumbel_argmax(list(logits), weights, temperature, int(vocab_size),
                                                        threshold, id_cut, keys)


if UNAVAILABLE_REASON is None:
    register_kernels("cpu", "collab", topk=topk, logits=logits, threshold_mass=threshold_mass,
                     gumbel_argmax=gumbel_argmax)


def kd_rows(student, teacher, labels, hard, grad_scale, mode, lam, beta, gamma, temperature, ignore_index, vocab,
            compute_grad):
    """Self-evolution KD row kernel (csrc/cpu/self_evolution_kd.cpp); ``student`` becomes the gradient
    in place when ``compute_grad``."""
    return torch.ops.mtkernels_cpu.kd_rows(student, teacher, labels, hard, grad_scale, int(mode), float(lam),
                                           float(beta), float(gamma), float(temperature), int(ignore_index),
                                           int(vocab), bool(compute_grad))


if UNAVAILABLE_REASON is None:
    register_kernels("cpu", "kd", rows=kd_rows)
