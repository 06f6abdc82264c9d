"""Self-evolution knowledge distillation (docs/kd.md): the public loss, its torch ops and autograd.

``mtkernels::self_evolution_kd`` computes the reduced loss and, for ``mean`` / ``sum``, the
student's gradients in the same pass (backward only scales them). For ``none`` the per-row
gradient weights are known only in backward, which runs ``mtkernels::self_evolution_kd_backward``:
a second pass with the hard rows fixed by the forward pass.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import backends
from ..reference import self_evolution_kd as ref
from . import kd_args
from .kd_chunked import KDParams, Linear, Logits, chunk_rows, fused_kd_pass

Tensor = torch.Tensor
KDStats = ref.KDStats  # (num_valid, num_hard, mean_difficulty): one definition for every backend


def _params(mode, lam, beta, gamma, hard_fraction, temperature, ignore_index) -> KDParams:
    return KDParams(mode, float(lam), float(beta), float(gamma), float(hard_fraction), float(temperature),
                    int(ignore_index))


def _row_scale(labels: Tensor, ignore_index: int, reduction: str, num_items: Optional[Tensor]) -> Tensor:
    """Per-row weight of the reduction: 1 (sum) or 1 / denominator (mean). A denominator of 0 (no
    valid row, or ``num_items_in_batch = 0``) gives weight 0: loss 0 and zero gradients."""
    ones = torch.ones(labels.shape[0], dtype=torch.float32, device=labels.device)
    if reduction == "sum":
        return ones
    denominator = ((labels != ignore_index).sum() if num_items is None else num_items).to(torch.float32)
    return ones * torch.where(denominator > 0, 1 / denominator, torch.zeros_like(denominator))


def _reduce(rows: Tensor, scale: Tensor, reduction: str) -> Tensor:
    return rows if reduction == "none" else (rows * scale).sum()


def _teacher(teacher_input, teacher_weight, teacher_bias, teacher_logits):
    if teacher_logits is not None:
        return Logits(teacher_logits)
    return Linear(teacher_input, teacher_weight, teacher_bias)


def _loss_only_differentiable(ctx, *other_outputs) -> None:
    """Without this, autograd hands backward zero-filled gradients for the other outputs, and some
    of them are weight- or logits-sized."""
    ctx.mark_non_differentiable(*other_outputs)
    ctx.set_materialize_grads(False)


SECOND_BACKWARD = ("a second backward through the same self-evolution KD loss is not supported (retain_graph=True): "
                   "its gradients are computed in the forward pass and the first backward scales them in place; "
                   "compute the loss again for another backward")


def _refuse_second_backward(ctx) -> None:
    """Backward scales the forward's gradients in place (eager mode), so it can run once; a second
    one is refused with an error that says why, before autograd's saved-tensor version check would
    fail with a generic one. Call it before reading ``ctx.saved_tensors``."""
    if torch.compiler.is_compiling():
        return
    if getattr(ctx, "backward_done", False):
        raise RuntimeError(SECOND_BACKWARD)
    ctx.backward_done = True


def _scaled_by(grads, grad_loss: Tensor):
    """The forward's gradients times the incoming gradient, in place where autograd allows it: a
    second weight-sized copy would double the peak (see _refuse_second_backward)."""
    if torch.compiler.is_compiling():
        return tuple(g * grad_loss for g in grads)
    return tuple(g.mul_(grad_loss) for g in grads)


# --- torch ops ------------------------------------------------------------------------------------

@torch.library.custom_op("mtkernels::self_evolution_kd", mutates_args=())
def _kd_op(student_input: Tensor, student_weight: Tensor, student_bias: Optional[Tensor],
           teacher_input: Optional[Tensor], teacher_weight: Optional[Tensor], teacher_bias: Optional[Tensor],
           teacher_logits: Optional[Tensor], labels: Tensor, num_items: Optional[Tensor], mode: str, lam: float,
           beta: float, gamma: float, hard_fraction: float, temperature: float, ignore_index: int, reduction: str,
           chunk_size: int, backend: str, need_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns ``(loss, d (N,), hard (N,) bool, grad_input, grad_weight fp32, grad_bias fp32)``; the
    gradients are of the returned loss (empty for ``none``, without ``need_grad``, and ``grad_bias``
    without a bias)."""
    params = _params(mode, lam, beta, gamma, hard_fraction, temperature, ignore_index)
    student = Linear(student_input, student_weight, student_bias)
    teacher = _teacher(teacher_input, teacher_weight, teacher_bias, teacher_logits)
    scale = _row_scale(labels, ignore_index, reduction, num_items)
    want_grad = need_grad and reduction != "none"
    rows, d, hard, grads = fused_kd_pass(student, teacher, labels, params, scale if want_grad else None, None,
                                         chunk_size, backend)
    def empty():  # outputs must not alias each other
        return student_input.new_empty(0, dtype=torch.float32)

    grad_input, grad_weight, grad_bias = grads if grads is not None else (student_input.new_empty(0), empty(), None)
    return _reduce(rows, scale, reduction), d, hard, grad_input, grad_weight, empty() if grad_bias is None else grad_bias


