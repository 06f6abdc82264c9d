"""Sampling keys that depend only on (seed, sentence index, step).

``fused_collab_sample(..., keys=k)`` draws row b's token as a pure function of its logits, the
filters and ``k[b]``. Deriving ``k[b]`` from the row's own (seed, sentence index, step) makes a
sentence's output independent of the batch it is decoded in, of the order of that batch, of
finished rows leaving it, and of how many ranks share the corpus (each rank passes global
sentence indices).

Each field is absorbed into a 32-bit state with murmur3's finaliser (``mtkernels.gumbel.fmix32``):

    absorb(h, x) = fmix32(h ^ fmix32((x + c) mod 2**32))
    key = absorb(absorb(absorb(absorb(absorb(c0, seed_lo), seed_hi), sid_lo), sid_hi), step)

``fmix32`` is a bijection of 32-bit words, so with the other fields fixed, distinct sentence
indices (below 2**32) give distinct keys, and so do distinct steps. Seeds and sentence indices are
taken mod 2**64 and split into two 32-bit words.
"""

from __future__ import annotations

from typing import Union

import torch

from ..gumbel import MASK32, fmix32

Tensor = torch.Tensor
_START = 0x6A09E667  # initial state (the fractional bits of sqrt 2)
_ROUND = 0x9E3779B9  # added to each absorbed word (the golden ratio's fractional bits)


def _absorb(state: Tensor, word: Tensor) -> Tensor:
    """One field into the state; both int64 tensors holding values in [0, 2**32)."""
    return fmix32(state ^ fmix32((word + _ROUND) & MASK32))


def _words(value: int):
    value %= 2**64
    return value & MASK32, value >> 32


def step_keys(seed: int, sentence_ids: Tensor, step: int) -> Tensor:
    """Keys for one decoding step.

    Args:
        seed: any Python int (taken mod 2**64).
        sentence_ids: ``(B,)`` integer tensor of global sentence indices (>= 0), any device.
        step: index of the token being drawn (0 for the first new token).

    Returns:
        ``(B,)`` int64 on ``sentence_ids``' device, values in ``[0, 2**32)``: the ``keys=`` of
        :func:`mtkernels.fused_collab_sample`.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step: expected an int >= 0, got {step!r}")
    sid = sentence_ids.to(torch.int64)
    lo, hi = _words(seed)
    state = torch.full_like(sid, _START)
    state = _absorb(_absorb(state, torch.full_like(sid, lo)), torch.full_like(sid, hi))
    state = _absorb(_absorb(state, sid & MASK32), (sid >> 32) & MASK32)
    return _absorb(state, torch.full_like(sid, step & MASK32))


def sentence_key(seed: int, sentence_id: int, step: int) -> int:
    """The key of one (seed, sentence, step), as a Python int (for tests and logging)."""
    return int(step_keys(seed, torch.tensor([sentence_id], dtype=torch.int64), step)[0])


def random_seed(generator: Union[torch.Generator, None] = None) -> int:
    """A fresh 63-bit seed from ``generator`` (default: torch's global generator)."""
    return int(torch.randint(0, 2**63 - 1, (1,), generator=generator, dtype=torch.int64))
