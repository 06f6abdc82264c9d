"""The cpu backend: C++ kernels from csrc/cpu, compiled on first use (``mtkernels.jit``).

The four collab primitives (mtkernels/ops/collab_sampling.py) are thin wrappers around
``torch.ops.mtkernels_cpu.*`` (registered by the extension); arguments are already checked by
``mtkernels.ops``, the C++ side re-checks the basic preconditions. ``logits`` raises ValueError when
a finite input overflows float32 (csrc/cpu/collab.h).
"""

from __future__ import annotations

import functools

import torch

from .. import jit
from ..backends import register_kernels

UNAVAILABLE_REASON = None if jit.compiler_available() else (
    "no C++ compiler found (set $CXX); CPU tensors use the reference backend")


@functools.lru_cache(maxsize=None)
def _ops():
    """``torch.ops.mtkernels_cpu``, compiling the extension on the first call (then cached on disk)."""
    jit.load(jit.cpu_plan())
    return torch.ops.mtkernels_cpu


def topk(logits, weights, temperature, vocab_size, k):
    return _ops().collab_topk(list(logits), weights, temperature, int(vocab_size), int(k))


def logits(logits, weights, temperature, vocab_size):  # noqa: F811  (the primitive's name)
    return _ops().collab_logits(list(logits), weights, temperature, int(vocab_size))


def threshold_mass(logits, weights, temperature, vocab_size, thresholds, lse, id_cuts=None):
    return _ops().collab_threshold_mass(list(logits), weights, temperature, int(vocab_size), thresholds, id_cuts,
                                        lse)


def gumbel_argmax(logits, weights, temperature, vocab_size, threshold, keys, id_cut=None):
    return _ops().collab_gumbel_argmax(list(logits), weights, temperature, int(vocab_size), threshold, id_cut, keys)


if UNAVAILABLE_REASON is None:
    register_kernels("cpu", "collab", topk=topk, logits=logits, threshold_mass=threshold_mass,
                     gumbel_argmax=gumbel_argmax)


def kd_rows(student, teacher, labels, hard, grad_scale, mode, lam, beta, gamma, temperature, ignore_index, vocab,
            compute_grad):
    """Self-evolution KD row kernel (csrc/cpu/self_evolution_kd.cpp); ``student`` becomes the gradient
    in place when ``compute_grad``."""
    return _ops().kd_rows(student, teacher, labels, hard, grad_scale, int(mode), float(lam), float(beta),
                          float(gamma), float(temperature), int(ignore_index), int(vocab), bool(compute_grad))


if UNAVAILABLE_REASON is None:
    register_kernels("cpu", "kd", rows=kd_rows)


def mumo_ce_rows(logits, targets, grad_scale, ignore_index, compute_grad):
    """MuMo head cross-entropy row kernel (csrc/cpu/mumo_head.cpp): loss ``(r,)``; ``logits``
    becomes the gradient in place when ``compute_grad``."""
    return _ops().mumo_ce_rows(logits, targets, grad_scale, int(ignore_index), bool(compute_grad))


if UNAVAILABLE_REASON is None:
    register_kernels("cpu", "mumo_head", ce_rows=mumo_ce_rows)
