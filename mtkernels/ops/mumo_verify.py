"""MuMo verification scores (docs/mumo_verify.md): the public ops and their torch.library registration.

``σ[b, c]`` is the mean, over the first ``lengths[b, c]`` positions, of the base model's
log-probability of candidate c's tokens. Fused backends compose it from two primitives of the
``mumo`` family:

- ``lse_pick(logits (R, V), rows (n,) | None, ids (n,) | None) -> (lse (n,), picked (n,))``:
  for each selected row ``rows[i]`` (all rows when None) one streaming pass giving the float32
  log-sum-exp and the logit of ``ids[i]`` (``picked`` empty when ``ids`` is None);
- ``linear_lse(hidden (n, H), weight (V, H), bias (V,) | None) -> lse (n,)``: the log-sum-exp of
  ``hidden @ weight.T + bias`` by vocabulary tiles, never holding ``(n, V)``.

Padding positions are never computed. In the trie form each referenced node's log-sum-exp is
computed once. The scores are not differentiable (verification runs under inference).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import backends
from ..reference.mumo_verify import position_mask
from . import mumo_verify_args as args

Tensor = torch.Tensor
FAMILY = "mumo_verify"
PICK_ROWS = 64  # positions per chunk of the indexed dots (peak extra memory about 2 x chunk x H floats)


def _active(lengths: Tensor, max_len: int) -> Tensor:
    """Flat indices ``(n,)`` into ``(B * K * L)`` of the positions inside their candidate's length."""
    return position_mask(lengths, max_len).flatten().nonzero().squeeze(1)


def _mean_per_candidate(rows: Tensor, terms: Tensor, lengths: Tensor, shape) -> Tensor:
    """``(B, K)`` float32: per candidate, the sum of its positions' ``terms`` over its length (in float64)."""
    total = torch.zeros(shape[0] * shape[1] * shape[2], dtype=torch.float64, device=terms.device)
    total.index_put_((rows,), terms.double())
    return (total.view(shape).sum(-1) / lengths.double()).float()


def _picked_logits(hidden2d: Tensor, nodes: Tensor, weight: Tensor, bias: Optional[Tensor], ids: Tensor) -> Tensor:
    """``(n,)`` float32 target logits ``hidden2d[nodes[i]] · weight[ids[i]] (+ bias[ids[i]])``, in float32
    and rounded once to the weight's dtype as the GEMM's output is, a chunk of positions at a time."""
    out = torch.empty(ids.shape[0], dtype=torch.float32, device=ids.device)
    for s in range(0, ids.shape[0], PICK_ROWS):
        e = min(ids.shape[0], s + PICK_ROWS)
        h = hidden2d[nodes[s:e]].to(weight.dtype).float()
        dot = torch.einsum("ph,ph->p", h, weight[ids[s:e]].float())
        if bias is not None:
            dot = dot + bias[ids[s:e]].to(weight.dtype).float()
        out[s:e] = dot.to(weight.dtype).float()
    return out


# --- torch ops ------------------------------------------------------------------------------------

def _scores_impl(logits: Tensor, candidate_ids: Tensor, lengths: Tensor, backend: str) -> Tensor:
    args.check_values(candidate_ids, lengths, logits.shape[-1])
    whole = backends.whole_op(FAMILY, "verify_scores", backend)
    if whole is not None:
        return whole(logits, candidate_ids, lengths)
    b, k, max_len, vocab = logits.shape
    rows = _active(lengths, max_len)
    ids = candidate_ids.reshape(-1)[rows]
    flat = logits.reshape(-1, vocab)  # a view unless the leading dimensions cannot be merged
    if flat.stride(1) != 1:
        flat = flat.contiguous()
    lse, picked = backends.kernel(FAMILY, "lse_pick", backend)(flat, rows, ids)
    return _mean_per_candidate(rows, picked - lse, lengths, (b, k, max_len))


_scores_op = torch.library.custom_op("mtkernels::mumo_verify_scores", _scores_impl, mutates_args=())


@_scores_op.register_fake
def _(logits, candidate_ids, lengths, backend):
    return logits.new_empty(lengths.shape, dtype=torch.float32)


