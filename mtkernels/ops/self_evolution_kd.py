"""Self-evolution knowledge distillation (docs/kd.md): the public loss, its torch ops and autograd.

``mtkernels::self_evolution_kd`` computes the reduced loss and, for ``mean`` / ``sum``, the
student's gradients in the same pass (backward only scales them). For ``none`` the per-row
gradient weights are known only in backward, which runs ``mtkernels::self_evolution_kd_backward``:
a second pass with the hard rows fixed by the forward pass.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .. import backends
from ..reference import self_evolution_kd as ref
from . import kd_args, kd_vocab_parallel
from .chunked_loss import (GivenLogits, LinearBlock, LinearLogits, input_grads, loss_only_differentiable,
                           refuse_second_backward, scaled_in_place)
from .kd_chunked import fused_kd_pass, kd_chunk_rows
from .kd_options import KD_OPTIONS_SCHEMA, NUM_OPTIONS, KDOptions

Tensor = torch.Tensor
KDStats = ref.KDStats  # (num_valid, num_hard, mean_difficulty): one definition for every backend
WHAT = "self-evolution KD loss"


def split_options(flat) -> tuple:
    """A custom op's arguments after its tensors: ``(KDOptions, the remaining arguments)``."""
    return KDOptions.from_flat(flat[:NUM_OPTIONS]), tuple(flat[NUM_OPTIONS:])


def row_scale(labels: Tensor, options: KDOptions, num_items: Optional[Tensor]) -> Tensor:
    """Per-row weight of the reduction: 1 (sum) or 1 / denominator (mean). A denominator of 0 (no
    valid row, or ``num_items_in_batch = 0``) gives weight 0: loss 0 and zero gradients."""
    ones = torch.ones(labels.shape[0], dtype=torch.float32, device=labels.device)
    if options.reduction == "sum":
        return ones
    denominator = ((labels != options.ignore_index).sum() if num_items is None else num_items).to(torch.float32)
    return ones * torch.where(denominator > 0, 1 / denominator, torch.zeros_like(denominator))


def reduce_rows(rows: Tensor, scale: Tensor, options: KDOptions) -> Tensor:
    return rows if options.reduction == "none" else (rows * scale).sum()


def _student(student_input, student_weight, student_bias) -> LinearLogits:
    return LinearLogits([LinearBlock(student_input, student_weight, student_bias, needs_grad=True)])


def _teacher(teacher_input, teacher_weight, teacher_bias, teacher_logits):
    if teacher_logits is not None:
        return GivenLogits(teacher_logits)
    return LinearLogits([LinearBlock(teacher_input, teacher_weight, teacher_bias, needs_grad=False)])


def _empty_f32(like: Tensor) -> Tensor:  # outputs must not alias each other: a fresh one each time
    return like.new_empty(0, dtype=torch.float32)


# --- torch ops ------------------------------------------------------------------------------------

_STUDENT_TEACHER = ("Tensor student_input, Tensor student_weight, Tensor? student_bias, Tensor? teacher_input, "
                    "Tensor? teacher_weight, Tensor? teacher_bias, Tensor? teacher_logits, Tensor labels")
