"""The MuMo head ops (docs/mumo_head.md): top-k over the concatenated vocabulary and its fused
training loss, their torch ops and autograd.

Both see the logits ``z = [hidden · W_multiᵀ + b_multi ; mono_features · W_monoᵀ + b_mono]`` of
``V_multi + V_mono`` columns without ever concatenating them:

- ``mtkernels::mumo_head_topk``: per row chunk, each block's GEMM, then the resolved backend's
  collab ``topk`` kernel on that block (its top-k and log-sum-exp of ``z_block / T``), then an exact
  merge of the two lists (the order "value descending, lowest id first" restricted to a block is
  the block's own order, so the global top-k lies in the union of the blocks' top-k lists);
- ``mtkernels::mumo_head_cross_entropy``: the chunked linear-loss driver (chunked_loss.py) over the
  two blocks, the base block frozen, with the backend's ``mumo_head`` ``ce_rows`` row kernel, which
  writes ``lse − z[target]`` per row and overwrites the chunk with its gradient: the gradients are
  complete after the forward pass and backward only scales them (reduction ``none``: a second pass
  in backward, as the KD loss).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import backends
from . import mumo_head_args as args
from .chunked_loss import (LinearBlock, LinearLogits, chunk_plan, chunked_pass, loss_only_differentiable,
                           refuse_second_backward, row_chunks, scaled_in_place)
from .kd_args import num_items_tensor

Tensor = torch.Tensor
FAMILY = "mumo_head"
WHAT = "MuMo head cross-entropy"


# --- top-k -----------------------------------------------------------------------------------------

def merge_topk(parts, k: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Exact top-k of the union of column blocks: ``parts`` is a list of ``(values (r, k_b) f32
    descending, global ids (r, k_b) i64, lse (r,) f32)`` in ascending id order of the blocks.
    Returns ``(values (r, k), ids (r, k), lse (r,))``."""
    if len(parts) == 1:
        values, ids, lse = parts[0]
        return values[:, :k], ids[:, :k], lse
    values = torch.cat([p[0] for p in parts], dim=1)
    ids = torch.cat([p[1] for p in parts], dim=1)
    # a stable sort keeps equal values in concatenation order, which is ascending id order
    values, order = torch.sort(values, dim=1, descending=True, stable=True)
    lse = parts[0][2]
    for p in parts[1:]:
        lse = torch.logaddexp(lse, p[2])
    return values[:, :k], ids.gather(1, order[:, :k]), lse


