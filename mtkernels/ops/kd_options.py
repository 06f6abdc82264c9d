"""The self-evolution KD loss's contract, defined once: its modes, what each mode means to a row
kernel, and the typed options object with its one mapping to and from the flat custom-op schema.

The C++ side (``csrc/common/kd_row.h``: ``enum class Mode``) is checked against :class:`Mode` by
tests/test_kd_numerics.py; the Triton launcher and the reference build their tables from
:data:`MODE_RULES`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
from typing import Optional, Tuple

import torch

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
REDUCTIONS = ("mean", "sum", "none")


class Mode(enum.IntEnum):
    """The loss modes and the integer codes the row kernels take (docs/kd.md)."""

    SELF_EVOLUTION = 0  # hard if d > gamma, else easy
    SELF_EVOLUTION_TOPK = 1  # the round(hard_fraction · n_valid) rows of largest d are hard
    SKEW = 2  # every valid row hard
    NOEVO = 3  # every row easy
    FORWARD_KD = 4  # (1 - lam) CE + lam KL(p || q)
    REVERSE_KD = 5  # (1 - lam) CE + lam KL(q || p)

    @classmethod
    def parse(cls, name: str) -> "Mode":
        return cls[name.upper()]


MODES: Tuple[str, ...] = tuple(m.name.lower() for m in Mode)


class HardRule(enum.IntEnum):
    """How a row kernel decides that a valid row is hard (without a caller-given mask)."""

    NONE = 0
    IF_DIFFICULT = 1  # d > gamma
    ALL_VALID = 2
    FROM_MASK = 3  # the caller's mask (self_evolution_topk, and every backward of reduction "none")


class LossKind(enum.IntEnum):
    """Which per-row loss a mode takes."""

    SKEWED = 0  # hard rows KL(ỹ ‖ m), easy rows KL(ỹ ‖ q)
    FORWARD_KD = 1
    REVERSE_KD = 2


# mode -> (hard rule when no mask is given, loss kind). self_evolution_topk always comes with a
# mask: the driver ranks the rows first (``hard_rows_by_rank``).
MODE_RULES = {
    Mode.SELF_EVOLUTION: (HardRule.IF_DIFFICULT, LossKind.SKEWED),
    Mode.SELF_EVOLUTION_TOPK: (HardRule.NONE, LossKind.SKEWED),
    Mode.SKEW: (HardRule.ALL_VALID, LossKind.SKEWED),
    Mode.NOEVO: (HardRule.NONE, LossKind.SKEWED),
    Mode.FORWARD_KD: (HardRule.NONE, LossKind.FORWARD_KD),
    Mode.REVERSE_KD: (HardRule.NONE, LossKind.REVERSE_KD),
}


def _real(value, name: str, ok, expected: str) -> float:
    """A Python real number (not a tensor: options are constants of the op) checked by ``ok``."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        hint = f" (pass {name}.item())" if isinstance(value, torch.Tensor) else ""
        raise TypeError(f"{name}: expected a Python float {expected}, got {type(value).__name__}{hint}")
    if not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name}: must be {expected}, got {value!r}")
    return float(value)


def _temperature_ok(t: float) -> bool:
    """τ > 0 with τ and 1/τ finite and non-zero in float32, the precision the kernels work in."""
    return 0 < t <= FLOAT32_MAX and 1.0 / t <= FLOAT32_MAX


INT64_RANGE = (-2**63, 2**63 - 1)


def check_ignore_index(ignore_index) -> int:
    if not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
    if not INT64_RANGE[0] <= ignore_index <= INT64_RANGE[1]:
        raise ValueError(f"ignore_index: must fit in int64 (labels are int64), got {ignore_index}")
    return int(ignore_index)


