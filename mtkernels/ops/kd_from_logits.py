"""The self-evolution KD loss from logits the caller already holds (e.g. TRL's GKD trainer).

Same chunked row kernels as the fused linear form, minus the GEMMs: the only tensors of size
tokens × vocabulary are the caller's logits and their gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .. import backends
from . import kd_args, kd_vocab_parallel
from .chunked_loss import GivenLogits, input_grads, loss_only_differentiable, refuse_second_backward, scaled_in_place
from .kd_chunked import fused_kd_pass, kd_chunk_rows
from .kd_options import KD_OPTIONS_SCHEMA, KDOptions
from .self_evolution_kd import WHAT, finish, reduce_rows, row_scale, split_options

Tensor = torch.Tensor
_SCHEMA = (f"(Tensor student_logits, Tensor teacher_logits, Tensor labels, Tensor? grad_rows, Tensor? hard_rows, "
           f"Tensor? num_items, {KD_OPTIONS_SCHEMA}, str backend, bool need_grad) -> (Tensor, Tensor, Tensor, Tensor)")


def _impl(student_logits, teacher_logits, labels, grad_rows, hard_rows, num_items, *flat):
    """``mtkernels::self_evolution_kd_from_logits``: ``(loss, d (N,), hard (N,), grad_logits)``. The
    gradient is of the returned loss, or, when ``grad_rows`` is given (backward of ``none``), of
    ``Σ grad_rows_i · loss_i`` with the forward's ``hard_rows``."""
    options, (backend, need_grad) = split_options(flat)
    scale = row_scale(labels, options, num_items) if grad_rows is None else grad_rows.float()
    want_grad = need_grad and (options.reduction != "none" or grad_rows is not None)
    rows, d, hard, grads = fused_kd_pass(GivenLogits(student_logits), GivenLogits(teacher_logits), labels, options,
                                         scale.contiguous() if want_grad else None, hard_rows, backend)
    grad = grads[0] if grads is not None else student_logits.new_empty(0)
    return reduce_rows(rows, scale, options), d, hard, grad


_op = torch.library.custom_op("mtkernels::self_evolution_kd_from_logits", _impl, mutates_args=(), schema=_SCHEMA)


@_op.register_fake
def _(student_logits, teacher_logits, labels, grad_rows, hard_rows, num_items, *flat):
    options, (_backend, need_grad) = split_options(flat)
    n = labels.shape[0]
    new = student_logits.new_empty
    none = options.reduction == "none"
    grads = need_grad and (not none or grad_rows is not None)
    return (new((n,) if none else (), dtype=torch.float32), new((n,), dtype=torch.float32),
            new((n,), dtype=torch.bool), new(student_logits.shape if grads else (0,)))


def _setup_context(ctx, inputs, output):
    student_logits, teacher_logits, labels, _grad_rows, _hard_rows, num_items, *flat = inputs
    ctx.options, (ctx.backend, _need_grad) = split_options(flat)
    ctx.num_inputs = len(inputs)
    _, d, hard, grad = output
    loss_only_differentiable(ctx, d, hard, grad)
    ctx.save_for_backward(grad, hard, student_logits, teacher_logits, labels, num_items)


def _backward(ctx, grad_loss, _grad_d, _grad_hard, _grad_grad):
    if grad_loss is None:
        return input_grads(ctx.num_inputs)
    if ctx.options.reduction != "none":
        refuse_second_backward(ctx, WHAT)  # before saved_tensors is read
        return input_grads(ctx.num_inputs, *scaled_in_place((ctx.saved_tensors[0],), grad_loss))
    _, hard, student_logits, teacher_logits, labels, num_items = ctx.saved_tensors
    grad = _op(student_logits, teacher_logits, labels, grad_loss, hard, num_items, *ctx.options.flat(), ctx.backend,
               True)[3]
    return input_grads(ctx.num_inputs, grad)


torch.library.register_autograd("mtkernels::self_evolution_kd_from_logits", _backward, setup_context=_setup_context)


