"""The fused self-evolution KD loss: logits in row chunks, gradients computed in the forward pass.

For each chunk of rows: the student and teacher logits come from GEMMs (or the given teacher
logits), a backend's ``kd`` row kernel turns them into per-row (loss, d, hard) and overwrites the
student chunk with the gradient of the scaled loss, and two more GEMMs fold that gradient into
``grad_input`` and the fp32 ``grad_weight`` / ``grad_bias`` accumulators. Between chunks only O(N)
statistics live; the largest temporary is one chunk of logits.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .. import backends
from ..reference.self_evolution_kd import MODES, num_hard_rows

Tensor = torch.Tensor
# Bytes of one chunk's student + teacher float32 logits. CPU: the working set above the inputs and
# the returned gradients stays under 64 MiB. CUDA: memory is plentiful and few-row chunks would
# leave the GEMMs launch-bound, so a chunk there holds about a thousand rows at V = 128k.
CHUNK_BYTES = {"cpu": 60 * 2**20, "cuda": 1024 * 2**20}
CPU_VOCAB_BLOCK = 1024


@dataclasses.dataclass(frozen=True)
class KDParams:
    mode: str
    lam: float
    beta: float
    gamma: float
    hard_fraction: float
    temperature: float
    ignore_index: int

    def row_args(self, vocab: int):
        return (MODES.index(self.mode), self.lam, self.beta, self.gamma, self.temperature, self.ignore_index, vocab)


@dataclasses.dataclass
class Linear:
    """Student or teacher logits ``x @ weight.T + bias``, a row range at a time, as float32 ``(rows, V)``;
    for the student also the gradients ``(grad_x, grad_weight fp32, grad_bias fp32 or None)``.

    The GEMMs run in the weight's dtype, as autocast runs a linear layer whose weight is already in
    its compute dtype: each chunk of ``x`` (and the bias, once) is cast to it, never the weight."""

    x: Tensor  # (N, H)
    weight: Tensor  # (V, H)
    bias: Optional[Tensor]  # (V,)

    def __post_init__(self):  # gradients are formed by hand here; out= GEMMs refuse inputs that require grad
        self.x, self.weight = self.x.detach(), self.weight.detach()
        self.bias = None if self.bias is None else self.bias.detach().to(self.weight.dtype)

    def _rows(self, rows: slice) -> Tensor:
        return self.x[rows].to(self.weight.dtype)

    @property
    def vocab(self) -> int:
        return self.weight.shape[0]

    def logits(self, rows: slice) -> Tensor:
        x = self._rows(rows)
        if x.device.type != "cpu":
            out = x @ self.weight.T if self.bias is None else torch.addmm(self.bias, x, self.weight.T)
            return out.float()
        # On CPU a chunk has few rows; BLAS runs that skinny GEMM ~1.3x faster as column blocks of
        # CPU_VOCAB_BLOCK written straight into the float32 chunk (which also skips a bf16 chunk copy).
        out = torch.empty(x.shape[0], self.vocab, dtype=torch.float32, device=x.device)
        in_place = self.weight.dtype == torch.float32
        for v in range(0, self.vocab, CPU_VOCAB_BLOCK):
            cols = slice(v, v + CPU_VOCAB_BLOCK)
            target = out[:, cols] if in_place else None
            w = self.weight[cols].T
            block = (torch.mm(x, w, out=target) if self.bias is None
                     else torch.addmm(self.bias[cols], x, w, out=target))
            if not in_place:
                out[:, cols] = block
        return out

    def new_grads(self):
        fp32 = dict(dtype=torch.float32, device=self.x.device)
        grad_x = torch.empty(self.x.shape, dtype=self.x.dtype, device=self.x.device)
        # the first chunk overwrites grad_weight (see accumulate): only an empty batch needs zeros
        grad_weight = (torch.empty if self.x.shape[0] > 0 else torch.zeros)(self.weight.shape, **fp32)
        grad_bias = None if self.bias is None else torch.zeros(self.bias.shape, **fp32)
        return grad_x, grad_weight, grad_bias

    def accumulate(self, grads, rows: slice, grad_logits: Tensor) -> None:
        grad_x, grad_weight, grad_bias = grads
        if grad_x.dtype == self.weight.dtype:
            torch.mm(grad_logits.to(self.weight.dtype), self.weight, out=grad_x[rows])  # no temporary
        else:
            grad_x[rows] = grad_logits.to(self.weight.dtype) @ self.weight
        # fp32 accumulation across chunks; beta = 0 on the first ignores the uninitialised values (NaN too)
        grad_weight.addmm_(grad_logits.T, self.x[rows].float(), beta=0 if rows.start == 0 else 1)
        if grad_bias is not None:
            grad_bias.add_(grad_logits.sum(0))


@dataclasses.dataclass
class Logits:
    """Given logits ``(N, V)``, a row range at a time as float32; the student's gradient is ``(grad_logits,)``."""

    values: Tensor

    @property
    def vocab(self) -> int:
        return self.values.shape[1]

    def logits(self, rows: slice) -> Tensor:
        # a fresh float32 copy: the row kernel overwrites it with the gradient
        return self.values[rows].to(torch.float32, copy=True).contiguous()

    def new_grads(self):
        return (torch.empty_like(self.values),)

    def accumulate(self, grads, rows: slice, grad_logits: Tensor) -> None:
        grads[0][rows] = grad_logits


