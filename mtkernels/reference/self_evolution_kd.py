"""Self-Evolution knowledge distillation and its baselines, docs/kd.md, in plain PyTorch.

Materialises every (N, V) tensor and lets autograd differentiate it: the executable spec, whose
values and gradients the fused backends are tested against. Per valid row (label g), with
``s = student / τ``, ``t = teacher / τ`` over the shared vocabulary ``V = min(V_s, V_t)``:

    q = softmax(s), p = softmax(t), ỹ = (1 - λ)·onehot(g) + λ·p
    d = KL(ỹ ‖ q)                          (learning difficulty; detached)
    easy = KL(ỹ ‖ q), hard = KL(ỹ ‖ m), m = β·q + (1 - β)·ỹ
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

Tensor = torch.Tensor
from ..ops.kd_options import MODE_RULES, MODES, HardRule, LossKind, Mode  # noqa: F401  (MODES re-exported)


class KDStats(NamedTuple):
    """Per-call statistics for logging: valid rows, hard rows and the mean difficulty d."""

    num_valid: Tensor  # () int64
    num_hard: Tensor  # () int64
    mean_difficulty: Tensor  # () float32, 0 when there is no valid row


def num_hard_rows(hard_fraction: float, num_valid: int) -> int:
    """``round(hard_fraction · n_valid)``, halves rounded up."""
    return int(math.floor(hard_fraction * num_valid + 0.5))


def hard_rows_by_rank(d: Tensor, valid: Tensor, hard_fraction: float) -> Tensor:
    """``self_evolution_topk``: ``(N,)`` bool, the ``round(hard_fraction · n_valid)`` valid rows of
    largest d, ties broken by row order (a stable sort). The one definition of the ranking."""
    n_hard = num_hard_rows(hard_fraction, int(valid.sum()))
    order = torch.sort(d.masked_fill(~valid, -math.inf), descending=True, stable=True).indices[:n_hard]
    return torch.zeros_like(valid).index_fill(0, order, True) & valid


def hard_rows_by_rule(mode: str, d: Tensor, valid: Tensor, gamma: float) -> Tensor:
    """``(N,)`` bool: the hard rows of a mode whose rule needs no ranking (kd_options.MODE_RULES)."""
    rule = MODE_RULES[Mode.parse(mode)][0]
    if rule == HardRule.IF_DIFFICULT:
        return valid & (d > gamma)
    if rule == HardRule.ALL_VALID:
        return valid.clone()
    return torch.zeros_like(valid)


def row_loss(mode: str, is_hard: Tensor, easy: Tensor, hard: Tensor, forward_kd: Tensor, reverse_kd: Tensor):
    """Each row's loss under ``mode``'s loss kind (kd_options.MODE_RULES)."""
    kind = MODE_RULES[Mode.parse(mode)][1]
    if kind == LossKind.FORWARD_KD:
        return forward_kd
    if kind == LossKind.REVERSE_KD:
        return reverse_kd
    return torch.where(is_hard, hard, easy)


def _weighted(w: float, v: Tensor) -> Tensor:
    """``w · v`` with a term of weight 0 absent (0, not NaN, where ``v`` is infinite)."""
    return torch.zeros_like(v) if w == 0 else w * v


def _where_mass(a: Tensor, v: Tensor) -> Tensor:
    """``a · v`` summed over the vocabulary, terms with ``a = 0`` dropped (0 · log 0 = 0, masked entries)."""
    return torch.where(a > 0, a * v, torch.zeros_like(v)).sum(1)


def per_row_terms(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, lam: float, beta: float,
                  temperature: float):
    """Per-row (N,) float64 ``d`` (detached), easy, hard, forward_kd and reverse_kd losses.

    Ignored rows must already be replaced by a valid label (their terms are discarded). Every
    product whose first factor is a probability (or target mass) of 0 is 0, so ``-inf`` logits
    (masked entries) contribute nothing where they carry no mass."""
    vocab = min(student_logits.shape[1], teacher_logits.shape[1])
    log_q = torch.log_softmax(student_logits[:, :vocab].double() / temperature, dim=1)
    log_p = torch.log_softmax(teacher_logits[:, :vocab].detach().double() / temperature, dim=1)
    p, q = log_p.exp(), log_q.exp()
    onehot = torch.nn.functional.one_hot(labels, vocab).double()
    y = (1 - lam) * onehot + lam * p
    log_y = torch.log(y)  # -inf where y = 0; those terms are dropped

    easy = _where_mass(y, log_y - log_q)
    log_m = torch.logaddexp(math.log(beta) + log_q, (math.log1p(-beta) if beta < 1 else -math.inf) + log_y)
    hard = _where_mass(y, log_y - log_m)
    ce = -log_q.gather(1, labels.unsqueeze(1)).squeeze(1)
    kl_pq = _where_mass(p, log_p - log_q)
    kl_qp = _where_mass(q, log_q - log_p)
    forward_kd = _weighted(1 - lam, ce) + _weighted(lam, kl_pq)
    reverse_kd = _weighted(1 - lam, ce) + _weighted(lam, kl_qp)
    # a row whose student or teacher logits are all -inf has no distribution: NaN, never a number
    defined = (student_logits[:, :vocab] > -math.inf).any(1) & (teacher_logits[:, :vocab] > -math.inf).any(1)
    undefined_is_nan = torch.where(defined, 1.0, math.nan).double()  # a factor, so gradients are NaN there too
    easy, hard, forward_kd, reverse_kd = (x * undefined_is_nan for x in (easy, hard, forward_kd, reverse_kd))
    return easy.detach(), easy, hard, forward_kd, reverse_kd


def self_evolution_kd_loss_from_logits(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
                                       mode: str = "self_evolution", lam: float = 0.5, beta: float = 0.5,
                                       gamma: float = 0.4, hard_fraction: float = 0.2, temperature: float = 1.0,
                                       ignore_index: int = -100, reduction: str = "mean",
                                       num_items_in_batch: Optional[float] = None):
    """``(loss, KDStats)`` for logits ``(N, V_s)``, ``(N, V_t)`` and labels ``(N,)``.

    ``loss`` is a float32 scalar (``mean``, ``sum``) or ``(N,)`` (``none``, 0 on ignored rows)."""
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    d, easy, hard, forward_kd, reverse_kd = per_row_terms(student_logits, teacher_logits, safe_labels, lam, beta,
                                                          temperature)
    is_hard = (hard_rows_by_rank(d, valid, hard_fraction) if mode == "self_evolution_topk"
               else hard_rows_by_rule(mode, d, valid, gamma))
    rows = row_loss(mode, is_hard, easy, hard, forward_kd, reverse_kd)
    rows = torch.where(valid, rows, torch.zeros_like(rows))

    num_valid = valid.sum()
    if reduction == "none":
        loss = rows
    elif reduction == "sum":
        loss = rows.sum()
    else:
        denominator = num_valid.double() if num_items_in_batch is None else torch.as_tensor(
            float(num_items_in_batch), dtype=torch.float64)
        # no valid row (or num_items_in_batch = 0): loss 0 and zero gradients, not 0 / 0
        loss = rows.sum() * torch.where(denominator > 0, 1 / denominator, torch.zeros_like(denominator))
    mean_d = (d * valid).sum() / num_valid.clamp_min(1)
    out_dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32  # float64 for gradcheck
    return loss.to(out_dtype), KDStats(num_valid, is_hard.sum(), mean_d.float())
