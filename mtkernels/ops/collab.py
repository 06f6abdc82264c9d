"""Collaborative decoding (docs/collab.md): the public ops and their torch.library registration.

``z_b = (Σ_m w_bm · x_m[b, :V]) / τ_b``, ``p_b = softmax(z_b)``, then top-k → top-p → min-p and a
token. The torch ops (namespace ``mtkernels``) take normalised tensors and a concrete backend
name; the Python functions below check arguments, pick the backend and call them, so
``torch.compile(fullgraph=True)`` sees one opaque op per call.
"""

from __future__ import annotations

import functools
import math
from typing import List, NamedTuple, Optional, Tuple, Union

import torch

from .. import backends
from ..gumbel import row_keys
from . import collab_args as args
from .collab_sampling import sample_candidates, sample_full_vocab

Tensor = torch.Tensor
FAMILY = "collab"
SAMPLE_ROWS = {"cpu": 1024}  # rows per sampling chunk, by device type
SAMPLE_ROWS_GPU = 65536  # on a GPU each chunk costs its own launches: fewer, larger chunks


class CollabSoftmaxOutput(NamedTuple):
    """``probs (B, k)`` fp32 under the full softmax, descending; ``ids (B, k)`` int64; ``lse (B,)`` fp32."""

    probs: Tensor
    ids: Tensor
    lse: Tensor


def _kernels(backend: str) -> dict:
    names = ("topk", "logits", "threshold_mass", "gumbel_argmax")
    return {name: backends.kernel(FAMILY, name, backend) for name in names}


_NO_DISTRIBUTION = ("have no valid distribution (NaN or +inf in the combined logits, or every token masked with "
                    "-inf; with finite logits, a temperature too small or weights too large make z overflow float32)")


def _invalid_rows(lse: Tensor) -> Optional[Tensor]:
    """Rows whose z has a NaN or +inf, or is -inf everywhere, have no distribution.

    On CPU tensors that raises (a look at (B,) values, no extra pass) and returns None. On a GPU,
    where a check would cost a host sync, it returns the (B,) mask of such rows, whose outputs the
    caller marks instead: lse = NaN (and id -1 when sampling).
    """
    if lse.device.type != "cpu":
        return ~torch.isfinite(lse)
    finite = all(map(math.isfinite, lse.tolist())) if lse.numel() <= 256 else bool(torch.isfinite(lse).all())
    if not finite:
        rows = (~torch.isfinite(lse)).nonzero().flatten().tolist()
        raise ValueError(f"logits: rows {rows[:10]}{'...' if len(rows) > 10 else ''} {_NO_DISTRIBUTION}")
    return None


def _either(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    return a if b is None else b if a is None else a | b


def _float32(t: Optional[Tensor]) -> Optional[Tensor]:
    """A parameter tensor as the kernels take it (no dispatch when it already is: B = 1 calls count
    their microseconds)."""
    if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
        return t
    return t.to(torch.float32).contiguous()


# --- torch ops ------------------------------------------------------------------------------------
# Each op body first checks the parameter tensors flagged in `unchecked` (collab_args: raise on CPU,
# invalid rows marked on a GPU), so the checks hold in code compiled by torch.compile as well.

def _call(op, impl, *args):
    """The torch op under torch.compile or when autograd must see it; in eager mode otherwise its
    implementation directly, which skips the dispatcher's per-call overhead (tens of microseconds,
    as much as a B = 1 kernel)."""
    if torch.compiler.is_compiling():
        return op(*args)
    if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad
                                       for arg in args for a in (arg if isinstance(arg, list) else [arg])):
        return op(*args)
    return impl(*args)