def _fused_impl(hidden: Tensor, weight: Tensor, candidate_ids: Tensor, lengths: Tensor, bias: Optional[Tensor],
                node_index: Optional[Tensor], backend: str) -> Tensor:
    args.check_values(candidate_ids, lengths, weight.shape[0], node_index,
                      hidden.shape[1] if node_index is not None else 0)
    whole = backends.whole_op(FAMILY, "verify_scores_fused", backend)
    if whole is not None:
        return whole(hidden, weight, candidate_ids, lengths, bias, node_index)
    b, k, max_len = candidate_ids.shape
    rows = _active(lengths, max_len)
    ids = candidate_ids.reshape(-1)[rows]
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    if node_index is None:  # one node per position
        nodes, unique, inverse = rows, rows, torch.arange(rows.shape[0], device=rows.device)
    else:  # the flat node (b, node_index[b, c, j]) of each active position, each distinct one once
        base = torch.arange(b, device=hidden.device).view(b, 1, 1) * hidden.shape[1]
        nodes = (base + node_index.long()).reshape(-1)[rows]
        unique, inverse = torch.unique(nodes, return_inverse=True)
    w = weight if weight.stride(1) == 1 else weight.contiguous()
    linear_lse = backends.kernel(FAMILY, "linear_lse", backend)
    if unique.shape[0] == hidden2d.shape[0]:  # every row is needed: the GEMM reads hidden in place
        lse = linear_lse(hidden2d, w, bias)[nodes]
    else:  # a copy of the needed rows only
        lse = linear_lse(hidden2d[unique], w, bias)[inverse]
    picked = _picked_logits(hidden2d, nodes, w, bias, ids)
    return _mean_per_candidate(rows, picked - lse, lengths, (b, k, max_len))


_fused_op = torch.library.custom_op("mtkernels::mumo_verify_scores_fused", _fused_impl, mutates_args=())


@_fused_op.register_fake
def _(hidden, weight, candidate_ids, lengths, bias, node_index, backend):
    return hidden.new_empty(lengths.shape, dtype=torch.float32)


# --- public functions -----------------------------------------------------------------------------

def mumo_verify_scores(logits: Tensor, candidate_ids: Tensor, lengths: Tensor, *, backend: str = "auto") -> Tensor:
    """MuMo's length-normalised verification score of K candidates per row (SPEC eq. 5).

    Args:
        logits: ``(B, K, L, V)`` float32 / bfloat16 / float16; ``logits[b, c, j]`` are the base
            model's logits at the position that predicts ``candidate_ids[b, c, j]``.
        candidate_ids: ``(B, K, L)`` integer, every value in ``[0, V)`` (padding past a candidate's
            length may be any such id; it is not read).
        lengths: ``(B, K)`` integer in ``[1, L]``.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``(B, K)`` float32: ``σ[b, c] = mean_{j < lengths[b, c]} log_softmax(logits[b, c, j])[ids[b, c, j]]``,
        each log-sum-exp in float32 from one streaming read of its row; no ``(B, K, L, V)``
        temporary. Inputs are not modified; not differentiable.
    """
    args.check_logits(logits)
    b, k, max_len, _ = logits.shape
    args.check_candidates(candidate_ids, lengths, b, k, max_len, logits.device, "logits")
    name = backends.resolve_backend(backend, logits.device, FAMILY)
    return torch.ops.mtkernels.mumo_verify_scores(logits, candidate_ids.long(), lengths.long(), name)


def mumo_verify_scores_fused(hidden: Tensor, weight: Tensor, candidate_ids: Tensor, lengths: Tensor, *,
                             bias: Optional[Tensor] = None, node_index: Optional[Tensor] = None,
                             backend: str = "auto") -> Tensor:
    """:func:`mumo_verify_scores` from hidden states and the base head, never forming the logits.

    Args:
        hidden: ``(B, K, L, H)``: the hidden state that predicts ``candidate_ids[b, c, j]``; or, in
            the trie form (``node_index`` given), ``(B, nodes, H)``, one row per trie node.
        weight: ``(V, H)`` base head; the logits are ``hidden @ weight.T + bias`` computed in the
            weight's dtype (float32 / bfloat16 / float16).
        candidate_ids: ``(B, K, L)`` integer in ``[0, V)``.
        lengths: ``(B, K)`` integer in ``[1, L]``.
        bias: ``(V,)`` or None.
        node_index: ``(B, K, L)`` integer in ``[0, nodes)`` or None: position j of candidate c reads
            node ``node_index[b, c, j]``; each referenced node's log-sum-exp is computed once.
        backend: as in :func:`mumo_verify_scores`.

    Returns:
        ``(B, K)`` float32 scores. Peak extra memory is O(referenced rows x H + one vocabulary
        tile); padding positions and unreferenced nodes cost nothing. Not differentiable.
    """
    b, k, max_len, h, _ = args.check_fused(hidden, weight, bias, node_index, candidate_ids, lengths)
    name = backends.resolve_backend(backend, hidden.device, FAMILY)
    index = None if node_index is None else node_index.long()
    return torch.ops.mtkernels.mumo_verify_scores_fused(hidden, weight, candidate_ids.long(), lengths.long(), bias,
                                                        index, name)
