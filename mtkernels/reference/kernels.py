"""The reference backend: the spec functions, plus the collab kernel primitives built on them.

The primitives (``topk``, ``logits``, ``threshold_mass``, ``gumbel_argmax``) are what the fused
backends implement (mtkernels/ops/collab_sampling.py); the reference versions here are their
definitions, used by the kernel tests. They take ``weights (B, M)`` and ``temperature (B,)``
float32 and compute ``z`` as float32 of the reference's float64 combined logits.
"""

from __future__ import annotations

import torch

from ..backends import register_kernels
from ..gumbel import gumbel_noise
from . import collab


def _z(logits, weights, temperature, vocab_size):
    return collab.combined_logits(logits, weights, temperature, vocab_size).float()


def in_keep_set(z, theta, cut):
    """``(B, T, V)`` bool: token j is in the keep set of ``(theta[b, t], cut[b, t])``, i.e.
    ``z_j > theta`` or ``z_j == theta and j <= cut`` (``cut`` None: every tie). NaN keeps nothing."""
    z = z.unsqueeze(1)
    ids = torch.arange(z.shape[-1], device=z.device)
    at = z == theta.unsqueeze(2)
    if cut is not None:
        at &= ids <= cut.unsqueeze(2)
    return (z > theta.unsqueeze(2)) | at


def topk(logits, weights, temperature, vocab_size, k):
    z = collab.combined_logits(logits, weights, temperature, vocab_size)
    values, ids = collab.sort_descending(z)
    return values[:, :k].float(), ids[:, :k], torch.logsumexp(z, dim=-1).float()


def logits(logits, weights, temperature, vocab_size):
    return _z(logits, weights, temperature, vocab_size)


def threshold_mass(logits, weights, temperature, vocab_size, thresholds, lse, id_cuts=None):
    z = _z(logits, weights, temperature, vocab_size)
    p = torch.exp(z - lse.unsqueeze(1))
    keep = in_keep_set(z, thresholds, id_cuts)  # (B, T, V)
    return (keep * p.unsqueeze(1)).sum(-1), keep.sum(-1)


def gumbel_argmax(logits, weights, temperature, vocab_size, threshold, keys, id_cut=None):
    z = _z(logits, weights, temperature, vocab_size)
    ids = torch.arange(z.shape[1], device=z.device).expand_as(z)
    keep = in_keep_set(z, threshold.unsqueeze(1), None if id_cut is None else id_cut.unsqueeze(1)).squeeze(1)
    perturbed = (z + gumbel_noise(keys, ids)).masked_fill(~keep, float("-inf"))
    token = collab.sort_descending(perturbed)[1][:, 0]
    return token, z.gather(1, token.unsqueeze(1)).squeeze(1)


register_kernels(
    "reference",
    "collab",
    topk=topk,
    logits=logits,
    threshold_mass=threshold_mass,
    gumbel_argmax=gumbel_argmax,
    spec_softmax=collab.softmax_topk,
    spec_sample=collab.sample,
    spec_logits=collab.combined_logits,
)


# --- self-evolution KD ----------------------------------------------------------------------------

KD_MODES = ("self_evolution", "self_evolution_topk", "skew", "noevo", "forward_kd", "reverse_kd")


def kd_rows(student, teacher, labels, hard, grad_scale, mode, lam, beta, gamma, temperature, ignore_index,
            vocab, compute_grad):
    """The kd row kernel's definition: per-row (loss, d, is_hard) from the spec, and, if
    ``compute_grad``, the student logits overwritten with ``d(grad_scale · loss) / d logits`` by the
    spec's gradient formulas (checked against autograd on the spec in the tests)."""
    from .self_evolution_kd import per_row_terms

    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    with torch.no_grad():
        d, easy, hard_loss, forward_kd, reverse_kd = per_row_terms(student, teacher[:, :vocab], safe, lam, beta,
                                                                   temperature)
        name = KD_MODES[mode]
        if hard is not None:
            is_hard = hard & valid
        elif name == "self_evolution":
            is_hard = valid & (d > gamma)
        elif name == "skew":
            is_hard = valid.clone()
        else:
            is_hard = torch.zeros_like(valid)
        loss = {"forward_kd": forward_kd, "reverse_kd": reverse_kd}.get(name, torch.where(is_hard, hard_loss, easy))
        loss = torch.where(valid, loss, torch.zeros_like(loss))
        if compute_grad:
            grad = _kd_logit_gradient(student[:, :vocab], teacher[:, :vocab], safe, is_hard, name, lam, beta,
                                      temperature)
            grad = grad * (grad_scale.double() * valid / temperature).unsqueeze(1)
            student.zero_()
            student[:, :vocab] = grad.float()
    return loss.float(), torch.where(valid, d, torch.zeros_like(d)).float(), is_hard


def _kd_logit_gradient(student, teacher, labels, is_hard, mode, lam, beta, temperature):
    """docs/kd.md's per-row gradient with respect to the scaled student logits s, float64 (n, V)."""
    log_q = torch.log_softmax(student.double() / temperature, dim=1)
    log_p = torch.log_softmax(teacher.double() / temperature, dim=1)
    q, p = log_q.exp(), log_p.exp()
    onehot = torch.nn.functional.one_hot(labels, student.shape[1]).double()
    y = (1 - lam) * onehot + lam * p
    if mode == "reverse_kd":
        kl = (q * (log_q - log_p)).sum(1, keepdim=True)
        return (1 - lam) * (q - onehot) + lam * q * (log_q - log_p - kl)
    m = beta * q + (1 - beta) * y
    r = torch.where(y > 0, y / m, torch.zeros_like(y))
    hard = beta * q * ((r * q).sum(1, keepdim=True) - r)
    return torch.where(is_hard.unsqueeze(1), hard, q - y)


register_kernels("reference", "kd", rows=kd_rows)