def self_evolution_kd_loss_from_logits(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
                                       mode: str = "self_evolution", lam: float = 0.5, beta: float = 0.5,
                                       gamma: float = 0.4, hard_fraction: float = 0.2, temperature: float = 1.0,
                                       ignore_index: int = -100, reduction: str = "mean", num_items_in_batch=None,
                                       chunk_size: Optional[int] = None, return_stats: bool = False,
                                       backend: str = "auto", vocab_parallel_group=None):
    """The loss of :func:`mtkernels.self_evolution_kd_loss` from logits: ``student_logits`` ``(N, V_s)``
    or ``(B, T, V_s)``, ``teacher_logits`` ``(N, V_t)`` / ``(B, T, V_t)`` (no gradient), labels ``(N,)`` /
    ``(B, T)`` already aligned. Gradients flow to ``student_logits``. ``none`` returns ``(N,)`` / ``(B, T)``.

    With ``vocab_parallel_group``, both logits are this rank's contiguous vocabulary slice ``(N, V_r)``
    (the same ids for student and teacher; slices in rank order), labels global ids: every rank gets
    the full loss and stats, and the gradient of its slice of the logits (docs/kd.md, "Vocabulary-parallel")."""
    shape = labels.shape if isinstance(labels, torch.Tensor) else None
    if isinstance(student_logits, torch.Tensor) and student_logits.dim() == 3:
        student_logits = student_logits.reshape(-1, student_logits.shape[-1])
    if isinstance(teacher_logits, torch.Tensor) and teacher_logits.dim() == 3:
        teacher_logits = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    if isinstance(labels, torch.Tensor) and labels.dim() == 2:
        labels = labels.reshape(-1)
    options = KDOptions(mode, lam, beta, gamma, hard_fraction, temperature, ignore_index, reduction, chunk_size)
    if vocab_parallel_group is not None:
        options, num_items, name, vocab, ranks = _vocab_parallel_call(vocab_parallel_group, student_logits, teacher_logits,
                                                               labels, options, num_items_in_batch, return_stats,
                                                               backend)
        vocab_s = vocab_t = vocab
        device = student_logits.device
    else:
        num_items, name = _check(student_logits, teacher_logits, labels, options, num_items_in_batch, return_stats,
                                 backend, check_label_range=True)
        device = student_logits.device
        whole = backends.whole_op("kd", "loss_from_logits", name)
        if whole is not None:
            loss, stats = whole(student_logits, teacher_logits, labels.contiguous(), options, num_items)
            loss = loss.reshape(shape) if reduction == "none" else loss
            return (loss, stats) if return_stats else loss
        vocab_s, vocab_t, ranks = student_logits.shape[1], teacher_logits.shape[1], 1
    labels = labels.contiguous()
    chunk = kd_chunk_rows(options, labels.shape[0], vocab_s, vocab_t, device, ranks)
    need_grad = torch.is_grad_enabled() and student_logits.requires_grad
    loss, d, hard, _ = torch.ops.mtkernels.self_evolution_kd_from_logits(
        student_logits, teacher_logits.detach(), labels, None, None, num_items,
        *dataclasses.replace(options, chunk_size=chunk).flat(), name, need_grad)
    if reduction == "none":
        loss = loss.reshape(shape)
    return finish(loss, d, hard, labels, options, return_stats)


def _check(student_logits, teacher_logits, labels, options, num_items_in_batch, return_stats, backend,
           check_label_range: bool):
    """This rank's checks: ``(num_items tensor or None, backend name)``."""
    kd_args.check_logits(student_logits, teacher_logits)
    device = student_logits.device
    vocab = min(student_logits.shape[1], teacher_logits.shape[1]) if check_label_range else None
    kd_args.check_labels(labels, student_logits.shape[0], vocab, options.ignore_index, device)
    if not isinstance(return_stats, bool):
        raise TypeError("return_stats: expected a bool")
    return kd_args.num_items_tensor(num_items_in_batch, device), backends.resolve_backend(backend, device, "kd")


@torch.compiler.disable  # collectives and host reads of the gathered facts: eager, before the op
def _vocab_parallel_call(group, student_logits, teacher_logits, labels, options, num_items_in_batch, return_stats,
                         backend):
    """Checks agreed by every rank: ``(options for the op, num_items, backend name, global V, group size)``."""
    def check_locally():
        for key, value in dict(student_logits=student_logits, teacher_logits=teacher_logits, labels=labels,
                               num_items_in_batch=num_items_in_batch).items():
            kd_vocab_parallel.check_tensor(value, key, group)
        num_items, name = _check(student_logits, teacher_logits, labels, options, num_items_in_batch, return_stats,
                                 backend, check_label_range=False)
        facts = kd_vocab_parallel.CallFacts(
            rows=student_logits.shape[0], vocab_s=student_logits.shape[1], vocab_t=teacher_logits.shape[1],
            hidden_s=-1, hidden_t=-1, labels=labels, ignore_index=options.ignore_index, num_items=num_items,
            options=options, student_name="student_logits", teacher_name="teacher_logits")
        return facts, (num_items, name)

    layout, (num_items, name) = kd_vocab_parallel.agree_on_call(group, check_locally)
    options = dataclasses.replace(options, group_name=group.group_name, vocab_offset=layout.offset)
    return options, num_items, name, layout.vocab, len(layout.sizes)