def chunk_rows(n: int, vocab_s: int, vocab_t: int, chunk_size: Optional[int], device: torch.device) -> int:
    if chunk_size is not None:
        return max(1, min(int(chunk_size), n))
    per_row = 4 * (vocab_s + vocab_t)
    return max(1, min(n, CHUNK_BYTES.get(device.type, CHUNK_BYTES["cpu"]) // per_row))


def hard_rows_by_rank(student, teacher, labels: Tensor, params: KDParams, vocab: int, chunk: int,
                      rows_kernel) -> Tensor:
    """``self_evolution_topk``: the ``round(hard_fraction · n_valid)`` valid rows of largest d.

    A statistics-only pass over every chunk first (d needs no gradient); the count is a host read.
    """
    n = labels.shape[0]
    d = torch.empty(n, dtype=torch.float32, device=labels.device)
    stats_only = dataclasses.replace(params, mode="noevo")
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        s, t = student.logits(rows), teacher.logits(rows)
        ones = torch.ones(s.shape[0], dtype=torch.float32, device=s.device)
        d[rows] = rows_kernel(s, t, labels[rows], None, ones, *stats_only.row_args(vocab), False)[1]
        del s, t  # before the next chunk is allocated: one chunk of logits at a time
    valid = labels != params.ignore_index
    n_hard = num_hard_rows(params.hard_fraction, int(valid.sum()))
    order = torch.sort(d.masked_fill(~valid, float("-inf")), descending=True, stable=True).indices[:n_hard]
    return torch.zeros_like(valid).index_fill(0, order, True) & valid


def fused_kd_pass(student, teacher, labels: Tensor, params: KDParams, grad_scale: Optional[Tensor],
                  hard: Optional[Tensor], chunk: int, backend: str):
    """One pass over all chunks. ``student`` and ``teacher`` are :class:`Linear` or :class:`Logits`.
    Returns ``(loss_rows (N,), d (N,), hard (N,) bool, grads)``, grads ``None`` when ``grad_scale``
    is None, else the student's gradients of ``Σ_i grad_scale_i · loss_i``."""
    rows_kernel = backends.kernel("kd", "rows", backend)
    n = labels.shape[0]
    vocab = min(student.vocab, teacher.vocab)
    if params.mode == "self_evolution_topk" and hard is None:
        hard = hard_rows_by_rank(student, teacher, labels, params, vocab, chunk, rows_kernel)
    device = labels.device
    loss = torch.empty(n, dtype=torch.float32, device=device)
    d = torch.empty(n, dtype=torch.float32, device=device)
    is_hard = torch.empty(n, dtype=torch.bool, device=device)
    want_grad = grad_scale is not None
    grads = student.new_grads() if want_grad else None
    scale = grad_scale if want_grad else torch.zeros(n, dtype=torch.float32, device=device)
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        s, t = student.logits(rows), teacher.logits(rows)
        loss[rows], d[rows], is_hard[rows] = rows_kernel(
            s, t, labels[rows], None if hard is None else hard[rows], scale[rows], *params.row_args(vocab), want_grad)
        if want_grad:  # s now holds d(scaled loss)/d(student logits)
            student.accumulate(grads, rows, s)
        del s, t  # before the next chunk is allocated: one chunk of logits at a time
    return loss, d, is_hard, grads
