"""Counter-based Gumbel noise shared by every backend.

Sampling draws ``argmax_j (z_j + G(key_b, j))`` over the surviving tokens (the Gumbel-max trick),
so a sampled token is a pure function of the logits, the filters and one 32-bit key per row.
The noise of token ``j`` is a hash of ``(key_b, j)``, which every backend evaluates the same way:

    x = fmix32(j ^ fmix32(key))          # murmur3's 32-bit finaliser, all arithmetic mod 2**32
    x = fmix32(x + key)                  # second round: rows with related keys stay independent
    u = ((x >> 9) + 0.5) * 2**-23        # uniform in (0, 1); exact in float32
    G = -log(-log(u))

This needs no sequential scan (any split of the vocabulary merges by max), no host sync, and the
fused top-k path and the full-vocabulary path pick the same token for the same key.
"""

from __future__ import annotations

from typing import Optional

import torch

MASK32 = 0xFFFFFFFF
FMIX_C1 = 0x85EBCA6B
FMIX_C2 = 0xC2B2AE35


def fmix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's finaliser on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * FMIX_C1) & MASK32  # int64 products wrap mod 2**64; the low 32 bits are exact
    x = x ^ (x >> 13)
    x = (x * FMIX_C2) & MASK32
    return x ^ (x >> 16)


def row_keys(batch: int, device: torch.device, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Draw one 32-bit key per row, ``(B,)`` int64, on ``device`` without a host sync."""
    gen_device = generator.device if generator is not None else device
    keys = torch.randint(0, 2**32, (batch,), generator=generator, device=gen_device, dtype=torch.int64)
    return keys.to(device)


def gumbel_noise(keys: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Gumbel noise ``(B, N)`` float32 for token ids ``(B, N)`` (int64) and row keys ``(B,)``."""
    keys = keys.to(torch.int64).unsqueeze(-1)
    x = fmix32((ids.to(torch.int64) & MASK32) ^ fmix32(keys))
    x = fmix32((x + keys) & MASK32)
    u = ((x >> 9).to(torch.float32) + 0.5) * (2.0**-23)
    return -torch.log(-torch.log(u))
