"""The vocabulary-parallel self-evolution KD loss (docs/kd.md, "Vocabulary-parallel").

Each rank of a process group holds a contiguous slice ``[offset, offset + V_r)`` of the student's
and the teacher's vocabulary (slices in rank order, sizes may differ); labels are global ids. Two
pieces live here:

- :func:`agree_on_call`: before the first collective of a call, one small all-gather of each
  rank's facts (rows, slice sizes, hidden sizes, label range, an error flag), so that every rank
  validates the same facts and raises the same error instead of one rank raising while the others
  wait in a collective;
- :class:`VocabParallelRows`: the row kernel of the chunked driver for a vocabulary slice, in plain
  PyTorch on the ``(rows, V_r)`` float32 chunk for every backend (the GEMMs dominate the cost). Per
  chunk: one MAX all-reduce of the row maxima, one packed SUM of the streaming statistics, and, for
  modes with hard rows, a second packed SUM of the hard-loss terms, which need the merged
  normalisers. The statistics formulas are docs/kd.md's (and ``csrc/common/kd_row.h``'s).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from .kd_options import MODE_RULES, HardRule, KDOptions, LossKind, Mode

Tensor = torch.Tensor
LOG_FLOOR = -1e30  # finite stand-in for log 0 (docs/kd.md, numerics)
_NO_LABEL_MIN = 2**62  # the gathered smallest label of a rank whose batch has no valid label


# --- the process group --------------------------------------------------------------------------

def check_group(group) -> None:
    """Local facts about the group itself: the same on every rank, so raising here cannot hang."""
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("vocab_parallel_group: torch.distributed is not initialised (call "
                         "torch.distributed.init_process_group first), or pass vocab_parallel_group=None")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"vocab_parallel_group: expected a torch.distributed ProcessGroup (e.g. "
                        f"torch.distributed.group.WORLD or new_group(...)), got {type(group).__name__}")
    if dist.get_rank(group) < 0:
        raise ValueError("vocab_parallel_group: this process is not a member of the group")


def resolve_group(name: str):
    """The process group of a name carried by the custom ops' options."""
    return dist.distributed_c10d._resolve_process_group(name)


def _uses_nccl(group) -> bool:
    return "nccl" in str(dist.get_backend(group)).lower()


def _gather_device(group) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if _uses_nccl(group) else torch.device("cpu")


def check_tensor(t, name: str, group) -> None:
    """A tensor argument of a vocabulary-parallel call: this rank's plain local tensor, on a device
    the group's backend communicates."""
    if t is None:
        return
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        raise TypeError(f"{name}: a DTensor; with vocab_parallel_group pass each rank's local tensor "
                        f"({name}.to_local() for a vocabulary-sharded weight, or gather a sharded one first)")
    if isinstance(t, torch.Tensor) and _uses_nccl(group) and t.device.type != "cuda":
        raise ValueError(f"{name}: on {t.device}, but vocab_parallel_group uses NCCL, which communicates "
                         f"CUDA tensors only")


# --- agreeing on a call before its first collective ----------------------------------------------

@dataclasses.dataclass(frozen=True)
class CallFacts:
    """One rank's view of a call, as the all-gather carries it."""

    rows: int
    vocab_s: int  # this rank's student slice
    vocab_t: int  # this rank's teacher slice
    hidden_s: int  # -1 for the logits form
    hidden_t: int  # -1 without a teacher input
    labels: Tensor
    ignore_index: int
    num_items: Optional[Tensor]
    options: KDOptions
    student_name: str = "student_weight"
    teacher_name: str = "teacher_weight"


_FIELDS = ("error", "rows", "vocab_s", "vocab_t", "hidden_s", "hidden_t", "label_min", "label_max",
           "labels_checksum", "num_items", "options_crc")
_ERRORS = {1: ValueError, 2: TypeError, 3: RuntimeError}


