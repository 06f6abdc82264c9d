"""The reference backend: every op whole, by the spec (``whole_*`` kernels), and the definitions of
the fused backends' kernel primitives (collab ``topk`` ..., kd ``rows``), used by the kernel tests.

The collab primitives (``topk``, ``logits``, ``threshold_mass``, ``gumbel_argmax``; composed in
mtkernels/ops/collab_sampling.py) take ``weights (B, M)`` and ``temperature (B,)``
float32 and compute ``z`` as float32 of the reference's float64 combined logits.
"""

from __future__ import annotations

import torch

from ..backends import register_kernels
from ..gumbel import gumbel_noise
from ..ops.kd_options import MODE_RULES, MODES, KDOptions, LossKind, Mode
from . import collab
from . import self_evolution_kd as kd


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
    whole_softmax_topk=collab.softmax_topk,
    whole_sample=collab.sample,
    whole_logits=collab.combined_logits,
)


# --- self-evolution KD ----------------------------------------------------------------------------

def kd_rows(student, teacher, labels, hard, grad_scale, mode, lam, beta, gamma, temperature, ignore_index,
            vocab, compute_grad):
    """The kd row kernel's definition: per-row (loss, d, is_hard) from the spec, and, if
    ``compute_grad``, the student logits overwritten with ``d(grad_scale · loss) / d logits`` by the
    spec's gradient formulas (checked against autograd on the spec in the tests)."""
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    name = MODES[mode]
    with torch.no_grad():
        d, easy, hard_loss, forward_kd, reverse_kd = kd.per_row_terms(student, teacher[:, :vocab], safe, lam, beta,
                                                                      temperature)
        is_hard = hard & valid if hard is not None else kd.hard_rows_by_rule(name, d, valid, gamma)
        loss = kd.row_loss(name, is_hard, easy, hard_loss, forward_kd, reverse_kd)
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
    kind = MODE_RULES[Mode.parse(mode)][1]
    if kind == LossKind.REVERSE_KD:
        kl = (q * (log_q - log_p)).sum(1, keepdim=True)
        return (1 - lam) * (q - onehot) + lam * q * (log_q - log_p - kl)
    m = beta * q + (1 - beta) * y
    r = torch.where(y > 0, y / m, torch.zeros_like(y))
    hard = beta * q * ((r * q).sum(1, keepdim=True) - r)
    return torch.where(is_hard.unsqueeze(1), hard, q - y)


def _linear_in_weight_dtype(x, weight, bias):
    """float32 ``x @ weight.T + bias`` computed in the weight's dtype (the fused form's GEMM rule)."""
    bias = None if bias is None else bias.to(weight.dtype)
    return torch.nn.functional.linear(x.to(weight.dtype), weight, bias).float()


def _spec_kwargs(options: KDOptions, num_items):
    return dict(mode=options.mode, lam=options.lam, beta=options.beta, gamma=options.gamma,
                hard_fraction=options.hard_fraction, temperature=options.temperature,
                ignore_index=options.ignore_index, reduction=options.reduction, num_items_in_batch=num_items)


def kd_whole_loss_from_logits(student_logits, teacher_logits, labels, options: KDOptions, num_items):
    """The whole loss from logits, ``(loss, KDStats)``, by the spec (autograd gives its gradients)."""
    return kd.self_evolution_kd_loss_from_logits(student_logits, teacher_logits.detach(), labels,
                                                 **_spec_kwargs(options, num_items))


def kd_whole_loss(student_input, student_weight, student_bias, teacher_input, teacher_weight, teacher_bias,
                  teacher_logits, labels, options: KDOptions, num_items):
    """The whole loss from hidden states and heads, ``(loss, KDStats)``: the logits in full, then the spec."""
    student_logits = _linear_in_weight_dtype(student_input, student_weight, student_bias)
    teacher = teacher_logits if teacher_logits is not None else _linear_in_weight_dtype(
        teacher_input, teacher_weight, teacher_bias)
    return kd_whole_loss_from_logits(student_logits, teacher, labels, options, num_items)


register_kernels("reference", "kd", rows=kd_rows, whole_loss=kd_whole_loss,
                 whole_loss_from_logits=kd_whole_loss_from_logits)


# --- MuMo head ------------------------------------------------------------------------------------
# The ops whole by the spec (mtkernels/reference/mumo_head.py); the top-k of the fused backends is
# composed from their collab ``topk`` kernel, the loss from their ``ce_rows`` row kernel.

from . import mumo_head  # noqa: E402

register_kernels("reference", "mumo_head", ce_rows=mumo_head.ce_rows, whole_topk=mumo_head.head_topk,
                 whole_cross_entropy=mumo_head.cross_entropy)
