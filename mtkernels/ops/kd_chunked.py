"""The fused self-evolution KD loss on the chunked linear-loss driver (mtkernels/ops/chunked_loss.py).

The KD row kernel (a backend's ``kd`` ``rows``) turns a chunk of student and teacher logits into
per-row (loss, d, hard) and overwrites the student chunk with the gradient of the scaled loss.
``self_evolution_topk`` first ranks every row by d in a statistics-only pass.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .. import backends
from ..reference.self_evolution_kd import hard_rows_by_rank
from . import kd_vocab_parallel
from .chunked_loss import chunk_plan, chunked_pass
from .kd_options import KDOptions

Tensor = torch.Tensor


def kd_chunk_rows(options: KDOptions, n_rows: int, vocab_s: int, vocab_t: int, device: torch.device,
                  ranks: int = 1) -> int:
    """Rows per chunk for global vocabulary sizes ``vocab_s`` (student) and ``vocab_t`` (teacher).

    ``ranks`` > 1: a vocabulary-parallel call over that many ranks, whose row kernel holds
    ``ROW_KERNEL_BUFFERS`` float32 buffers of a rank's average slice per row instead of two of the
    whole vocabulary: the same budget per rank. Global sizes only, so every rank plans the same chunks."""
    columns = vocab_s + vocab_t
    if ranks > 1:
        columns = -(-kd_vocab_parallel.ROW_KERNEL_BUFFERS * max(vocab_s, vocab_t) // ranks)
    return chunk_plan(n_rows, columns, device.type, options.chunk_size)


def _ranked_hard_rows(student, teacher, labels: Tensor, options: KDOptions, vocab: int, chunk: int,
                      rows_kernel) -> Tensor:
    """``self_evolution_topk``'s hard rows: d of every row from a statistics-only pass (d needs no
    gradient), then the spec's ranking (a host read of the valid count)."""
    n = labels.shape[0]
    d = torch.empty(n, dtype=torch.float32, device=labels.device)
    stats_only = dataclasses.replace(options, mode="noevo").row_args(vocab)
    ones = torch.ones(n, dtype=torch.float32, device=labels.device)

    def row_kernel(rows, s, t):
        d[rows] = rows_kernel(s, t, labels[rows], None, ones[rows], *stats_only, False)[1]

    chunked_pass(student, teacher, n, chunk, row_kernel, want_grad=False)
    return hard_rows_by_rank(d, labels != options.ignore_index, options.hard_fraction)


def fused_kd_pass(student, teacher, labels: Tensor, options: KDOptions, grad_scale: Optional[Tensor],
                  hard: Optional[Tensor], backend: str):
    """One pass over the chunks (``options.chunk_size`` rows each, already planned).

    ``student`` / ``teacher`` are logits sources of mtkernels/ops/chunked_loss.py (with
    ``options.group_name``, of this rank's vocabulary slice). Returns
    ``(loss_rows (N,), d (N,), hard (N,) bool, grads)``: grads ``None`` when ``grad_scale`` is None,
    else the student's gradients of ``Σ_i grad_scale_i · loss_i``."""
    if options.group_name is not None:  # one plain-torch row kernel for every backend (docs/kd.md)
        rows_kernel, student = kd_vocab_parallel.pass_parts(options, student)
    else:
        rows_kernel = backends.kernel("kd", "rows", backend)
    n, chunk = labels.shape[0], options.chunk_size
    vocab = min(student.vocab, teacher.vocab)
    if options.mode == "self_evolution_topk" and hard is None:
        hard = _ranked_hard_rows(student, teacher, labels, options, vocab, chunk, rows_kernel)
    device = labels.device
    loss = torch.empty(n, dtype=torch.float32, device=device)
    d = torch.empty(n, dtype=torch.float32, device=device)
    is_hard = torch.empty(n, dtype=torch.bool, device=device)
    want_grad = grad_scale is not None
    scale = grad_scale if want_grad else torch.zeros(n, dtype=torch.float32, device=device)
    row_args = options.row_args(vocab)

    def row_kernel(rows, s, t):
        loss[rows], d[rows], is_hard[rows] = rows_kernel(s, t, labels[rows], None if hard is None else hard[rows],
                                                         scale[rows], *row_args, want_grad)

    grads = chunked_pass(student, teacher, n, chunk, row_kernel, want_grad)
    return loss, d, is_hard, grads