def _encode(facts: CallFacts) -> List[int]:
    labels = facts.labels
    valid = labels != facts.ignore_index
    if labels.numel():
        lo = int(torch.where(valid, labels, _NO_LABEL_MIN).min())
        hi = int(torch.where(valid, labels, -1).max())
        # a checksum of the label ids and their order (every rank must see the same batch)
        position = torch.arange(1, labels.numel() + 1, device=labels.device) % 65521
        checksum = int(((labels % 65521) * position).sum())
    else:
        lo, hi, checksum = _NO_LABEL_MIN, -1, 0
    num_items = -1 if facts.num_items is None else int(round(float(facts.num_items)))
    # the options but the per-rank offset; crc32, not hash(): str hashes differ between processes
    shared = dataclasses.replace(facts.options, group_name=None, vocab_offset=0)
    crc = zlib.crc32(repr(shared.flat()).encode())
    return [0, facts.rows, facts.vocab_s, facts.vocab_t, facts.hidden_s, facts.hidden_t, lo, hi, checksum,
            num_items, crc]


def _all_gather_ints(values: Sequence[int], group) -> List[dict]:
    mine = torch.tensor(list(values), dtype=torch.int64, device=_gather_device(group))
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, mine, group=group)
    return [dict(zip(_FIELDS, row)) for row in torch.stack(parts).tolist()]


@dataclasses.dataclass(frozen=True)
class Layout:
    """The vocabulary slices of a group, in rank order, and this rank's place among them."""

    sizes: Tuple[int, ...]
    rank: int

    @property
    def offset(self) -> int:
        return sum(self.sizes[:self.rank])

    @property
    def vocab(self) -> int:
        return sum(self.sizes)


def _same(ranks: List[dict], field: str) -> bool:
    return len({r[field] for r in ranks}) == 1


def _check_agreed(ranks: List[dict], facts: CallFacts) -> None:
    """The checks that need every rank's facts; each rank runs them on the same gathered values."""
    per_rank = lambda field: [r[field] for r in ranks]  # noqa: E731
    if not _same(ranks, "rows"):
        raise ValueError(f"student_input: every rank of vocab_parallel_group must pass the same N rows (the whole "
                         f"batch; the ranks split the vocabulary, not the rows), got N = {per_rank('rows')} by rank")
    if not _same(ranks, "hidden_s"):
        raise ValueError(f"student_input: the hidden size H_s must be the same on every rank, got "
                         f"{per_rank('hidden_s')} by rank")
    if not _same(ranks, "hidden_t"):
        raise ValueError(f"teacher_input: the hidden size H_t must be the same on every rank, got "
                         f"{per_rank('hidden_t')} by rank")
    student, teacher = per_rank("vocab_s"), per_rank("vocab_t")
    if student != teacher:
        raise ValueError(f"{facts.teacher_name}: each rank's teacher vocabulary slice must be the same ids as its "
                         f"student slice; the slice sizes do not add up: student {student} (V = {sum(student)}), "
                         f"teacher {teacher} (V = {sum(teacher)}) by rank")
    if not _same(ranks, "labels_checksum"):
        raise ValueError("labels: every rank of vocab_parallel_group must pass the same (N,) global label ids; "
                         "they differ between ranks")
    if not _same(ranks, "num_items"):
        raise ValueError(f"num_items_in_batch: must be the same on every rank of vocab_parallel_group, got "
                         f"{[None if v < 0 else v for v in per_rank('num_items')]} by rank")
    if not _same(ranks, "options_crc"):
        raise ValueError("vocab_parallel_group: the loss options (mode, lam, beta, gamma, hard_fraction, temperature, "
                         "ignore_index, reduction, chunk_size) differ between ranks; every rank must make the same "
                         "call")
    vocab, lo, hi = sum(student), min(per_rank("label_min")), max(per_rank("label_max"))
    if hi >= vocab or (lo < 0 and lo != _NO_LABEL_MIN):
        raise ValueError(f"labels: must be in [0, {vocab}) (global ids: the vocabulary is the ranks' slices "
                         f"{student} end to end) or ignore_index={facts.ignore_index}, got labels from {lo} to {hi}")