@_kd_op.register_fake
def _(student_input, student_weight, student_bias, teacher_input, teacher_weight, teacher_bias, teacher_logits,
      labels, num_items, mode, lam, beta, gamma, hard_fraction, temperature, ignore_index, reduction, chunk_size,
      backend, need_grad):
    n = labels.shape[0]
    new = student_input.new_empty
    loss = new((n,), dtype=torch.float32) if reduction == "none" else new((), dtype=torch.float32)
    grads = need_grad and reduction != "none"
    return (loss, new((n,), dtype=torch.float32), new((n,), dtype=torch.bool),
            new(student_input.shape if grads else (0,)),
            new(student_weight.shape if grads else (0,), dtype=torch.float32),
            new(student_bias.shape if grads and student_bias is not None else (0,), dtype=torch.float32))


@torch.library.custom_op("mtkernels::self_evolution_kd_backward", mutates_args=())
def _kd_backward_op(grad_rows: Tensor, hard: Tensor, student_input: Tensor, student_weight: Tensor,
                    student_bias: Optional[Tensor], teacher_input: Optional[Tensor], teacher_weight: Optional[Tensor],
                    teacher_bias: Optional[Tensor], teacher_logits: Optional[Tensor], labels: Tensor, mode: str,
                    lam: float, beta: float, gamma: float, hard_fraction: float, temperature: float,
                    ignore_index: int, chunk_size: int, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``Σ_i grad_rows_i · loss_i`` (reduction ``none``), hard rows as in forward."""
    params = _params(mode, lam, beta, gamma, hard_fraction, temperature, ignore_index)
    student = Linear(student_input, student_weight, student_bias)
    teacher = _teacher(teacher_input, teacher_weight, teacher_bias, teacher_logits)
    *_, grads = fused_kd_pass(student, teacher, labels, params, grad_rows.float().contiguous(), hard, chunk_size,
                              backend)
    grad_input, grad_weight, grad_bias = grads
    return grad_input, grad_weight, student_input.new_empty(0, dtype=torch.float32) if grad_bias is None else grad_bias


@_kd_backward_op.register_fake
def _(grad_rows, hard, student_input, student_weight, student_bias, *rest):
    return (student_input.new_empty(student_input.shape), student_weight.new_empty(student_weight.shape,
                                                                                     dtype=torch.float32),
            student_input.new_empty(student_bias.shape if student_bias is not None else (0,), dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    (student_input, student_weight, student_bias, teacher_input, teacher_weight, teacher_bias, teacher_logits,
     labels, _num_items, *options) = inputs
    ctx.options = options[:10]  # mode, lam, beta, gamma, hard_fraction, temperature, ignore_index, reduction, chunk, backend
    ctx.has_bias = student_bias is not None
    _, d, hard, grad_input, grad_weight, grad_bias = output
    _loss_only_differentiable(ctx, d, hard, grad_input, grad_weight, grad_bias)
    if options[7] == "none":
        ctx.save_for_backward(hard, student_input, student_weight, student_bias, teacher_input, teacher_weight,
                              teacher_bias, teacher_logits, labels)
    else:
        ctx.save_for_backward(grad_input, grad_weight, grad_bias)
    ctx.weight_dtype = student_weight.dtype


def _backward(ctx, grad_loss, _grad_d, _grad_hard, _gi, _gw, _gb):
    mode, lam, beta, gamma, hard_fraction, temperature, ignore_index, reduction, chunk, backend = ctx.options
    if grad_loss is None:
        return (None,) * 20
    if reduction == "none":
        hard, *saved = ctx.saved_tensors
        grad_input, grad_weight, grad_bias = _kd_backward_op(grad_loss, hard, *saved, mode, lam, beta, gamma,
                                                             hard_fraction, temperature, ignore_index, chunk, backend)
    else:
        _refuse_second_backward(ctx)
        grad_input, grad_weight, grad_bias = _scaled_by(ctx.saved_tensors, grad_loss)
    grad_weight = grad_weight.to(ctx.weight_dtype)
    grad_bias = grad_bias.to(ctx.weight_dtype) if ctx.has_bias else None
    return (grad_input, grad_weight, grad_bias) + (None,) * 17


torch.library.register_autograd("mtkernels::self_evolution_kd", _backward, setup_context=_setup_context)


# --- public API -----------------------------------------------------------------------------------

def _linear_in_weight_dtype(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """float32 ``x @ weight.T + bias`` computed in the weight's dtype (the fused form's rule)."""
    bias = None if bias is None else bias.to(weight.dtype)
    return torch.nn.functional.linear(x.to(weight.dtype), weight, bias).float()


def _finish(loss, d, hard, labels, ignore_index, return_stats):
    if not return_stats:
        return loss
    valid = labels != ignore_index
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
                           backend: str = "auto"):
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

    Returns:
        the loss (``()`` float32, or ``(N,)`` for ``none``), and :class:`KDStats` if ``return_stats``.
    """
    a = kd_args.check(student_input, student_weight, teacher_input, teacher_weight, labels, teacher_logits,
                      student_bias, teacher_bias, mode, lam, beta, gamma, hard_fraction, temperature, ignore_index,
                      reduction, num_items_in_batch, chunk_size, return_stats)
    labels = labels.contiguous()
    name = backends.resolve_backend(backend, student_input.device, "kd")
    if name == "reference":
        student_logits = _linear_in_weight_dtype(student_input, student_weight, student_bias)
        teacher = teacher_logits if teacher_logits is not None else _linear_in_weight_dtype(
            teacher_input, teacher_weight, teacher_bias)
        loss, stats = ref.self_evolution_kd_loss_from_logits(
            student_logits, teacher.detach(), labels, mode=mode, lam=lam, beta=beta, gamma=gamma,
            hard_fraction=hard_fraction, temperature=temperature, ignore_index=ignore_index, reduction=reduction,
            num_items_in_batch=a.num_items)
        return (loss, stats) if return_stats else loss
    vocab_t = teacher_logits.shape[1] if teacher_logits is not None else teacher_weight.shape[0]
    chunk = chunk_rows(labels.shape[0], student_weight.shape[0], vocab_t, chunk_size, student_input.device)
    need_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (student_input, student_weight, student_bias))
    loss, d, hard, *_ = torch.ops.mtkernels.self_evolution_kd(
        student_input, student_weight, student_bias, teacher_input, teacher_weight, teacher_bias, teacher_logits,
        labels, a.num_items, mode, float(lam), float(beta), float(gamma), float(hard_fraction), float(temperature),
        int(ignore_index), reduction, chunk, name, need_grad)
    return _finish(loss, d, hard, labels, ignore_index, return_stats)
