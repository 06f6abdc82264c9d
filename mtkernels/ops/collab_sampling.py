"""Sampling on top of a backend's collab kernels, without materialising the vocabulary.

Kernels (each one pass over the M inputs; ``weights (B, M)`` and ``temperature (B,)`` float32):

    topk(logits, w, tau, V, k)                  -> values (B, k) f32 desc, ids (B, k) i64, lse (B,) f32
    logits(logits, w, tau, V)                   -> z (B, V) f32
    threshold_mass(logits, w, tau, V, theta, lse, id_cuts=None)
                                                -> mass (B, T) f32: Σ exp(z_j - lse_b), count (B, T) i64,
                                                   over the keep set of each (theta[b, t], id_cuts[b, t])
    gumbel_argmax(logits, w, tau, V, theta, keys, id_cut=None)
                                                -> ids (B,) i64, z (B,) f32: argmax z_j + G(key_b, j)
                                                   over the keep set of (theta[b], id_cut[b])

A keep set ``(theta, cut)`` is the tokens with ``z > theta``, or ``z == theta`` and ``id <= cut``
(cut None: every tie); a NaN theta keeps nothing, and a row of threshold_mass whose thresholds are
all NaN is not read. Keep sets are exactly the prefixes of the vocabulary sorted by the spec's order
(z descending, equal z by lowest id), so the survivors of top-k, top-p and min-p are all of this form.

Two paths:
* top-k on (the usual case): one ``topk`` pass gives k candidates; top-p, min-p and the draw
  happen on those (B, k) values with the spec's own filter.
* top-k off: min-p is a logit threshold (``z_max + log min_p``). Top-p's keep set is found
  exactly: first the threshold theta, by a 16-way search over the float's order-preserving 32-bit
  key (one ``threshold_mass`` pass per step), then, when several tokens tie at theta, the id cut,
  by a 16-way search over ids. Each bracket carries the kernel's token counts at its ends, so a row
  is settled as soon as its bracket holds one token. On CPU tensors the first pass keeps 1024
  candidates: when their mass reaches top_p (peaked LLM distributions) the keep set is a prefix of
  them and there is no search; otherwise the searches stop as soon as every row is settled. On a
  GPU the passes have a fixed count (no host sync); settled rows pass NaN thresholds, which the
  kernels skip without reading the row. The draw is one ``gumbel_argmax`` pass (its pruning makes
  it cheaper than a draw among 1024 candidates in torch); log-probabilities cost one more
  ``threshold_mass`` pass only for rows whose kept mass top-p has not measured already (min-p
  alone, or binding).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Tuple

import torch

from ..gumbel import gumbel_noise

Tensor = torch.Tensor
SEARCH_POINTS = 15  # thresholds per pass: each pass narrows a bracket 16-fold
KEY_SEARCH_PASSES = 9  # 16**8 == 2**32 float keys, plus one: the first pass starts from a guess
TOP_P_CANDIDATES = 1024  # first-pass width on CPU tensors
NAN = float("nan")


def float_to_key(x: Tensor) -> Tensor:
    """Order-preserving map of float32 to [0, 2**32) as int64 (-inf < ... < +inf)."""
    bits = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return torch.where(bits >= 0x80000000, bits ^ 0xFFFFFFFF, bits | 0x80000000)


def key_to_float(key: Tensor) -> Tensor:
    bits = torch.where(key >= 0x80000000, key & 0x7FFFFFFF, key ^ 0xFFFFFFFF)
    bits = torch.where(bits >= 0x80000000, bits - 2**32, bits)  # as signed int32
    return bits.to(torch.int32).view(torch.float32)


def sample_candidates(values: Tensor, ids: Tensor, top_k: Optional[Tensor], top_p: Optional[Tensor],
                      min_p: Optional[Tensor], greedy: bool, keys: Tensor) -> Tuple[Tensor, Tensor]:
    """Filter and draw among k candidates ``(B, k)``, sorted by descending value (equal values:
    lowest id first); returns (ids (B,), logprobs (B,)). Filters that are None are off.

    The spec's filters on a sorted list: top-k is a prefix; top-p keeps the prefix whose mass
    before each token is below top_p (probabilities in float64, as the reference); min-p's
    ``prob >= min_p * max prob`` is the logit test ``z >= z_max + log(min_p)`` (renormalisation
    cancels). The first candidate always survives.
    """
    keep = values > float("-inf")
    if top_k is not None:
        keep &= torch.arange(values.shape[1], device=values.device) < top_k.unsqueeze(1)
    if top_p is not None:
        probs = torch.softmax(values.double().masked_fill(~keep, float("-inf")), dim=1)
        keep &= ((torch.cumsum(probs, dim=1) - probs) < top_p.double().unsqueeze(1)) | (top_p.unsqueeze(1) >= 1.0)
    if min_p is not None:
        keep &= values >= values[:, :1] + torch.log(min_p).unsqueeze(1)
    keep[:, 0] = True
    kept = values.masked_fill(~keep, float("-inf"))
    if greedy:
        pick = torch.zeros_like(ids[:, :1])
    else:
        pick = torch.argmax(kept + gumbel_noise(keys, ids), dim=1, keepdim=True)
    token = ids.gather(1, pick).squeeze(1)
    logprob = kept.gather(1, pick).squeeze(1) - torch.logsumexp(kept, dim=1)
    return token, logprob


# --- full-vocabulary keep sets ----------------------------------------------------------------------

class KeepSet(NamedTuple):
    """Per row ``(B,)``: the keep set ``(theta, cut)`` and its mass under the full softmax as the
    kernels measure it (NaN where not measured)."""

    theta: Tensor
    cut: Tensor
    mass: Tensor


class _Bracket(NamedTuple):
    """A monotone search per row: integer bounds ``lo < hi`` and the kernel's (mass, count) of the
    keep sets at both ends. Settled rows pass NaN thresholds."""

    lo: Tensor
    hi: Tensor
    lo_mass: Tensor
    hi_mass: Tensor
    lo_count: Tensor
    hi_count: Tensor


MassFn = Callable[[Tensor, Optional[Tensor]], Tuple[Tensor, Tensor]]  # (theta (B, T), cut (B, T)) -> (mass, count)


def _narrow(br: _Bracket, points: Tensor, mass: Tensor, count: Tensor, reached: Tensor, active: Tensor,
            reached_low: bool) -> _Bracket:
    """Moves each active row's bounds to the adjacent pair of ``points`` (B, T) around the change of
    ``reached`` (monotone along the points: the kernels' masses are monotone in the keep set)."""
    t = points.shape[1]
    idx = torch.arange(t, device=points.device)
    if reached_low:  # reached at low points: keep theta low enough
        i_lo = torch.where(reached, idx, -1).amax(1)
        i_hi = i_lo + 1
    else:  # reached at high points: cut high enough
        i_hi = torch.where(reached, idx, t).amin(1)
        i_lo = i_hi - 1
    take_lo, take_hi = active & (i_lo >= 0), active & (i_hi < t)
    lo_i, hi_i = i_lo.clamp(0, t - 1).unsqueeze(1), i_hi.clamp(0, t - 1).unsqueeze(1)

    def pick(take, i, new, old):
        return torch.where(take, new.gather(1, i).squeeze(1), old)

    return _Bracket(pick(take_lo, lo_i, points, br.lo), pick(take_hi, hi_i, points, br.hi),
                    pick(take_lo, lo_i, mass, br.lo_mass), pick(take_hi, hi_i, mass, br.hi_mass),
                    pick(take_lo, lo_i, count, br.lo_count), pick(take_hi, hi_i, count, br.hi_count))


def _search(br: _Bracket, evaluate: Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]], top_p: Tensor,
            passes: int, reached_low: bool, first_points: Optional[Tensor] = None) -> _Bracket:
    """Up to ``passes`` 16-way narrowing steps of the brackets, until each holds one token (or one
    point). ``evaluate(points (B, T), active (B,))`` gives the kernel's (mass, count) at the points,
    reading only active rows. On CPU tensors the loop stops as soon as every row is settled (a free
    check there); on a GPU it runs all passes, without a host sync."""
    steps = torch.arange(1, SEARCH_POINTS + 1, device=br.lo.device, dtype=torch.int64)
    for step in range(passes):
        active = (br.hi - br.lo > 1) & ((br.hi_count - br.lo_count).abs() > 1)
        if br.lo.device.type == "cpu" and not bool(active.any()):
            break
        if step == 0 and first_points is not None:
            points = first_points
        else:
            points = br.lo.unsqueeze(1) + ((br.hi - br.lo).unsqueeze(1) * steps) // (SEARCH_POINTS + 1)
        mass, count = evaluate(points, active)
        reached = mass >= top_p.unsqueeze(1)
        br = _narrow(br, points, mass, count, reached, active, reached_low)
    return br