def agree_on_call(group, check_locally: Callable[[], Tuple[CallFacts, object]]):
    """Run this rank's checks, gather every rank's facts, and check them together.

    ``check_locally()`` raises on a bad argument or returns ``(facts, result)``. Every rank returns
    ``(Layout, result)`` or raises the same error (the first failing rank's, naming it)."""
    check_group(group)
    rank = dist.get_rank(group)
    try:
        facts, result = check_locally()
        values, error = _encode(facts), None
    except Exception as exc:  # any local failure becomes a flag, so that no rank waits for this one
        code = 2 if isinstance(exc, TypeError) else 1 if isinstance(exc, ValueError) else 3
        values, error = [code] + [-1] * (len(_FIELDS) - 1), exc
    ranks = _all_gather_ints(values, group)
    failed = [k for k, r in enumerate(ranks) if r["error"]]
    if failed:
        messages = [None] * len(ranks)
        dist.all_gather_object(messages, None if error is None else str(error), group=group)
        first = failed[0]
        message = f"{messages[first]} (on rank {first} of vocab_parallel_group"
        message += f"; ranks {failed} failed)" if len(failed) > 1 else ")"
        raise _ERRORS[ranks[first]["error"]](message) from error
    _check_agreed(ranks, facts)
    return Layout(tuple(r["vocab_s"] for r in ranks), rank), result


# --- per chunk ------------------------------------------------------------------------------------

def _weighted(w: float, v: Tensor) -> Tensor:
    """``w · v``, a term of weight 0 absent (0, not NaN, where ``v`` is infinite)."""
    return torch.zeros_like(v) if w == 0 else w * v


def _x_log_x(a: Tensor, log_a: Tensor) -> Tensor:
    return torch.where(a > 0, a * log_a, torch.zeros_like(a))


def _log_y_label(log_p_g: Tensor, lam: float) -> Tensor:
    """log ỹ_g = log((1 - λ) + λ p_g), in log space (exact for λ = 1 where p_g underflows)."""
    if lam >= 1:
        return log_p_g
    log_lam = math.log(lam) if lam > 0 else -math.inf
    return torch.logaddexp(torch.full_like(log_p_g, math.log1p(-lam)), log_lam + log_p_g)


# (rows, V_r) float32 buffers the row kernel holds at its peak, the two logits chunks included: the
# chunk plan sizes a vocabulary-parallel chunk by them (kd_chunked.kd_chunk_rows)
ROW_KERNEL_BUFFERS = 7


def _masked_row_sum(a: Tensor, v: Tensor, out: Tensor) -> Tensor:
    """``Σ_j a_j · v_j`` per row in float64, terms with ``a_j = 0`` dropped (no ``0 · ∞``); ``out``
    is scratch of the chunk's shape."""
    torch.mul(a, v, out=out).masked_fill_(a == 0, 0.0)
    return out.sum(1, dtype=torch.float64)