_KD_SCHEMA = (f"({_STUDENT_TEACHER}, Tensor? num_items, {KD_OPTIONS_SCHEMA}, str backend, bool need_grad) "
              f"-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
_KD_BACKWARD_SCHEMA = (f"(Tensor grad_rows, Tensor hard, {_STUDENT_TEACHER}, {KD_OPTIONS_SCHEMA}, str backend) "
                       f"-> (Tensor, Tensor, Tensor)")


def _kd_impl(student_input, student_weight, student_bias, teacher_input, teacher_weight, teacher_bias,
             teacher_logits, labels, num_items, *flat):
    """``mtkernels::self_evolution_kd``: ``(loss, d (N,), hard (N,) bool, grad_input, grad_weight fp32,
    grad_bias fp32)``; the gradients are of the returned loss (empty for ``none``, without
    ``need_grad``, and ``grad_bias`` without a bias)."""
    options, (backend, need_grad) = split_options(flat)
    scale = row_scale(labels, options, num_items)
    want_grad = need_grad and options.reduction != "none"
    rows, d, hard, grads = fused_kd_pass(_student(student_input, student_weight, student_bias),
                                         _teacher(teacher_input, teacher_weight, teacher_bias, teacher_logits),
                                         labels, options, scale if want_grad else None, None, backend)
    loss = reduce_rows(rows, scale, options)
    if grads is None:
        return loss, d, hard, student_input.new_empty(0), _empty_f32(student_input), _empty_f32(student_input)
    g = grads[0]
    return loss, d, hard, g.x, g.weight, _empty_f32(student_input) if g.bias is None else g.bias


_kd_op = torch.library.custom_op("mtkernels::self_evolution_kd", _kd_impl, mutates_args=(), schema=_KD_SCHEMA)


@_kd_op.register_fake
def _(student_input, student_weight, student_bias, teacher_input, teacher_weight, teacher_bias, teacher_logits,
      labels, num_items, *flat):
    options, (_backend, need_grad) = split_options(flat)
    n = labels.shape[0]
    new = student_input.new_empty
    none = options.reduction == "none"
    grads = need_grad and not none
    return (new((n,) if none else (), dtype=torch.float32), new((n,), dtype=torch.float32),
            new((n,), dtype=torch.bool), new(student_input.shape if grads else (0,)),
            new(student_weight.shape if grads else (0,), dtype=torch.float32),
            new(student_bias.shape if grads and student_bias is not None else (0,), dtype=torch.float32))


def _kd_backward_impl(grad_rows, hard, student_input, student_weight, student_bias, teacher_input, teacher_weight,
                      teacher_bias, teacher_logits, labels, *flat):
    """``mtkernels::self_evolution_kd_backward``: the gradients of ``Σ_i grad_rows_i · loss_i``
    (reduction ``none``) with the forward's hard rows: ``(grad_input, grad_weight fp32, grad_bias fp32)``."""
    options, (backend,) = split_options(flat)
    *_, grads = fused_kd_pass(_student(student_input, student_weight, student_bias),
                              _teacher(teacher_input, teacher_weight, teacher_bias, teacher_logits), labels, options,
                              grad_rows.float().contiguous(), hard, backend)
    g = grads[0]
    return g.x, g.weight, _empty_f32(student_input) if g.bias is None else g.bias


_kd_backward_op = torch.library.custom_op("mtkernels::self_evolution_kd_backward", _kd_backward_impl,
                                          mutates_args=(), schema=_KD_BACKWARD_SCHEMA)


@_kd_backward_op.register_fake
def _(grad_rows, hard, student_input, student_weight, student_bias, *rest):
    return (student_input.new_empty(student_input.shape),
            student_weight.new_empty(student_weight.shape, dtype=torch.float32),
            student_input.new_empty(student_bias.shape if student_bias is not None else (0,), dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    (student_input, student_weight, student_bias, teacher_input, teacher_weight, teacher_bias, teacher_logits,
     labels, _num_items, *flat) = inputs
    ctx.options, (ctx.backend, _need_grad) = split_options(flat)
    ctx.num_inputs = len(inputs)
    ctx.has_bias = student_bias is not None
    ctx.weight_dtype = student_weight.dtype
    _, d, hard, grad_input, grad_weight, grad_bias = output
    loss_only_differentiable(ctx, d, hard, grad_input, grad_weight, grad_bias)
    if ctx.options.reduction == "none":  # backward runs a second pass with the forward's hard rows
        ctx.save_for_backward(hard, student_input, student_weight, student_bias, teacher_input, teacher_weight,
                              teacher_bias, teacher_logits, labels)
    else:
        ctx.save_for_backward(grad_input, grad_weight, grad_bias)


def _backward(ctx, grad_loss, _grad_d, _grad_hard, _gi, _gw, _gb):
    if grad_loss is None:
        return input_grads(ctx.num_inputs)
    if ctx.options.reduction == "none":
        hard, *saved = ctx.saved_tensors
        grad_input, grad_weight, grad_bias = _kd_backward_op(grad_loss, hard, *saved, *ctx.options.flat(),
                                                             ctx.backend)
    else:
        refuse_second_backward(ctx, WHAT)
        grad_input, grad_weight, grad_bias = scaled_in_place(ctx.saved_tensors, grad_loss)
    grad_bias = grad_bias.to(ctx.weight_dtype) if ctx.has_bias else None
    return input_grads(ctx.num_inputs, grad_input, grad_weight.to(ctx.weight_dtype), grad_bias)


torch.library.register_autograd("mtkernels::self_evolution_kd", _backward, setup_context=_setup_context)


# --- public API -----------------------------------------------------------------------------------

def finish(loss, d, hard, labels, options: KDOptions, return_stats: bool):
    """The public functions' return value: the loss, and its :class:`KDStats` if asked for."""
    if not return_stats:
        return loss
    valid = labels != options.ignore_index
    num_valid = valid.sum()
    mean_d = (d * valid).sum() / num_valid.clamp_min(1)
    return loss, KDStats(num_valid, (hard & valid).sum(), mean_d)


def self_evolution_kd_loss(student_input: Tensor, student_weight: Tensor, teacher_input: Optional[Tensor] = None,
                           teacher_weight: Optional[Tensor] = None, labels: Optional[Tensor] = None, *,
                           teacher_logits: Optional[Tensor] = None, student_bias: Optional[Tensor] = None,
                           teacher_bias: Optional[Tensor] = None, mode: str = "self_evolution", lam: float = 0.5,
                           beta: float = 0.5, gamma: float = 0.4, hard_fraction: float = 0.2,
                           temperature: float = 1.0, ignore_index: int = -100, reduction: str = "mean",
                           num_items_in_batch=None, chunk_size: Optional[int] = None, return_stats: bool = False,
                           backend: str = "auto", vocab_parallel_group=None,
                           vocab_parallel_reduce_grad_input: bool = True):
    """Self-evolution KD loss (or a baseline, by ``mode``) from hidden states and lm_head weights.

    Never materialises tokens × vocabulary: logits are formed in row chunks (``chunk_size`` rows,
    default: a 60 MiB budget on CPU), and the student's gradients are computed in the same pass.

    Args:
        student_input: ``(N, H_s)`` final hidden states; student_weight ``(V_s, H_s)``; student_bias ``(V_s,)``.
            Dtypes may differ (fp32 / bf16 / fp16): the logits GEMMs run in each weight's dtype, casting a
            chunk of the input at a time; the gradients come back in their tensors' dtypes.
        teacher_input: ``(N, H_t)``, teacher_weight ``(V_t, H_t)``, teacher_bias ``(V_t,)``; or instead
            ``teacher_logits (N, V_t)``. The teacher gets no gradient.
        labels: ``(N,)`` int64, already aligned with the inputs (callers shift); ``ignore_index`` rows count for nothing.
        mode: ``self_evolution`` | ``self_evolution_topk`` | ``skew`` | ``noevo`` | ``forward_kd`` | ``reverse_kd``.
            ``self_evolution_topk`` ranks the rows of *this call*: with gradient accumulation or several
            processes, each micro-batch on each process picks its own ``hard_fraction`` of hard rows, so
            the choice depends on how the batch is split.
        lam, beta, gamma, hard_fraction, temperature: docs/kd.md (λ ∈ [0,1], β ∈ (0,1], Γ ≥ 0, fraction ∈ [0,1], τ > 0).
        reduction: ``mean`` (Σ rows / n_valid, or / ``num_items_in_batch``), ``sum`` or ``none`` (``(N,)``).
        return_stats: also return :class:`KDStats` (valid rows, hard rows, mean difficulty).
        vocab_parallel_group: a ``torch.distributed`` process group whose ranks each hold a contiguous slice of
            the vocabulary, in rank order (sizes may differ): then ``student_weight`` ``(V_r, H_s)``,
            ``student_bias`` ``(V_r,)``, ``teacher_weight`` ``(V_r, H_t)``, ``teacher_bias`` ``(V_r,)`` or
            ``teacher_logits`` ``(N, V_r)`` are this rank's slice (the student's and the teacher's slices the
            same ids), every rank passes the same ``student_input``, ``teacher_input`` and global ``labels``,
            and every rank gets the full loss and stats and the full ``grad_input``; ``grad_weight`` is its
            slice's. Every rank raises the same error on a bad argument (docs/kd.md, "Vocabulary-parallel").
        vocab_parallel_reduce_grad_input: sum ``grad_input`` across the group (default). Pass False when
            ``student_input`` comes through a layer whose backward already sums its gradient across the
            group (e.g. Megatron's ``copy_to_tensor_model_parallel_region``): then each rank's
            ``grad_input`` is its slice's share.

    Returns:
        the loss (``()`` float32, or ``(N,)`` for ``none``), and :class:`KDStats` if ``return_stats``.
    """
    if vocab_parallel_group is not None:
        options, a, vocab_s, vocab_t, name, ranks = _vocab_parallel_call(
            vocab_parallel_group, vocab_parallel_reduce_grad_input, student_input, student_weight, teacher_input,
            teacher_weight, labels, teacher_logits, student_bias, teacher_bias, num_items_in_batch, return_stats,
            backend, KDOptions(mode, lam, beta, gamma, hard_fraction, temperature, ignore_index, reduction, chunk_size))
    else:
        options = KDOptions(mode, lam, beta, gamma, hard_fraction, temperature, ignore_index, reduction, chunk_size)
        a = kd_args.check(student_input, student_weight, teacher_input, teacher_weight, labels, teacher_logits,
                          student_bias, teacher_bias, options, num_items_in_batch, return_stats)
        name = backends.resolve_backend(backend, student_input.device, "kd")
        whole = backends.whole_op("kd", "loss", name)
        if whole is not None:
            loss, stats = whole(student_input, student_weight, student_bias, teacher_input, teacher_weight,
                                teacher_bias, teacher_logits, labels.contiguous(), options, a.num_items)
            return (loss, stats) if return_stats else loss
        vocab_s, ranks = student_weight.shape[0], 1
        vocab_t = teacher_logits.shape[1] if teacher_logits is not None else teacher_weight.shape[0]
    labels = labels.contiguous()
    chunk = kd_chunk_rows(options, labels.shape[0], vocab_s, vocab_t, student_input.device, ranks)
    need_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (student_input, student_weight, student_bias))
    loss, d, hard, *_ = torch.ops.mtkernels.self_evolution_kd(
        student_input, student_weight, student_bias, teacher_input, teacher_weight, teacher_bias, teacher_logits,
        labels, a.num_items, *dataclasses.replace(options, chunk_size=chunk).flat(), name, need_grad)
    return finish(loss, d, hard, labels, options, return_stats)


@torch.compiler.disable  # collectives and host reads of the gathered facts: eager, before the op
def _vocab_parallel_call(group, reduce_grad_input, student_input, student_weight, teacher_input, teacher_weight,
                         labels, teacher_logits, student_bias, teacher_bias, num_items_in_batch, return_stats,
                         backend, options: KDOptions):
    """Checks of a vocabulary-parallel call agreed by every rank: ``(options for the op, KDArgs, global
    V_s, global V_t, backend name, group size)``."""
    named = dict(student_input=student_input, student_weight=student_weight, teacher_input=teacher_input,
                 teacher_weight=teacher_weight, labels=labels, teacher_logits=teacher_logits,
                 student_bias=student_bias, teacher_bias=teacher_bias, num_items_in_batch=num_items_in_batch)

    def check_locally():
        checked = dataclasses.replace(options, reduce_grad_input=reduce_grad_input)
        for key, value in named.items():
            kd_vocab_parallel.check_tensor(value, key, group)
        a = kd_args.check(student_input, student_weight, teacher_input, teacher_weight, labels, teacher_logits,
                          student_bias, teacher_bias, options, num_items_in_batch, return_stats,
                          check_label_range=False)
        name = backends.resolve_backend(backend, student_input.device, "kd")
        given = teacher_logits is not None
        facts = kd_vocab_parallel.CallFacts(
            rows=student_input.shape[0], vocab_s=student_weight.shape[0],
            vocab_t=teacher_logits.shape[1] if given else teacher_weight.shape[0], hidden_s=student_input.shape[1],
            hidden_t=-1 if given else teacher_input.shape[1], labels=labels, ignore_index=options.ignore_index,
            num_items=a.num_items, options=checked, teacher_name="teacher_logits" if given else "teacher_weight")
        return facts, (checked, a, name)

    layout, (options, a, name) = kd_vocab_parallel.agree_on_call(group, check_locally)
    options = dataclasses.replace(options, group_name=group.group_name, vocab_offset=layout.offset)
    return options, a, layout.vocab, layout.vocab, name, len(layout.sizes)