def top_p_keep_set(mass_fn: MassFn, values: Tensor, ids: Tensor, lse: Tensor, top_p: Tensor,
                   vocab_size: int) -> KeepSet:
    """Top-p's keep set over the whole vocabulary, from the ``(B, w)`` best candidates of a topk pass.

    The spec's keep set is the smallest prefix, in (z descending, id ascending) order, whose mass
    reaches top_p: it ends at the crossing token t, so it is ``(z_t, t)``. Where the candidates' mass
    reaches top_p, t is among them; else theta = z_t is searched over float keys (invariant:
    mass(z >= lo) >= top_p > mass(z >= hi)) and, if several tokens tie at theta, the cut over ids
    (mass(lo) < top_p <= mass(hi)). Rows with top_p >= 1 keep everything.
    """
    b, width = values.shape
    device = values.device
    everything = top_p >= 1.0
    # Candidate probabilities in float64, as the reference. When the candidates are the whole
    # vocabulary, their own log-sum-exp normalises them exactly (equal logits: exact fractions).
    log_z = torch.logsumexp(values.double(), 1) if width == vocab_size else lse.double()
    probs = torch.exp(values.double() - log_z.unsqueeze(1))
    cum = torch.cumsum(probs, 1)
    n_kept = ((cum - probs) < top_p.double().unsqueeze(1)).sum(1).clamp(1, width)
    found = (cum[:, -1] >= top_p.double()) & ~everything
    last = (n_kept - 1).unsqueeze(1)
    theta = torch.where(found, values.gather(1, last).squeeze(1), float("-inf"))
    cut = torch.where(found, ids.gather(1, last).squeeze(1), vocab_size - 1)
    kept_mass = torch.where(found, cum.gather(1, last).squeeze(1).float(), 1.0)
    search = ~(found | everything)
    if width == vocab_size or (device.type == "cpu" and not bool(search.any())):  # settled among the candidates
        return KeepSet(theta, cut, kept_mass)

    def evaluate_keys(points, active):
        thresholds = torch.where(active.unsqueeze(1), key_to_float(points), NAN)
        return mass_fn(thresholds, None)

    # Stage 1: theta. Bounds: -inf (mass 1, every token) and just above the last candidate (the
    # tokens above it are candidates, so their mass and count are known). The first pass starts at
    # a theta that the row's mass provably reaches, lse + log((1 - top_p) / 2V), unless that is not
    # above -inf: most tokens then lie below every threshold, which the kernels skip.
    v_last = values[:, -1:]
    above_last = values > v_last
    neg_inf_key = float_to_key(torch.full_like(lse, float("-inf")))
    br = _Bracket(lo=neg_inf_key, hi=torch.where(search, float_to_key(v_last.squeeze(1)) + 1, neg_inf_key + 1),
                  lo_mass=torch.ones_like(lse), hi_mass=(probs * above_last).sum(1).float(),
                  lo_count=torch.full_like(cut, vocab_size), hi_count=above_last.sum(1))
    margin = torch.log1p(-top_p.double()) - math.log(2 * vocab_size)  # -inf for top_p == 1
    start = float_to_key((lse.double() + margin).float())
    start = torch.minimum(torch.maximum(start, br.lo), br.hi - 1)
    steps = torch.arange(SEARCH_POINTS, device=device, dtype=torch.int64)
    first = start.unsqueeze(1) + ((br.hi - start).unsqueeze(1) * steps) // SEARCH_POINTS
    br = _search(br, evaluate_keys, top_p, KEY_SEARCH_PASSES, reached_low=True, first_points=first)
    theta_search = key_to_float(br.lo)
    # Stage 2: the id cut, where several tokens tie at theta (the key bracket is then one float wide).
    ties = search & (br.lo_count - br.hi_count > 1) & (br.hi - br.lo <= 1) & (theta_search > float("-inf"))
    id_br = _Bracket(lo=torch.full_like(cut, -1), hi=torch.where(ties, vocab_size - 1, 0),
                     lo_mass=br.hi_mass, hi_mass=br.lo_mass, lo_count=br.hi_count,
                     hi_count=torch.where(ties, br.lo_count, br.hi_count))

    def evaluate_ids(points, active):
        thresholds = torch.where(active, theta_search, NAN).unsqueeze(1).expand_as(points)
        return mass_fn(thresholds.contiguous(), points)

    id_passes = max(1, math.ceil(math.log(vocab_size + 1, 16)))
    id_br = _search(id_br, evaluate_ids, top_p, id_passes, reached_low=False)
    theta = torch.where(search, theta_search, theta)
    cut = torch.where(ties, id_br.hi, cut)
    kept_mass = torch.where(ties, id_br.hi_mass, torch.where(search, br.lo_mass, kept_mass))
    return KeepSet(theta, cut, kept_mass)