def _softmax_topk_impl(logits: List[Tensor], weights: Tensor, temperature: Tensor, vocab_size: int, k: int,
                       top_k: Optional[Tensor], unchecked: int, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    invalid = args.check_in_op(unchecked, weights=weights, temperature=temperature)
    weights, temperature = _float32(weights), _float32(temperature)
    whole = backends.whole_op(FAMILY, "softmax_topk", backend)
    if whole is not None:
        probs, ids, lse = whole(logits, weights, temperature, vocab_size, k)
    else:
        values, ids, lse = backends.kernel(FAMILY, "topk", backend)(logits, weights, temperature, vocab_size, k)
        probs = torch.exp(values - lse.unsqueeze(1))
    if top_k is not None:  # per-row k: entries past a row's own k are id -1, probability 0
        past = torch.arange(k, device=ids.device) >= top_k.unsqueeze(1)
        probs, ids = probs.masked_fill(past, 0.0), ids.masked_fill(past, -1)
    bad = _either(_invalid_rows(lse), invalid)
    if bad is not None:
        if invalid is not None:
            probs = probs.masked_fill(invalid.unsqueeze(1), float("nan"))
            ids = ids.masked_fill(invalid.unsqueeze(1), -1)
        lse = lse.masked_fill(bad, float("nan"))
    return probs.contiguous(), ids.contiguous(), lse.contiguous()  # the layout register_fake promises


_softmax_topk_op = torch.library.custom_op("mtkernels::collab_softmax_topk", _softmax_topk_impl, mutates_args=())


@_softmax_topk_op.register_fake
def _(logits, weights, temperature, vocab_size, k, top_k, unchecked, backend):
    b = logits[0].shape[0]
    new = logits[0].new_empty
    return new((b, k), dtype=torch.float32), new((b, k), dtype=torch.int64), new((b,), dtype=torch.float32)


def _sample_impl(logits: List[Tensor], weights: Tensor, temperature: Tensor, vocab_size: int, top_k: Optional[Tensor],
                 max_top_k: int, top_p: Optional[Tensor], min_p: Optional[Tensor], greedy: bool, keys: Tensor,
                 need_logprobs: bool, unchecked: int, backend: str) -> Tuple[Tensor, Tensor]:
    # top_k / top_p / min_p None: that filter is off for every row (saves work on every path).
    invalid = args.check_in_op(unchecked, weights=weights, temperature=temperature, top_p=top_p, min_p=min_p,
                               keys=keys)
    weights, temperature, top_p, min_p = map(_float32, (weights, temperature, top_p, min_p))
    whole = backends.whole_op(FAMILY, "sample", backend)
    if whole is not None:
        off = torch.zeros_like(temperature)
        ids, logprobs = whole(logits, weights, temperature, vocab_size,
                             (off + max_top_k).long() if top_k is None else top_k, off + 1 if top_p is None else top_p,
                             off if min_p is None else min_p, greedy, keys)
        # z is float32 by the spec: a z that only float64 can hold (an overflow) is no distribution
        z = backends.whole_op(FAMILY, "logits", backend)(logits, weights, temperature, vocab_size)
        lse = torch.logsumexp(z.float(), dim=1)
    else:
        kernels = _kernels(backend)

        def sample_rows(xs, w, tau, top_k, top_p, min_p, keys) -> Tuple[Tensor, Tensor, Tensor]:
            if max_top_k > 0:
                values, candidates, lse = kernels["topk"](xs, w, tau, vocab_size, max_top_k)
                return (*sample_candidates(values, candidates, top_k, top_p, min_p, greedy, keys), lse)
            return sample_full_vocab(kernels, xs, w, tau, vocab_size, top_p, min_p, greedy, keys, need_logprobs)

        # Rows in chunks: the filters' temporaries ((rows, k) candidates, (rows, 15) search points)
        # stay bounded whatever the batch; most batches are one chunk.
        batch = keys.shape[0]
        chunk = SAMPLE_ROWS.get(keys.device.type, SAMPLE_ROWS_GPU)
        if batch <= chunk:
            ids, logprobs, lse = sample_rows(logits, weights, temperature, top_k, top_p, min_p, keys)
        else:  # written in place: results kept per chunk would pin each chunk's freed heap memory
            ids, logprobs, lse = keys.new_empty(batch), temperature.new_empty(batch), temperature.new_empty(batch)
            for lo in range(0, batch, chunk):
                rows = slice(lo, lo + chunk)
                parts = [None if t is None else t[rows] for t in (weights, temperature, top_k, top_p, min_p, keys)]
                for out, part in zip((ids, logprobs, lse), sample_rows([x[rows] for x in logits], *parts)):
                    out[rows] = part
    bad = _either(_invalid_rows(lse), invalid)
    if bad is not None:
        ids, logprobs = ids.masked_fill(bad, -1), logprobs.masked_fill(bad, float("nan"))
    return ids.contiguous(), logprobs.contiguous()  # the layout register_fake promises


_sample_op = torch.library.custom_op("mtkernels::collab_sample", _sample_impl, mutates_args=())


@_sample_op.register_fake
def _(logits, weights, temperature, vocab_size, top_k, max_top_k, top_p, min_p, greedy, keys, need_logprobs,
      unchecked, backend):
    b = logits[0].shape[0]
    return logits[0].new_empty((b,), dtype=torch.int64), logits[0].new_empty((b,), dtype=torch.float32)


def _raise_on_overflow(z: Tensor, logits: List[Tensor], vocab_size: int) -> None:
    """CPU tensors: a z of +-inf where every model's logit is finite is an overflow (the cpu backend
    checks this in its kernel)."""
    inf = torch.isinf(z)
    if not bool(inf.any()):
        return
    finite = functools.reduce(torch.logical_and, [torch.isfinite(x[:, :vocab_size]) for x in logits])
    rows = (inf & finite).any(1).nonzero().flatten().tolist()
    if rows:
        raise ValueError(f"temperature / weights: the combined logits of row {rows[0]} overflow float32 although the "
                         f"inputs are finite (|sum_m w_m * x_m / temperature| > 3.4e38): use a larger temperature "
                         f"or smaller weights")


def _logits_impl(logits: List[Tensor], weights: Tensor, temperature: Tensor, vocab_size: int, unchecked: int,
                 backend: str) -> Tensor:
    invalid = args.check_in_op(unchecked, weights=weights, temperature=temperature)
    weights, temperature = _float32(weights), _float32(temperature)
    whole = backends.whole_op(FAMILY, "logits", backend)
    if whole is not None:
        z = whole(logits, weights, temperature, vocab_size).float()
    else:
        z = backends.kernel(FAMILY, "logits", backend)(logits, weights, temperature, vocab_size)
    if z.device.type == "cpu" and backend != "cpu":
        _raise_on_overflow(z, logits, vocab_size)
    return (z if invalid is None else z.masked_fill(invalid.unsqueeze(1), float("nan"))).contiguous()


_logits_op = torch.library.custom_op("mtkernels::collab_logits", _logits_impl, mutates_args=())


@_logits_op.register_fake
def _(logits, weights, temperature, vocab_size, unchecked, backend):
    return logits[0].new_empty((logits[0].shape[0], vocab_size), dtype=torch.float32)


def _logits_setup_context(ctx, inputs, output):
    logits, weights, temperature, vocab_size, _, _ = inputs
    ctx.vocab_size = vocab_size
    ctx.shapes = [(x.shape, x.dtype) for x in logits]
    ctx.save_for_backward(weights, temperature, output, *logits)


def _logits_backward(ctx, grad_z):
    """z = (Σ_m w_m x_m[:, :V]) / τ: ∂z/∂x_m[b, j] = w_bm / τ_b (j < V; 0 past V), ∂z/∂w_bm =
    x_m[b, j] / τ_b and ∂z/∂τ_b = -z_bj / τ_b, both 0 at masked tokens (z = -inf whatever w, τ)."""
    weights, temperature, z, *logits = ctx.saved_tensors
    v = ctx.vocab_size
    w32, tau32 = weights.to(torch.float32), temperature.to(torch.float32)
    grad_logits = None
    if ctx.needs_input_grad[0]:
        scale = (w32.double() / tau32.double().unsqueeze(1)).float()  # (B, M)
        grad_logits = []
        for m, (shape, dtype) in enumerate(ctx.shapes):
            g = grad_z.new_zeros(shape, dtype=dtype)
            g[:, :v] = grad_z * scale[:, m:m + 1]
            grad_logits.append(g)
    masked = z == float("-inf")
    grad_zt = grad_z.masked_fill(masked, 0.0) / tau32.unsqueeze(1)  # (B, V)
    grad_w = grad_tau = None
    if ctx.needs_input_grad[1]:
        grad_w = torch.stack([(grad_zt * x[:, :v].float().masked_fill(masked, 0.0)).sum(1) for x in logits], dim=1)
        grad_w = grad_w.to(weights.dtype)
    if ctx.needs_input_grad[2]:
        grad_tau = -(grad_zt * z.masked_fill(masked, 0.0)).sum(1).to(temperature.dtype)
    return grad_logits, grad_w, grad_tau, None, None, None


_logits_op.register_autograd(_logits_backward, setup_context=_logits_setup_context)


# --- public API -----------------------------------------------------------------------------------

LogitsArg = Union[Tensor, List[Tensor], Tuple[Tensor, ...]]


def fused_collab_softmax(logits: LogitsArg, weights=None, *, top_k: Union[int, Tensor], temperature=1.0,
                         vocab_size: Optional[int] = None, backend: str = "auto") -> CollabSoftmaxOutput:
    """The ``top_k`` most probable tokens of ``softmax(Σ_m w_m·logits_m / τ)``, in one pass.

    Args:
        logits: M tensors ``(B, V_m)`` (fp32/bf16/fp16, may differ per model) or one ``(M, B, V)``.
        weights: M floats, ``(M,)`` or ``(B, M)``; default all 1. Negative weights are allowed;
            each must be finite in float32 (and not a nonzero that float32 rounds to 0).
        top_k: int in ``[1, V]``, or a ``(B,)`` int tensor of per-row k: the output width is then
            its max, and a row's entries past its own k are ``ids = -1``, ``probs = 0``.
        temperature: float or ``(B,)``, finite and > 0 in float32.
        vocab_size: shared vocabulary ``V`` (default ``min_m V_m``); columns past it are ignored.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``CollabSoftmaxOutput(probs (B, k) fp32, ids (B, k) int64, lse (B,) fp32)``: probabilities
        under the full softmax (not renormalised), descending, equal values lowest id first;
        ``log p[i] = z[i] - lse``. A token that is ``-inf`` in any model is masked.

    Raises ValueError for a bad argument (naming it), and, on CPU tensors, for rows with no
    distribution (a NaN or +inf in z, every token masked, or z overflowing float32). On a GPU such
    rows, and rows of invalid parameter tensors under ``torch.compile``, get ``lse = NaN``
    (invalid parameters also ``probs = NaN``, ``ids = -1``).
    """
    inp = args.collab_inputs(logits, weights, temperature, vocab_size)
    rows_k, k = args.top_k_arg(top_k, inp.batch, inp.vocab_size, inp.device, allow_zero=False)
    name = backends.resolve_backend(backend, inp.device, FAMILY)
    per_row_k = rows_k if isinstance(top_k, torch.Tensor) else None
    probs, ids, lse = _call(_softmax_topk_op, _softmax_topk_impl, inp.logits, inp.weights, inp.temperature,
                            inp.vocab_size, k, per_row_k, inp.unchecked, name)
    return CollabSoftmaxOutput(probs, ids, lse)


def fused_collab_sample(logits: LogitsArg, weights=None, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                        greedy: bool = False, generator: Optional[torch.Generator] = None,
                        return_logprobs: bool = False, vocab_size: Optional[int] = None, backend: str = "auto",
                        keys: Optional[Tensor] = None):
    """Draw one token per row from ``softmax(Σ_m w_m·logits_m / τ)`` after top-k → top-p → min-p.

    Args:
        logits, weights, temperature, vocab_size, backend: as in :func:`fused_collab_softmax`.
        top_k: int in ``[0, V]`` (0 = off) or a ``(B,)`` int tensor with values in ``[1, V]``.
        top_p: float in ``(0, 1]`` (1 = off) or ``(B,)``; in float32.
        min_p: float in ``[0, 1)`` (0 = off) or ``(B,)``; in float32.
        greedy: take ``argmax z`` (lowest id on ties) instead of sampling.
        generator: the source of the per-row random keys; the same seed gives the same tokens.
            A CPU generator works with GPU logits too (one small copy of the keys).
        keys: instead of ``generator``, the per-row keys themselves: a ``(B,)`` int64 tensor of
            32-bit keys, each in ``[0, 2**32)``, on the CPU or the logits' device. Row ``b``'s token
            is a pure function of its logits, the filters and ``keys[b]`` (the same key gives the
            same token whatever the other rows), so callers can derive keys from, e.g., (seed,
            sentence, step) (``mtkernels.generation.keys``). Mutually exclusive with ``generator``.
            Values are checked in eager mode, and in the op body for CPU tensors (also under
            ``torch.compile``; compiled GPU code marks rows with a bad key instead: id -1).
        return_logprobs: also return each token's log-probability under the filtered,
            renormalised distribution.

    Returns:
        ``ids (B,)`` int64, or ``(ids (B,), logprobs (B,) fp32)``. Rows without a distribution raise
        on CPU tensors; on a GPU they (and, under ``torch.compile``, rows of invalid parameter
        tensors) get id -1 and log-probability NaN.

    Top-p keeps exactly the spec's set: the smallest prefix in (probability descending, lowest id
    first) order whose mass reaches top_p, so ties at its boundary are broken by id as top-k breaks
    them, and the same seed draws the same tokens with top-k on (k >= the kept set) or off. With
    top-k on, filtering and the draw work on the k candidates of one fused pass. With top-k off,
    min-p costs nothing extra; top-p costs no extra pass on CPU tensors when the 1024 best tokens
    hold the top_p mass, else a 16-way search over the threshold (up to 9 passes, and up to
    ceil(log16(V + 1)) more over ids when tokens tie at it; on CPU tensors they stop once every row
    is settled); the draw is one more pass, and log-probabilities one more only with min-p.
    """
    inp = args.collab_inputs(logits, weights, temperature, vocab_size)
    b, device = inp.batch, inp.device
    if not isinstance(greedy, bool):
        raise TypeError(f"greedy: expected a bool, got {type(greedy).__name__}")
    args.check_generator(generator, device)
    given_keys, keys_unchecked = args.keys_arg(keys, generator, b, device)
    rows_k, max_k = args.top_k_arg(top_k, b, inp.vocab_size, device, allow_zero=True)
    p, p_unchecked = args.filter_param(top_p, "top_p", 1.0, b, device)
    mp, mp_unchecked = args.filter_param(min_p, "min_p", 0.0, b, device)
    name = backends.resolve_backend(backend, device, FAMILY)
    keys = row_keys(b, device, generator) if given_keys is None else given_keys
    per_row_k = rows_k if isinstance(top_k, torch.Tensor) else None  # a scalar k is the candidate width
    ids, logprobs = _call(_sample_op, _sample_impl, inp.logits, inp.weights, inp.temperature, inp.vocab_size,
                          per_row_k, max_k, p, mp, greedy, keys, return_logprobs,
                          inp.unchecked | p_unchecked | mp_unchecked | keys_unchecked, name)
    return (ids, logprobs) if return_logprobs else ids


def collab_logits(logits: LogitsArg, weights=None, *, temperature=1.0, vocab_size: Optional[int] = None,
                  backend: str = "auto") -> Tensor:
    """The combined logits ``z = Σ_m w_m·logits_m[:, :V] / τ`` as ``(B, V)`` float32, in one pass
    (for callers that need them whole, e.g. beam search). ``-inf`` in any model stays ``-inf``.

    ``z`` is float32 of the float64 value (the sum in model order, then the division by τ), on every
    backend. Differentiable: ``∂z_b/∂x_m[b, j] = w_bm / τ_b`` for ``j < V`` (0 past V); tensor
    weights and temperature get their gradients too (0 at masked tokens). On CPU tensors, a z that
    overflows float32 from finite logits (temperature too small, weights too large) raises
    ValueError.
    """
    inp = args.collab_inputs(logits, weights, temperature, vocab_size)
    name = backends.resolve_backend(backend, inp.device, FAMILY)
    return _call(_logits_op, _logits_impl, inp.logits, inp.weights, inp.temperature, inp.vocab_size, inp.unchecked,
                 name)
