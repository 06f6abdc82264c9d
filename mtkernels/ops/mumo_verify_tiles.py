"""Log-sum-exp of ``hidden @ weight.T + bias`` by vocabulary tiles: one GEMM tile at a time into a
reused buffer, then the backend's row kernel (``lse_pick``) on the tile and a running merge.

The cpu and cuda backends' ``linear_lse`` (the GEMM is torch's: MKL / oneDNN, cuBLAS). Peak extra
memory is the buffer, ``rows x tile`` elements in the weight's dtype, sized by ``tile_bytes``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

Tensor = torch.Tensor
MIN_TILE = 128  # columns: narrower GEMMs lose more to per-call overhead than the buffer saves


def tile_columns(rows: int, vocab: int, element_size: int, tile_bytes: int) -> int:
    """Columns per vocabulary tile: ``rows x tile`` elements fit ``tile_bytes`` (at least MIN_TILE)."""
    return max(1, min(vocab, max(MIN_TILE, tile_bytes // max(1, rows * element_size))))


def tiled_linear_lse(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], lse_pick: Callable,
                     tile_bytes: int) -> Tensor:
    """``(n,)`` float32 ``logsumexp(hidden @ weight.T + bias, -1)`` for ``hidden (n, H)``,
    ``weight (V, H)`` (unit column stride), ``bias (V,)`` or None; the GEMM in the weight's dtype."""
    n, vocab = hidden.shape[0], weight.shape[0]
    lse = torch.full((n,), -math.inf, dtype=torch.float32, device=hidden.device)
    if n == 0:
        return lse
    h = hidden.to(weight.dtype)
    if bias is not None:
        bias = bias.to(weight.dtype)
    tile = tile_columns(n, vocab, weight.element_size(), tile_bytes)
    buffer = torch.empty(n * tile, dtype=weight.dtype, device=hidden.device)
    for v0 in range(0, vocab, tile):
        width = min(tile, vocab - v0)
        out = buffer[: n * width].view(n, width)  # contiguous, so mm writes it in place
        w = weight[v0:v0 + width].t()
        if bias is None:
            torch.mm(h, w, out=out)
        else:
            torch.addmm(bias[v0:v0 + width], h, w, out=out)
        tile_lse, _ = lse_pick(out, None, None)
        lse = torch.logaddexp(lse, tile_lse)
    return lse
