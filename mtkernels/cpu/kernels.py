"""The cpu backend: C++ kernels from csrc/cpu, built into ``mtkernels._C``.

The four collab primitives are thin wrappers around ``torch.ops.mtkernels_cpu.*`` (registered by
the extension); arguments are already checked by ``mtkernels.ops``, the C++ side re-checks the
basic preconditions.
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


def topk(logits, scaled_weights, vocab_size, k):
    return torch.ops.mtkernels_cpu.collab_topk(list(logits), scaled_weights, int(vocab_size), int(k))


def logits(logits, scaled_weights, vocab_size):  # noqa: F811  (the primitive's name)
    return torch.ops.mtkernels_cpu.collab_logits(list(logits), scaled_weights, int(vocab_size))


def threshold_mass(logits, scaled_weights, vocab_size, thresholds, lse):
    return torch.ops.mtkernels_cpu.collab_threshold_mass(list(logits), scaled_weights, int(vocab_size),
                                                         thresholds, lse)


def gumbel_argmax(logits, scaled_weights, vocab_size, threshold, keys):
    return torch.ops.mtkernels_cpu.collab_gumbel_argmax(list(logits), scaled_weights, int(vocab_size),
                                                        threshold, keys)


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