@dataclasses.dataclass(frozen=True)
class KDOptions:
    """Every constant of one KD loss call, checked on construction (errors name the field).

    ``chunk_size``: rows per chunk, ``None`` for the memory budget (``chunk_plan``).
    ``group_name``: the vocabulary-parallel process group's name (``torch.distributed`` group
    ``group_name``), ``None`` on one device; ``vocab_offset``: the first global vocabulary id of this
    rank's slice; ``reduce_grad_input``: whether ``grad_input`` is summed across the group (docs/kd.md,
    "Vocabulary-parallel"). Custom-op schemas carry these fields flat, in field order (:meth:`flat`,
    :meth:`from_flat`, :data:`KD_OPTIONS_SCHEMA`).
    """

    mode: str = "self_evolution"
    lam: float = 0.5
    beta: float = 0.5
    gamma: float = 0.4
    hard_fraction: float = 0.2
    temperature: float = 1.0
    ignore_index: int = -100
    reduction: str = "mean"
    chunk_size: Optional[int] = None
    group_name: Optional[str] = None
    vocab_offset: int = 0
    reduce_grad_input: bool = True

    def __post_init__(self):
        if not isinstance(self.mode, str) or self.mode not in MODES:
            raise ValueError(f"mode: must be one of {MODES}, got {self.mode!r}")
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen)
        fix("lam", _real(self.lam, "lam", lambda v: 0 <= v <= 1, "in [0, 1]"))
        fix("beta", _real(self.beta, "beta", lambda v: 0 < v <= 1, "in (0, 1]"))
        fix("gamma", _real(self.gamma, "gamma", lambda v: v >= 0, ">= 0"))
        fix("hard_fraction", _real(self.hard_fraction, "hard_fraction", lambda v: 0 <= v <= 1, "in [0, 1]"))
        fix("temperature", _real(self.temperature, "temperature", _temperature_ok,
                                 "> 0, with it and its reciprocal finite in float32 (about 3e-39 to 3.4e38)"))
        fix("ignore_index", check_ignore_index(self.ignore_index))
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction: must be one of {REDUCTIONS}, got {self.reduction!r}")
        chunk = self.chunk_size
        if chunk is not None:
            if not isinstance(chunk, numbers.Integral) or isinstance(chunk, bool) or chunk < 1:
                raise ValueError(f"chunk_size: must be a positive int or None, got {chunk!r}")
            fix("chunk_size", int(chunk))
        if self.group_name is not None and not isinstance(self.group_name, str):
            raise TypeError(f"group_name: expected a process group's name (str) or None, got "
                            f"{type(self.group_name).__name__}")
        offset = self.vocab_offset
        if not isinstance(offset, numbers.Integral) or isinstance(offset, bool) or offset < 0:
            raise ValueError(f"vocab_offset: must be a non-negative int, got {offset!r}")
        fix("vocab_offset", int(offset))
        if not isinstance(self.reduce_grad_input, bool):
            raise TypeError(f"vocab_parallel_reduce_grad_input: expected a bool, got "
                            f"{type(self.reduce_grad_input).__name__}")

    @property
    def mode_code(self) -> Mode:
        return Mode.parse(self.mode)

    def flat(self) -> tuple:
        """The fields in schema order, as a custom op takes them."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    @classmethod
    def from_flat(cls, values) -> "KDOptions":
        return cls(*values)

    def row_args(self, vocab: int) -> tuple:
        """The row kernels' scalar arguments (``kd`` ``rows``: mode … vocab)."""
        return (int(self.mode_code), self.lam, self.beta, self.gamma, self.temperature, self.ignore_index, vocab)


_SCHEMA_TYPES = {"mode": "str", "lam": "float", "beta": "float", "gamma": "float", "hard_fraction": "float",
                 "temperature": "float", "ignore_index": "int", "reduction": "str", "chunk_size": "int?",
                 "group_name": "str?", "vocab_offset": "int", "reduce_grad_input": "bool"}
# The options' part of a custom-op schema, e.g. "str mode, float lam, ..., str? group_name".
KD_OPTIONS_SCHEMA = ", ".join(f"{_SCHEMA_TYPES[f.name]} {f.name}" for f in dataclasses.fields(KDOptions))
NUM_OPTIONS = len(dataclasses.fields(KDOptions))
