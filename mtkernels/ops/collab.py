"""Collaborative decoding (SPEC §1): the public ops and their torch.library registration.

``z_b = (Σ_m w_bm · x_m[b, :V]) / τ_b``, ``p_b = softmax(z_b)``, then top-k → top-p → min-p and a
token. The torch ops (namespace ``mtkernels``) take normalised tensors and a concrete backend
name; the Python functions below check arguments, pick the backend and call them, so
``torch.compile(fullgraph=True)`` sees one opaque op per call.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Tuple, Union

import torch

from .. import backends
from ..gumbel import row_keys
from . import collab_args as args
from .collab_sampling import sample_candidates, sample_full_vocab

Tensor = torch.Tensor
FAMILY = "collab"


class CollabSoftmaxOutput(NamedTuple):
    """``probs (B, k)`` fp32 under the full softmax, descending; ``ids (B, k)`` int64; ``lse (B,)`` fp32."""

    probs: Tensor
    ids: Tensor
    lse: Tensor


def _kernels(backend: str) -> dict:
    names = ("topk", "logits", "threshold_mass", "gumbel_argmax")
    return {name: backends.kernel(FAMILY, name, backend) for name in names}


def _invalid_rows(lse: Tensor) -> Optional[Tensor]:
    """Rows whose z has a NaN or +inf, or is -inf everywhere, have no distribution.

    On CPU tensors that raises (a look at (B,) values, no extra pass) and returns None. On a GPU,
    where a check would cost a host sync, it returns the (B,) mask of such rows, whose outputs the
    caller marks instead: lse = NaN (and id -1 when sampling).
    """
    if lse.device.type != "cpu" or torch.compiler.is_compiling():
        return ~torch.isfinite(lse)
    if not math.isfinite(sum(lse.tolist())):
        rows = (~torch.isfinite(lse)).nonzero().flatten().tolist()
        raise ValueError(f"logits: rows {rows[:10]}{'...' if len(rows) > 10 else ''} have no valid distribution "
                         f"(NaN or +inf in the combined logits, or every token masked with -inf)")
    return None


# --- torch ops ------------------------------------------------------------------------------------

def _spec_kernel(name: str, backend: str):
    """A backend's whole-op kernel (the reference's spec functions), or None: then the op is
    composed from the backend's collab primitives."""
    try:
        return backends.kernel(FAMILY, name, backend)
    except NotImplementedError:
        return None


def _scaled_weights(weights: Tensor, temperature: Tensor) -> Tensor:
    """``(B, M)`` weights / temperature: what the primitives take."""
    return weights / temperature.unsqueeze(1)


def _call(op, impl, *args):
    """The torch op under torch.compile; in eager mode its implementation directly, which skips
    the dispatcher's per-call overhead (tens of microseconds, as much as a B = 1 kernel)."""
    return op(*args) if torch.compiler.is_compiling() else impl(*args)


