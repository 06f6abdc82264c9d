"""Per-row decoding parameters that follow the rows as the batch shrinks or beams reorder."""

from __future__ import annotations

import dataclasses
from typing import List, Union

import torch

Tensor = torch.Tensor


@dataclasses.dataclass(frozen=True)
class RowParams:
    """The op's parameters for the current rows: each a scalar (every row) or a per-row tensor
    (``weights (B, M)``, the others ``(B,)``) on the logits' device."""

    weights: Union[List[float], Tensor]
    temperature: Union[float, Tensor] = 1.0
    top_k: Union[int, Tensor] = 0
    top_p: Union[float, Tensor] = 1.0
    min_p: Union[float, Tensor] = 0.0

    def select(self, rows: Tensor) -> "RowParams":
        """The parameters of ``rows`` (``(R,)`` int64 indices into the current rows; repeats allowed)."""
        def pick(value):
            return value.index_select(0, rows.to(value.device)) if isinstance(value, Tensor) else value

        return RowParams(*(pick(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def to(self, device: torch.device) -> "RowParams":
        def move(value):
            return value.to(device) if isinstance(value, Tensor) else value

        return RowParams(*(move(getattr(self, f.name)) for f in dataclasses.fields(self)))
