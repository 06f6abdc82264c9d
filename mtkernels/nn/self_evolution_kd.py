"""``SelfEvolutionKDLoss``: the fused loss as a module, argument order of Liger-Kernel's fused
linear distillation losses (student input, student weight, teacher input, teacher weight, true labels)."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from ..ops.kd_options import KDOptions
from ..ops.self_evolution_kd import self_evolution_kd_loss


class SelfEvolutionKDLoss(torch.nn.Module):
    """Self-evolution KD (or a baseline, by ``mode``) from hidden states and lm_head weights.

    ``forward(student_input (N, H_s), student_weight (V_s, H_s), teacher_input (N, H_t),
    teacher_weight (V_t, H_t), true_labels (N,), student_bias=None, teacher_bias=None,
    num_items_in_batch=None)`` returns the loss; see :func:`mtkernels.self_evolution_kd_loss`. The labels
    may also be passed as ``labels=`` (``true_labels`` is Liger-Kernel's name).

    ``vocab_parallel_group``: a process group whose ranks each pass their contiguous vocabulary slice of
    the weights and biases (``(V_r, H)``, ``(V_r,)``); ``vocab_parallel_reduce_grad_input``: whether the
    input gradient is summed across it (see :func:`mtkernels.self_evolution_kd_loss`).
    """

    def __init__(self, mode: str = "self_evolution", lam: float = 0.5, beta: float = 0.5, gamma: float = 0.4,
                 hard_fraction: float = 0.2, temperature: float = 1.0, ignore_index: int = -100,
                 reduction: str = "mean", chunk_size: Optional[int] = None, backend: str = "auto",
                 vocab_parallel_group=None, vocab_parallel_reduce_grad_input: bool = True):
        super().__init__()
        # checked now, not at the first step (a bad option raises naming it)
        self.options = KDOptions(mode=mode, lam=lam, beta=beta, gamma=gamma, hard_fraction=hard_fraction,
                                 temperature=temperature, ignore_index=ignore_index, reduction=reduction,
                                 chunk_size=chunk_size, reduce_grad_input=vocab_parallel_reduce_grad_input)
        if vocab_parallel_group is not None:
            from ..ops.kd_vocab_parallel import check_group

            check_group(vocab_parallel_group)
        self.vocab_parallel_group = vocab_parallel_group
        self.backend = backend

    def forward(self, student_input, student_weight, teacher_input, teacher_weight, true_labels=None,
                student_bias=None, teacher_bias=None, num_items_in_batch=None, *, labels=None):
        if (true_labels is None) == (labels is None):
            raise TypeError("SelfEvolutionKDLoss: pass the labels (N,) once, as true_labels (5th argument) or "
                            "labels=")
        return self_evolution_kd_loss(student_input, student_weight, teacher_input, teacher_weight,
                                      true_labels if labels is None else labels, student_bias=student_bias,
                                      teacher_bias=teacher_bias, num_items_in_batch=num_items_in_batch,
                                      backend=self.backend, vocab_parallel_group=self.vocab_parallel_group,
                                      **self._loss_kwargs())

    def _loss_kwargs(self) -> dict:
        kwargs = dataclasses.asdict(self.options)
        for per_call in ("group_name", "vocab_offset"):  # set by each call from vocab_parallel_group
            del kwargs[per_call]
        kwargs["vocab_parallel_reduce_grad_input"] = kwargs.pop("reduce_grad_input")
        return kwargs

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in {**self._loss_kwargs(), "backend": self.backend}.items())