def _topk_impl(hidden: Tensor, multi_weight: Tensor, mono_features: Tensor, mono_weight: Tensor,
               multi_bias: Optional[Tensor], mono_bias: Optional[Tensor], k: int, temperature: float,
               backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    whole = backends.whole_op(FAMILY, "topk", backend)
    if whole is not None:
        return whole(hidden, multi_weight, mono_features, mono_weight, k, temperature, multi_bias, mono_bias)
    topk = backends.kernel("collab", "topk", backend)
    n, device = hidden.shape[0], hidden.device
    blocks = [LinearBlock(hidden, multi_weight, multi_bias, needs_grad=False),
              LinearBlock(mono_features, mono_weight, mono_bias, needs_grad=False)]
    vocab = sum(b.vocab for b in blocks)
    probs = torch.empty(n, k, dtype=torch.float32, device=device)
    ids = torch.empty(n, k, dtype=torch.int64, device=device)
    lse = torch.empty(n, dtype=torch.float32, device=device)
    for rows in row_chunks(n, chunk_plan(n, vocab, device.type)):
        r = rows.stop - rows.start
        ones = torch.ones(r, 1, dtype=torch.float32, device=device)
        tau = torch.full((r,), temperature, dtype=torch.float32, device=device)
        parts, offset = [], 0
        for block in blocks:
            if block.vocab:
                z = torch.empty(r, block.vocab, dtype=torch.float32, device=device)
                block.write_logits(rows, z)
                values, block_ids, block_lse = topk([z], ones, tau, block.vocab, min(k, block.vocab))
                del z
                parts.append((values, block_ids + offset, block_lse))
            offset += block.vocab
        values, ids[rows], lse[rows] = merge_topk(parts, k)
        probs[rows] = torch.exp(values - lse[rows].unsqueeze(1))
    return probs, ids, lse


_topk_op = torch.library.custom_op(
    "mtkernels::mumo_head_topk", _topk_impl, mutates_args=(),
    schema="(Tensor hidden, Tensor multi_weight, Tensor mono_features, Tensor mono_weight, Tensor? multi_bias, "
           "Tensor? mono_bias, int k, float temperature, str backend) -> (Tensor, Tensor, Tensor)")


@_topk_op.register_fake
def _(hidden, multi_weight, mono_features, mono_weight, multi_bias, mono_bias, k, temperature, backend):
    n = hidden.shape[0]
    new = hidden.new_empty
    return new((n, k), dtype=torch.float32), new((n, k), dtype=torch.int64), new((n,), dtype=torch.float32)


def mumo_head_topk(hidden: Tensor, multi_weight: Tensor, mono_features: Tensor, mono_weight: Tensor, *, k: int = 10,
                   temperature: float = 1.0, multi_bias: Optional[Tensor] = None, mono_bias: Optional[Tensor] = None,
                   backend: str = "auto") -> Tuple[Tensor, Tensor, Tensor]:
    """The k most probable outputs of the MuMo head, ``softmax([h·W_multiᵀ ; f·W_monoᵀ] / T)``,
    without concatenating the two logit vectors (or forming the softmax).

    Args:
        hidden: ``(N, H)`` base hidden states; multi_weight ``(V_multi, H)`` the base head, V_multi >= 1;
            multi_bias ``(V_multi,)`` or None.
        mono_features: ``(N, d_mono)`` the monolingual features (the FFN output); mono_weight
            ``(V_mono, d_mono)``, V_mono >= 0; mono_bias ``(V_mono,)`` or None. Float32, bfloat16 or
            float16 (each GEMM runs in its weight's dtype), all on one device.
        k: ``1 <= k <= min(V_multi + V_mono, 1024)``.
        temperature: T > 0 (a Python float).

    Returns:
        ``(probs (N, k) float32, ids (N, k) int64, lse (N,) float32)``: probabilities under the full
        softmax, descending, equal probabilities lowest id first; ids ``< V_multi`` are base tokens,
        ``V_multi + j`` is monolingual word j; ``lse`` the log-sum-exp of the scaled logits. A row
        whose logits are all ``-inf`` gets NaN probabilities and ``lse = -inf``. Not differentiable.
    """
    vocab = args.check_head(hidden, multi_weight, mono_features, mono_weight, multi_bias, mono_bias)
    k = args.check_k(k, vocab)
    temperature = args.check_temperature(temperature)
    name = backends.resolve_backend(backend, hidden.device, FAMILY)
    detach = lambda t: None if t is None else t.detach()  # noqa: E731  (top-k has no gradient)
    return tuple(_topk_op(hidden.detach(), multi_weight.detach(), mono_features.detach(), mono_weight.detach(),
                          detach(multi_bias), detach(mono_bias), k, temperature, name))


# --- cross-entropy ---------------------------------------------------------------------------------

def row_scale(targets: Tensor, ignore_index: int, reduction: str, num_items: Optional[Tensor]) -> Tensor:
    """Per-row weight of the reduction: 1 (sum) or 1 / denominator (mean); a denominator of 0 (no
    valid row, or ``num_items_in_batch = 0``) gives weight 0: loss 0 and zero gradients."""
    ones = torch.ones(targets.shape[0], dtype=torch.float32, device=targets.device)
    if reduction == "sum":
        return ones
    denominator = ((targets != ignore_index).sum() if num_items is None else num_items).to(torch.float32)
    return ones * torch.where(denominator > 0, 1 / denominator, torch.zeros_like(denominator))


def _source(hidden, multi_weight, multi_bias, mono_features, mono_weight, mono_bias) -> LinearLogits:
    return LinearLogits([LinearBlock(hidden, multi_weight, multi_bias, needs_grad=False),
                         LinearBlock(mono_features, mono_weight, mono_bias, needs_grad=True)])


def fused_ce_pass(source: LinearLogits, targets: Tensor, ignore_index: int, chunk: int,
                  grad_scale: Optional[Tensor], backend: str):
    """One pass over the row chunks: ``(loss_rows (N,) f32, grads)``, grads None without
    ``grad_scale``, else the monolingual block's gradients of ``Σ_i grad_scale_i · loss_i``."""
    rows_kernel = backends.kernel(FAMILY, "ce_rows", backend)
    n = targets.shape[0]
    loss = torch.empty(n, dtype=torch.float32, device=targets.device)
    want_grad = grad_scale is not None
    scale = grad_scale if want_grad else torch.zeros(n, dtype=torch.float32, device=targets.device)

    def row_kernel(rows, s, _teacher):
        loss[rows] = rows_kernel(s, targets[rows], scale[rows], ignore_index, want_grad)

    grads = chunked_pass(source, None, n, chunk, row_kernel, want_grad)
    return loss, None if grads is None else grads[1]


def _empty_f32(like: Tensor) -> Tensor:  # outputs must not alias each other: a fresh one each time
    return like.new_empty(0, dtype=torch.float32)


_HEAD = ("Tensor hidden, Tensor multi_weight, Tensor? multi_bias, Tensor mono_features, Tensor mono_weight, "
         "Tensor? mono_bias, Tensor targets")
_CE_SCHEMA = (f"({_HEAD}, Tensor? num_items, int ignore_index, str reduction, int chunk, str backend, "
              f"bool need_grad) -> (Tensor, Tensor, Tensor, Tensor)")
_CE_BACKWARD_SCHEMA = f"(Tensor grad_rows, {_HEAD}, int ignore_index, int chunk, str backend) -> (Tensor, Tensor, Tensor)"
NUM_CE_INPUTS = 13


def _ce_impl(hidden, multi_weight, multi_bias, mono_features, mono_weight, mono_bias, targets, num_items,
             ignore_index, reduction, chunk, backend, need_grad):
    """``mtkernels::mumo_head_cross_entropy``: ``(loss, grad_mono_features, grad_mono_weight fp32,
    grad_mono_bias fp32)``, the gradients of the returned loss (empty for ``none``, without
    ``need_grad``, and the bias's without a bias)."""
    scale = row_scale(targets, ignore_index, reduction, num_items)
    want_grad = need_grad and reduction != "none"
    rows, g = fused_ce_pass(_source(hidden, multi_weight, multi_bias, mono_features, mono_weight, mono_bias), targets,
                            ignore_index, chunk, scale if want_grad else None, backend)
    loss = rows if reduction == "none" else (rows * scale).sum()
    if g is None:
        return loss, mono_features.new_empty(0), _empty_f32(mono_features), _empty_f32(mono_features)
    return loss, g.x, g.weight, _empty_f32(mono_features) if g.bias is None else g.bias


_ce_op = torch.library.custom_op("mtkernels::mumo_head_cross_entropy", _ce_impl, mutates_args=(), schema=_CE_SCHEMA)


@_ce_op.register_fake
def _(hidden, multi_weight, multi_bias, mono_features, mono_weight, mono_bias, targets, num_items, ignore_index,
      reduction, chunk, backend, need_grad):
    n = targets.shape[0]
    new = mono_features.new_empty
    none = reduction == "none"
    grads = need_grad and not none
    return (new((n,) if none else (), dtype=torch.float32), new(mono_features.shape if grads else (0,)),
            new(mono_weight.shape if grads else (0,), dtype=torch.float32),
            new(mono_bias.shape if grads and mono_bias is not None else (0,), dtype=torch.float32))


def _ce_backward_impl(grad_rows, hidden, multi_weight, multi_bias, mono_features, mono_weight, mono_bias, targets,
                      ignore_index, chunk, backend):
    """``mtkernels::mumo_head_cross_entropy_backward``: the gradients of ``Σ_i grad_rows_i · loss_i``
    (reduction ``none``): ``(grad_mono_features, grad_mono_weight fp32, grad_mono_bias fp32)``."""
    _, g = fused_ce_pass(_source(hidden, multi_weight, multi_bias, mono_features, mono_weight, mono_bias), targets,
                         ignore_index, chunk, grad_rows.float().contiguous(), backend)
    return g.x, g.weight, _empty_f32(mono_features) if g.bias is None else g.bias


_ce_backward_op = torch.library.custom_op("mtkernels::mumo_head_cross_entropy_backward", _ce_backward_impl,
                                          mutates_args=(), schema=_CE_BACKWARD_SCHEMA)


@_ce_backward_op.register_fake
def _(grad_rows, hidden, multi_weight, multi_bias, mono_features, mono_weight, mono_bias, *rest):
    return (mono_features.new_empty(mono_features.shape),
            mono_weight.new_empty(mono_weight.shape, dtype=torch.float32),
            mono_features.new_empty(mono_bias.shape if mono_bias is not None else (0,), dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    (hidden, multi_weight, multi_bias, mono_features, mono_weight, mono_bias, targets, _num_items, ignore_index,
     reduction, chunk, backend, _need_grad) = inputs
    ctx.reduction, ctx.ignore_index, ctx.chunk, ctx.backend = reduction, ignore_index, chunk, backend
    ctx.has_bias = mono_bias is not None
    ctx.weight_dtype = mono_weight.dtype
    _, grad_f, grad_w, grad_b = output
    loss_only_differentiable(ctx, grad_f, grad_w, grad_b)
    if reduction == "none":  # the row weights arrive in backward: a second pass then
        ctx.save_for_backward(hidden, multi_weight, multi_bias, mono_features, mono_weight, mono_bias, targets)
    else:
        ctx.save_for_backward(grad_f, grad_w, grad_b)


def _backward(ctx, grad_loss, _gf, _gw, _gb):
    if grad_loss is None:
        return (None,) * NUM_CE_INPUTS
    if ctx.reduction == "none":
        grad_f, grad_w, grad_b = _ce_backward_op(grad_loss, *ctx.saved_tensors, ctx.ignore_index, ctx.chunk,
                                                 ctx.backend)
    else:
        refuse_second_backward(ctx, WHAT)
        grad_f, grad_w, grad_b = scaled_in_place(ctx.saved_tensors, grad_loss)
    grad_b = grad_b.to(ctx.weight_dtype) if ctx.has_bias else None
    # hidden, multi_weight, multi_bias are constants of this loss
    return (None, None, None, grad_f, grad_w.to(ctx.weight_dtype), grad_b) + (None,) * (NUM_CE_INPUTS - 6)


torch.library.register_autograd("mtkernels::mumo_head_cross_entropy", _backward, setup_context=_setup_context)


def mumo_head_cross_entropy(hidden: Tensor, multi_weight: Tensor, mono_features: Tensor, mono_weight: Tensor,
                            targets: Tensor, *, multi_bias: Optional[Tensor] = None,
                            mono_bias: Optional[Tensor] = None, ignore_index: int = -100, reduction: str = "mean",
                            num_items_in_batch=None, backend: str = "auto") -> Tensor:
    """Cross-entropy of the MuMo head over the concatenated vocabulary, fused: per valid row
    ``lse(z) − z[target]`` with ``z = [h·W_multiᵀ + b_multi ; f·W_monoᵀ + b_mono]``, never forming
    ``(N, V_multi + V_mono)`` (row chunks of float32 logits, gradients in the same pass).

    Gradients flow to ``mono_features``, ``mono_weight`` and ``mono_bias`` only: ``hidden``,
    ``multi_weight`` and ``multi_bias`` (the frozen base model) are constants of this loss even when
    they require grad.

    Args:
        hidden: ``(N, H)``; multi_weight ``(V_multi, H)``, V_multi >= 1; multi_bias ``(V_multi,)``.
        mono_features: ``(N, d_mono)``; mono_weight ``(V_mono, d_mono)``, V_mono >= 0; mono_bias
            ``(V_mono,)``. Float32 / bfloat16 / float16 (each GEMM runs in its weight's dtype; the
            gradients come back in their tensors' dtypes), all on one device.
        targets: ``(N,)`` int64 in ``[0, V_multi + V_mono)`` (``V_multi + j`` is monolingual word j)
            or ``ignore_index``.
        reduction: ``mean`` (over valid rows, or over ``num_items_in_batch`` when given), ``sum``, or
            ``none`` (``(N,)``, 0 on ignored rows). A mean over no valid row is 0.
        num_items_in_batch: a non-negative whole count (int or one-element tensor), for gradient
            accumulation as in Hugging Face's Trainer.

    Returns:
        the loss, ``()`` float32 (``(N,)`` for ``none``).
    """
    vocab = args.check_head(hidden, multi_weight, mono_features, mono_weight, multi_bias, mono_bias)
    ignore_index = args.check_targets(targets, hidden.shape[0], vocab, ignore_index, hidden.device)
    reduction = args.check_reduction(reduction)
    num_items = num_items_tensor(num_items_in_batch, hidden.device)
    targets = targets.contiguous()
    name = backends.resolve_backend(backend, hidden.device, FAMILY)
    hidden, multi_weight = hidden.detach(), multi_weight.detach()
    multi_bias = None if multi_bias is None else multi_bias.detach()
    whole = backends.whole_op(FAMILY, "cross_entropy", name)
    if whole is not None:
        return whole(hidden, multi_weight, mono_features, mono_weight, targets, multi_bias, mono_bias, ignore_index,
                     reduction, num_items)
    n = targets.shape[0]
    chunk = chunk_plan(n, vocab, hidden.device.type)
    need_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (mono_features, mono_weight, mono_bias))
    loss, *_ = _ce_op(hidden, multi_weight, multi_bias, mono_features, mono_weight, mono_bias, targets, num_items,
                      ignore_index, reduction, chunk, name, need_grad)
    return loss