def sample_full_vocab(kernels, logits, weights, temperature, vocab_size: int, top_p: Optional[Tensor],
                      min_p: Optional[Tensor], greedy: bool, keys: Tensor,
                      need_logprobs: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Top-k off: the survivors are one keep set over the whole vocabulary (top_p/min_p None = off).

    Returns ``(ids (B,), logprobs (B,) or zeros when not asked for, lse (B,))``."""
    on_cpu = weights.device.type == "cpu"
    # On CPU tensors a wider first pass usually settles top-p without any search pass; on a
    # GPU the search runs a fixed number of passes anyway, so the cheapest first pass wins.
    width = min(vocab_size, TOP_P_CANDIDATES) if top_p is not None and on_cpu else 1
    values, ids, lse = kernels["topk"](logits, weights, temperature, vocab_size, width)
    z_max = values[:, 0]
    if greedy and not need_logprobs:
        return ids[:, 0], torch.zeros_like(lse), lse

    def mass(thresholds: Tensor, cuts: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        return kernels["threshold_mass"](logits, weights, temperature, vocab_size, thresholds.contiguous(), lse,
                                         None if cuts is None else cuts.contiguous())

    # Every keep set below holds the arg-max: top-p's theta has mass above it, and min-p's
    # z_max + log(min_p) is at most z_max.
    if top_p is not None:
        keep = top_p_keep_set(mass, values, ids, lse, top_p, vocab_size)
        if min_p is not None:  # prob >= min_p * max prob, i.e. z >= z_max + log(min_p): binds above theta
            theta_min = z_max + torch.log(min_p)
            binds = theta_min > keep.theta
            keep = KeepSet(torch.where(binds, theta_min, keep.theta), torch.where(binds, vocab_size - 1, keep.cut),
                           torch.where(binds, NAN, keep.mass))
    elif min_p is not None:
        keep = KeepSet(z_max + torch.log(min_p), torch.full_like(ids[:, 0], vocab_size - 1), torch.full_like(lse, NAN))
    else:
        keep = KeepSet(torch.full_like(lse, float("-inf")), torch.full_like(ids[:, 0], vocab_size - 1),
                       torch.ones_like(lse))
    if greedy:
        token, z_token = ids[:, 0], z_max
    else:
        token, z_token = kernels["gumbel_argmax"](logits, weights, temperature, vocab_size, keep.theta, keys,
                                                  keep.cut)
    if not need_logprobs:
        return token, torch.zeros_like(lse), lse
    kept_mass = keep.mass
    unknown = torch.isnan(kept_mass)
    if not on_cpu or bool(unknown.any()):  # rows already measured pass NaN: the kernel skips them
        measured, _ = mass(torch.where(unknown, keep.theta, NAN).unsqueeze(1), keep.cut.unsqueeze(1))
        kept_mass = torch.where(unknown, measured.squeeze(1), kept_mass)
    return token, z_token - lse - torch.log(kept_mass), lse
