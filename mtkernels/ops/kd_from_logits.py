"""The self-evolution KD loss from logits the caller already holds (e.g. TRL's GKD trainer).

Same chunked row kernels as the fused linear form, minus the GEMMs: the only tensors of size
tokens × vocabulary are the caller's logits and their gradient.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import backends
from ..reference import self_evolution_kd as ref
from . import kd_args
from .kd_chunked import Logits, chunk_rows, fused_kd_pass
from .self_evolution_kd import (_finish, _loss_only_differentiable, _params, _reduce, _refuse_second_backward,
                                _row_scale, _scaled_by)

Tensor = torch.Tensor


@torch.library.custom_op("mtkernels::self_evolution_kd_from_logits", mutates_args=())
def _op(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, grad_rows: Optional[Tensor],
        hard_rows: Optional[Tensor], num_items: Optional[Tensor], mode: str, lam: float, beta: float, gamma: float,
        hard_fraction: float, temperature: float, ignore_index: int, reduction: str, chunk_size: int, backend: str,
        need_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(loss, d (N,), hard (N,), grad_logits)``. The gradient is of the returned loss, or, when
    ``grad_rows`` is given (backward of ``none``), of ``Σ grad_rows_i · loss_i`` with ``hard_rows``."""
    params = _params(mode, lam, beta, gamma, hard_fraction, temperature, ignore_index)
    scale = _row_scale(labels, ignore_index, reduction, num_items) if grad_rows is None else grad_rows.float()
    want_grad = need_grad and (reduction != "none" or grad_rows is not None)
    rows, d, hard, grads = fused_kd_pass(Logits(student_logits), Logits(teacher_logits), labels, params,
                                         scale.contiguous() if want_grad else None, hard_rows, chunk_size, backend)
    grad = grads[0] if grads is not None else student_logits.new_empty(0)
    return _reduce(rows, scale, reduction), d, hard, grad


@_op.register_fake
def _(student_logits, teacher_logits, labels, grad_rows, hard_rows, num_items, mode, lam, beta, gamma,
      hard_fraction, temperature, ignore_index, reduction, chunk_size, backend, need_grad):
    n = labels.shape[0]
    new = student_logits.new_empty
    loss = new((n,), dtype=torch.float32) if reduction == "none" else new((), dtype=torch.float32)
    grads = need_grad and (reduction != "none" or grad_rows is not None)
    return loss, new((n,), dtype=torch.float32), new((n,), dtype=torch.bool), new(student_logits.shape if grads else (0,))


def _setup_context(ctx, inputs, output):
    student_logits, teacher_logits, labels, _grad_rows, _hard_rows, num_items, *options = inputs
    ctx.options = options
    _, d, hard, grad = output
    _loss_only_differentiable(ctx, d, hard, grad)
    ctx.save_for_backward(grad, hard, student_logits, teacher_logits, labels, num_items)


def _backward(ctx, grad_loss, _grad_d, _grad_hard, _grad_grad):
    if grad_loss is None:
        return (None,) * 17
    *options, need_grad = ctx.options
    if options[7] != "none":
        _refuse_second_backward(ctx)
    grad, hard, student_logits, teacher_logits, labels, num_items = ctx.saved_tensors
    if options[7] != "none":
        return _scaled_by((grad,), grad_loss) + (None,) * 16
    grad = _op(student_logits, teacher_logits, labels, grad_loss, hard, num_items, *options, True)[3]
    return (grad,) + (None,) * 16


torch.library.register_autograd("mtkernels::self_evolution_kd_from_logits", _backward, setup_context=_setup_context)


def self_evolution_kd_loss_from_logits(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
                                       mode: str = "self_evolution", lam: float = 0.5, beta: float = 0.5,
                                       gamma: float = 0.4, hard_fraction: float = 0.2, temperature: float = 1.0,
                                       ignore_index: int = -100, reduction: str = "mean", num_items_in_batch=None,
                                       chunk_size: Optional[int] = None, return_stats: bool = False,
                                       backend: str = "auto"):
    """The loss of :func:`mtkernels.self_evolution_kd_loss` from logits: ``student_logits`` ``(N, V_s)``
    or ``(B, T, V_s)``, ``teacher_logits`` ``(N, V_t)`` / ``(B, T, V_t)`` (no gradient), labels ``(N,)`` /
    ``(B, T)`` already aligned. Gradients flow to ``student_logits``. ``none`` returns ``(N,)`` / ``(B, T)``."""
    shape = labels.shape if isinstance(labels, torch.Tensor) else None
    if isinstance(student_logits, torch.Tensor) and student_logits.dim() == 3:
        student_logits = student_logits.reshape(-1, student_logits.shape[-1])
    if isinstance(teacher_logits, torch.Tensor) and teacher_logits.dim() == 3:
        teacher_logits = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    if isinstance(labels, torch.Tensor) and labels.dim() == 2:
        labels = labels.reshape(-1)
    kd_args.check_options(mode, lam, beta, gamma, hard_fraction, temperature, reduction, chunk_size)
    kd_args.check_logits(student_logits, teacher_logits)
    device = student_logits.device
    kd_args.check_labels(labels, student_logits.shape[0], min(student_logits.shape[1], teacher_logits.shape[1]),
                         ignore_index, device)
    labels = labels.contiguous()
    num_items = kd_args.num_items_tensor(num_items_in_batch, device)
    name = backends.resolve_backend(backend, device, "kd")
    if name == "reference":
        loss, stats = ref.self_evolution_kd_loss_from_logits(
            student_logits, teacher_logits.detach(), labels, mode=mode, lam=lam, beta=beta, gamma=gamma,
            hard_fraction=hard_fraction, temperature=temperature, ignore_index=ignore_index, reduction=reduction,
            num_items_in_batch=num_items)
        loss = loss.reshape(shape) if reduction == "none" else loss
        return (loss, stats) if return_stats else loss
    chunk = chunk_rows(labels.shape[0], student_logits.shape[1], teacher_logits.shape[1], chunk_size,
                       student_logits.device)
    need_grad = torch.is_grad_enabled() and student_logits.requires_grad
    loss, d, hard, _ = torch.ops.mtkernels.self_evolution_kd_from_logits(
        student_logits, teacher_logits.detach(), labels, None, None, num_items, mode, float(lam), float(beta),
        float(gamma), float(hard_fraction), float(temperature), int(ignore_index), reduction, chunk, name, need_grad)
    if reduction == "none":
        loss = loss.reshape(shape)
    return _finish(loss, d, hard, labels, ignore_index, return_stats)