class VocabParallelRows:
    """The ``kd`` ``rows`` contract (docs/kd.md) for one rank's vocabulary slice of a group.

    ``student`` / ``teacher`` are the chunk's ``(n, V_r)`` float32 logits of this rank's slice (the
    driver's fresh chunks: both serve as scratch), ``labels`` global ids. Returns the rows' (loss, d,
    is_hard), identical on every rank; with ``compute_grad``, ``student`` ends holding the gradient for
    this slice's logits. Elementwise work in float32, mostly in place (``ROW_KERNEL_BUFFERS``), row
    sums and per-row scalars in float64."""

    def __init__(self, group, offset: int):
        self.group, self.offset = group, offset

    def _all_reduce(self, t: Tensor, op=dist.ReduceOp.SUM) -> Tensor:
        dist.all_reduce(t, op, group=self.group)
        return t

    def __call__(self, student, teacher, labels, hard, grad_scale, mode, lam, beta, gamma, temperature,
                 ignore_index, vocab, compute_grad):
        rule, kind = MODE_RULES[Mode(mode)]
        width, inv_t = student.shape[1], 1.0 / temperature
        valid = labels != ignore_index
        local = torch.where(valid, labels, 0) - self.offset  # ignored rows read id 0; their terms are dropped
        owns = (local >= 0) & (local < width)
        col = local.clamp(0, width - 1).unsqueeze(1)
        label_x = torch.where(owns, student.gather(1, col).squeeze(1), 0.0)
        label_y = torch.where(owns, teacher.gather(1, col).squeeze(1), 0.0)

        # MAX: the raw row maxima, subtracted before the division by τ; shift origin 0 for a row that
        # is -inf everywhere, so no -inf - (-inf)
        maxima = self._all_reduce(torch.stack((student.amax(1), teacher.amax(1)), 1), dist.ReduceOp.MAX)
        origin = torch.where(maxima == -math.inf, 0.0, maxima)
        ds = student.sub_(origin[:, 0:1]).mul_(inv_t)  # the buffers: ds, dt, es, et, scratch (+ two below)
        dt = teacher.sub_(origin[:, 1:2]).mul_(inv_t)
        es, et = ds.exp(), dt.exp()
        scratch = torch.sub(dt, ds)

        # SUM 1: ss, st, pd, qd and the label's raw logits (only its owner contributes)
        pd = _masked_row_sum(et, scratch, scratch)
        qd = _masked_row_sum(es, torch.sub(ds, dt, out=scratch), scratch)
        sums = torch.stack((es.sum(1, dtype=torch.float64), et.sum(1, dtype=torch.float64), pd, qd,
                            label_x.double(), label_y.double()), 1)
        ss, st, pd, qd, x_g, y_g = self._all_reduce(sums).unbind(1)

        mx, my = maxima[:, 0].double(), maxima[:, 1].double()
        has_distribution = (mx > -math.inf) & (my > -math.inf) & (ss > 0) & (st > 0)
        log_ss, log_st = ss.log(), st.log()
        log_q_g = (x_g - mx) * inv_t - log_ss
        log_p_g = (y_g - my) * inv_t - log_st
        p_g = log_p_g.exp()
        log_y_g = _log_y_label(log_p_g, lam)
        kl_pq = pd / st - log_st + log_ss
        kl_qp = qd / ss - log_ss + log_st
        ce = -log_q_g
        lam_log_lam = lam * math.log(lam) if lam > 0 else 0.0
        d = (lam_log_lam * (1 - p_g) + _weighted(lam, kl_pq - _x_log_x(p_g, log_p_g))
             + _x_log_x(log_y_g.exp(), log_y_g) + _weighted(1 - lam, ce))
        forward_kd = _weighted(1 - lam, ce) + _weighted(lam, kl_pq)
        reverse_kd = _weighted(1 - lam, ce) + _weighted(lam, kl_qp)
        nan = torch.full_like(d, math.nan)  # a row without a distribution: NaN, never a number
        d, forward_kd, reverse_kd = (torch.where(has_distribution, v, nan) for v in (d, forward_kd, reverse_kd))

        if hard is not None:
            is_hard = hard & valid
        elif rule == HardRule.IF_DIFFICULT:
            is_hard = valid & (d > gamma)
        elif rule == HardRule.ALL_VALID:
            is_hard = valid.clone()
        else:
            is_hard = torch.zeros_like(valid)

        log_q = ds.sub_(log_ss.float().unsqueeze(1))  # -inf where q = 0
        log_p = dt.sub_(log_st.float().unsqueeze(1))
        q = es.div_(ss.float().unsqueeze(1))
        p = et.div_(st.float().unsqueeze(1))
        # SUM 2 (modes with hard rows; a fixed choice per call, so every rank runs it): Σ ỹ log(ỹ / m), Σ r q
        hard_terms = kind == LossKind.SKEWED and (hard is not None or rule != HardRule.NONE)
        if hard_terms:
            log_y = (log_p.add_(math.log(lam)) if lam > 0 else log_p.fill_(LOG_FLOOR)).clamp_min_(LOG_FLOOR)
            label_log_y = torch.where(owns, log_y_g.float().clamp_min(LOG_FLOOR), log_y.gather(1, col).squeeze(1))
            log_y.scatter_(1, col, label_log_y.unsqueeze(1))
            log_beta = math.log(beta)
            shifted_q = torch.clamp_min(log_q, LOG_FLOOR, out=scratch).add_(log_beta)  # log β + log q, floored
            if beta < 1:
                log_r = torch.logaddexp(shifted_q, log_y + math.log1p(-beta))  # log m
            else:
                log_r = shifted_q.clone()  # m = q
            log_r = torch.sub(log_y, log_r, out=log_r)
            rq_sum = shifted_q.add_(log_r).sub_(log_beta).exp_().sum(1, dtype=torch.float64)  # Σ r q
            y = torch.exp(log_y, out=scratch)
            y_log_r = _masked_row_sum(y, log_r, log_y)  # log_y is spent: its buffer is scratch
            hard_loss, big_r = self._all_reduce(torch.stack((y_log_r, rq_sum), 1)).unbind(1)
            hard_loss = torch.where(has_distribution, hard_loss, nan)
            loss = torch.where(is_hard, hard_loss, d)
        elif kind == LossKind.FORWARD_KD:
            loss = forward_kd
        elif kind == LossKind.REVERSE_KD:
            loss = reverse_kd
        else:
            loss = d

        if compute_grad:
            grad = student  # the log_q buffer, once it is spent
            if kind == LossKind.REVERSE_KD:
                spread = torch.sub(log_q, log_p, out=scratch).sub_(kl_qp.float().unsqueeze(1)).mul_(q)
                spread.masked_fill_(q == 0, 0.0)  # q = 0: no term, whatever log q - log p
                # (1 - λ)(q - onehot) + λ q (log q - log p - KL(q ‖ p))
                if lam > 0:
                    torch.mul(spread, lam, out=grad)
                else:  # no λ term (spread may be infinite where p = 0)
                    grad.zero_()
                if lam < 1:
                    grad.add_(q, alpha=1 - lam).scatter_add_(1, col, -(1 - lam) * owns.float().unsqueeze(1))
            else:
                target = p.mul_(lam)
                target.scatter_add_(1, col, (1 - lam) * owns.float().unsqueeze(1))
                easy = torch.sub(q, target, out=target)  # q - ỹ
                if hard_terms:
                    r = log_r.exp_().masked_fill_(y == 0, 0.0)  # r = ỹ / m, 0 where ỹ = 0
                    hard_grad = r.neg_().add_(big_r.float().unsqueeze(1)).mul_(q).mul_(beta)  # β q (R - r)
                    torch.where(is_hard.unsqueeze(1), hard_grad, easy, out=grad)
                else:
                    grad.copy_(easy)
            weight = (grad_scale.double() * inv_t).float().unsqueeze(1)
            grad.mul_(weight).masked_fill_(~valid.unsqueeze(1), 0.0)
        zero = torch.zeros_like(d)
        return (torch.where(valid, loss, zero).float(), torch.where(valid, d, zero).float(), is_hard)


@dataclasses.dataclass
class SummedInputGrads:
    """A linear logits source whose input gradient is summed across the group after each chunk: each
    rank's GEMM gives the share of its vocabulary slice, the loss's input gradient is their sum."""

    source: object
    group: object

    @property
    def vocab(self) -> int:
        return self.source.vocab

    def logits(self, rows: slice) -> Tensor:
        return self.source.logits(rows)

    def new_grads(self):
        return self.source.new_grads()

    def accumulate(self, grads, rows: slice, grad_logits: Tensor) -> None:
        self.source.accumulate(grads, rows, grad_logits)
        for g in grads:
            if g is not None:
                dist.all_reduce(g.x[rows], group=self.group)  # a row slice of a contiguous tensor: contiguous


def pass_parts(options: KDOptions, student):
    """``(row kernel, student source)`` of a vocabulary-parallel pass."""
    group = resolve_group(options.group_name)
    if options.reduce_grad_input and hasattr(student, "blocks"):  # given logits have no input gradient
        student = SummedInputGrads(student, group)
    return VocabParallelRows(group, options.vocab_offset), student