def _softmax_topk_impl(logits: List[Tensor], weights: Tensor, temperature: Tensor, vocab_size: int, k: int,
                     backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    spec = _spec_kernel("spec_softmax", backend)
    if spec is not None:
        probs, ids, lse = spec(logits, weights, temperature, vocab_size, k)
    else:
        values, ids, lse = backends.kernel(FAMILY, "topk", backend)(logits, _scaled_weights(weights, temperature),
                                                                    vocab_size, k)
        probs = torch.exp(values - lse.unsqueeze(1))
    bad = _invalid_rows(lse)
    return (probs, ids, lse) if bad is None else (probs, ids, lse.masked_fill(bad, float("nan")))


_softmax_topk_op = torch.library.custom_op("mtkernels::collab_softmax_topk", _softmax_topk_impl, mutates_args=())


@_softmax_topk_op.register_fake
def _(logits, weights, temperature, vocab_size, k, backend):
    b = logits[0].shape[0]
    new = logits[0].new_empty
    return new((b, k), dtype=torch.float32), new((b, k), dtype=torch.int64), new((b,), dtype=torch.float32)


def _sample_impl(logits: List[Tensor], weights: Tensor, temperature: Tensor, vocab_size: int, top_k: Optional[Tensor],
               max_top_k: int, top_p: Optional[Tensor], min_p: Optional[Tensor], greedy: bool, keys: Tensor,
               need_logprobs: bool, backend: str) -> Tuple[Tensor, Tensor]:
    # top_k / top_p / min_p None: that filter is off for every row (saves work on every path).
    spec = _spec_kernel("spec_sample", backend)
    if spec is not None:
        off = torch.zeros_like(temperature)
        ids, logprobs = spec(logits, weights, temperature, vocab_size,
                             (off + max_top_k).long() if top_k is None else top_k, off + 1 if top_p is None else top_p,
                             off if min_p is None else min_p, greedy, keys)
        lse = torch.logsumexp(backends.kernel(FAMILY, "spec_logits", backend)(logits, weights, temperature,
                                                                              vocab_size), dim=1)
    else:
        kernels = _kernels(backend)
        sw = _scaled_weights(weights, temperature)
        if max_top_k > 0:
            values, candidates, lse = kernels["topk"](logits, sw, vocab_size, max_top_k)
            ids, logprobs = sample_candidates(values, candidates, top_k, top_p, min_p, greedy, keys)
        else:
            ids, logprobs, lse = sample_full_vocab(kernels, logits, sw, vocab_size, top_p, min_p, greedy, keys,
                                                   need_logprobs)
    bad = _invalid_rows(lse)
    return (ids, logprobs) if bad is None else (ids.masked_fill(bad, -1), logprobs.masked_fill(bad, float("nan")))


_sample_op = torch.library.custom_op("mtkernels::collab_sample", _sample_impl, mutates_args=())


@_sample_op.register_fake
def _(logits, weights, temperature, vocab_size, top_k, max_top_k, top_p, min_p, greedy, keys, need_logprobs, backend):
    b = logits[0].shape[0]
    return logits[0].new_empty((b,), dtype=torch.int64), logits[0].new_empty((b,), dtype=torch.float32)


def _logits_impl(logits: List[Tensor], weights: Tensor, temperature: Tensor, vocab_size: int, backend: str) -> Tensor:
    spec = _spec_kernel("spec_logits", backend)
    if spec is not None:
        return spec(logits, weights, temperature, vocab_size).float()
    return backends.kernel(FAMILY, "logits", backend)(logits, _scaled_weights(weights, temperature), vocab_size)


_logits_op = torch.library.custom_op("mtkernels::collab_logits", _logits_impl, mutates_args=())


@_logits_op.register_fake
def _(logits, weights, temperature, vocab_size, backend):
    return logits[0].new_empty((logits[0].shape[0], vocab_size), dtype=torch.float32)


# --- public API -----------------------------------------------------------------------------------

LogitsArg = Union[Tensor, List[Tensor], Tuple[Tensor, ...]]


def fused_collab_softmax(logits: LogitsArg, weights=None, *, top_k: Union[int, Tensor], temperature=1.0,
                         vocab_size: Optional[int] = None, backend: str = "auto") -> CollabSoftmaxOutput:
    """The ``top_k`` most probable tokens of ``softmax(Σ_m w_m·logits_m / τ)``, in one pass.

    Args:
        logits: M tensors ``(B, V_m)`` (fp32/bf16/fp16, may differ per model) or one ``(M, B, V)``.
        weights: M floats, ``(M,)`` or ``(B, M)``; default all 1. Negative weights are allowed.
        top_k: int in ``[1, V]`` (or a ``(B,)`` tensor; the output width is its max).
        temperature: float > 0 or ``(B,)``.
        vocab_size: shared vocabulary ``V`` (default ``min_m V_m``); columns past it are ignored.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``CollabSoftmaxOutput(probs (B, k) fp32, ids (B, k) int64, lse (B,) fp32)``: probabilities
        under the full softmax (not renormalised), descending, equal values lowest id first;
        ``log p[i] = z[i] - lse``. A token that is ``-inf`` in any model is masked.
    """
    inp = args.collab_inputs(logits, weights, temperature, vocab_size)
    _, k = args.top_k_arg(top_k, inp.batch, inp.vocab_size, inp.device, allow_zero=False)
    name = backends.resolve_backend(backend, inp.device, FAMILY)
    probs, ids, lse = _call(_softmax_topk_op, _softmax_topk_impl, inp.logits, inp.weights, inp.temperature,
                                                              inp.vocab_size, k, name)
    return CollabSoftmaxOutput(probs, ids, lse)


def fused_collab_sample(logits: LogitsArg, weights=None, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                        greedy: bool = False, generator: Optional[torch.Generator] = None,
                        return_logprobs: bool = False, vocab_size: Optional[int] = None, backend: str = "auto"):
    """Draw one token per row from ``softmax(Σ_m w_m·logits_m / τ)`` after top-k → top-p → min-p.

    Args:
        logits, weights, temperature, vocab_size, backend: as in :func:`fused_collab_softmax`.
        top_k: int in ``[0, V]`` (0 = off) or a ``(B,)`` int tensor with values in ``[1, V]``.
        top_p: float in ``(0, 1]`` (1 = off) or ``(B,)``.
        min_p: float in ``[0, 1)`` (0 = off) or ``(B,)``.
        greedy: take ``argmax z`` (lowest id on ties) instead of sampling.
        generator: the source of the per-row random keys; the same seed gives the same tokens.
            A CPU generator works with GPU logits too (one small copy of the keys).
        return_logprobs: also return each token's log-probability under the filtered,
            renormalised distribution.

    Returns:
        ``ids (B,)`` int64, or ``(ids (B,), logprobs (B,) fp32)``.

    With top-k on, filtering and the draw work on the k candidates of one fused pass. With top-k
    off, min-p costs nothing extra, top-p is exact at the price of up to 8 more passes over the
    inputs, the draw one more, and log-probabilities one more.
    """
    inp = args.collab_inputs(logits, weights, temperature, vocab_size)
    b, device = inp.batch, inp.device
    if not isinstance(greedy, bool):
        raise TypeError(f"greedy: expected a bool, got {type(greedy).__name__}")
    args.check_generator(generator, device)
    rows_k, max_k = args.top_k_arg(top_k, b, inp.vocab_size, device, allow_zero=True)
    p = None if args.is_off(top_p, 1.0) else args.per_row(
        top_p, "top_p", b, device, torch.float32, lambda t: (t > 0) & (t <= 1), "in (0, 1]")
    mp = None if args.is_off(min_p, 0.0) else args.per_row(
        min_p, "min_p", b, device, torch.float32, lambda t: (t >= 0) & (t < 1), "in [0, 1)")
    name = backends.resolve_backend(backend, device, FAMILY)
    keys = row_keys(b, device, generator)
    per_row_k = rows_k if isinstance(top_k, torch.Tensor) else None  # a scalar k is the candidate width
    ids, logprobs = _call(_sample_op, _sample_impl, inp.logits, inp.weights, inp.temperature, inp.vocab_size,
                          per_row_k, max_k, p, mp, greedy, keys, return_logprobs, name)
    return (ids, logprobs) if return_logprobs else ids


def collab_logits(logits: LogitsArg, weights=None, *, temperature=1.0, vocab_size: Optional[int] = None,
                  backend: str = "auto") -> Tensor:
    """The combined logits ``z = Σ_m w_m·logits_m[:, :V] / τ`` as ``(B, V)`` float32, in one pass
    (for callers that need them whole, e.g. beam search). ``-inf`` in any model stays ``-inf``."""
    inp = args.collab_inputs(logits, weights, temperature, vocab_size)
    name = backends.resolve_backend(backend, inp.device, FAMILY)
    return _call(_logits_op, _logits_impl, inp.logits, inp.weights, inp.temperature, inp.vocab_size, name)
