"""Benchmark problems for collaborative decoding: shapes, size sets and the input tensors.

A problem is M logit tensors ``(B, V)`` of one dtype on one device, the weights and the
temperature that every case (fused op or baseline) combines them with.
"""

from __future__ import annotations

import dataclasses
from typing import List, Tuple

import torch

Tensor = torch.Tensor

# Proxy-tuning's combination (eq. 1: L + S⁺ − S⁻), so baseline (b) is the method as published.
WEIGHTS: Tuple[float, ...] = (1.0, 1.0, -1.0)
TEMPERATURE = 0.8
TOP_K = 50
TOP_P = 0.9
# Standard deviation of the synthetic logits: peaked enough that top-p 0.9 keeps a few hundred
# to a few thousand tokens at V = 32k-128k, as real LLM logits do.
LOGIT_SCALE = 2.0

_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclasses.dataclass(frozen=True)
class Shape:
    """``models`` tensors of shape ``(batch, vocab)`` and dtype ``dtype``."""

    models: int
    batch: int
    vocab: int
    dtype: torch.dtype = torch.float32

    @property
    def dtype_name(self) -> str:
        return _DTYPE_NAMES[self.dtype]

    @property
    def label(self) -> str:
        """``"M=3 B=32 V=128256 fp32"``: readable, and usable in pytest ids."""
        return f"M={self.models} B={self.batch} V={self.vocab} {self.dtype_name}"

    @property
    def input_bytes(self) -> int:
        """Bytes of all M inputs, what the read-once floor streams."""
        element = torch.empty((), dtype=self.dtype).element_size()
        return self.models * self.batch * self.vocab * element


def _fp32(batch: int, vocab: int, models: int = 3) -> Shape:
    return Shape(models, batch, vocab, torch.float32)


# The table: (B, V) in {(1, 128256), (32, 32000), (32, 128256)} in fp32, and one bf16 case.
DEFAULT_SHAPES: Tuple[Shape, ...] = (
    _fp32(1, 128256), _fp32(32, 32000), _fp32(32, 128256), Shape(3, 32, 128256, torch.bfloat16),
)
LARGE_SHAPES: Tuple[Shape, ...] = (
    _fp32(64, 128256), _fp32(128, 128256), _fp32(32, 256000), Shape(3, 128, 128256, torch.bfloat16),
    _fp32(32, 128256, models=5),
)
QUICK_SHAPES: Tuple[Shape, ...] = (_fp32(4, 8000), Shape(3, 4, 8000, torch.bfloat16))

# The plot: speed-up against vocabulary size at B = 32 and B = 1.
SWEEP_VOCABS: Tuple[int, ...] = (8000, 32000, 64000, 128256)
SWEEP_BATCHES: Tuple[int, ...] = (32, 1)
QUICK_SWEEP_VOCABS: Tuple[int, ...] = (2000, 8000)
QUICK_SWEEP_BATCHES: Tuple[int, ...] = (4, 1)


def sweep_shapes(vocabs=SWEEP_VOCABS, batches=SWEEP_BATCHES) -> List[Shape]:
    """The fp32, M = 3 shapes of the speed-up-vs-V plot, one per (B, V)."""
    return [_fp32(b, v) for b in batches for v in vocabs]


@dataclasses.dataclass
class Problem:
    """The inputs every case of one shape runs on.

    logits: M tensors ``(B, V)`` of ``shape.dtype`` on ``device``; weights: M floats; temperature: float.
    """

    shape: Shape
    device: torch.device
    logits: List[Tensor]
    weights: Tuple[float, ...]
    temperature: float


def _weights(models: int) -> Tuple[float, ...]:
    """Proxy-tuning's weights for M = 3; for other M, 1.0 for the first model and ±0.5 after it."""
    if models == len(WEIGHTS):
        return WEIGHTS
    return (1.0,) + tuple(0.5 if m % 2 else -0.5 for m in range(1, models))


def make_problem(shape: Shape, device, seed: int = 0) -> Problem:
    """Gaussian logits ``N(0, LOGIT_SCALE²)``, drawn in fp32 on the CPU (same values on any device)."""
    gen = torch.Generator().manual_seed(seed)
    logits = [(torch.randn(shape.batch, shape.vocab, generator=gen) * LOGIT_SCALE).to(device, shape.dtype)
              for _ in range(shape.models)]
    return Problem(shape, torch.device(device), logits, _weights(shape.models), TEMPERATURE)
