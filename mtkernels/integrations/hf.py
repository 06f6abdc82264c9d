"""Hugging Face integrations of the self-evolution KD loss (SPEC §2).

* :class:`SelfEvolutionKDTrainer` / :class:`SelfEvolutionKDMixin`: a ``transformers.Trainer`` whose loss is
  :func:`mtkernels.self_evolution_kd_loss` between the student being trained and a frozen teacher. Both models
  run only to their final hidden states; the lm_head GEMMs happen chunk by chunk inside the fused loss, so no
  ``tokens × vocabulary`` logits tensor is ever allocated.
* :func:`trl_generalized_jsd_loss`: a drop-in for TRL's ``GKDTrainer.generalized_jsd_loss`` that computes a
  self-evolution KD mode from the logits TRL already holds.

Requires ``transformers`` (and ``accelerate``, which its Trainer needs).
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Tuple

import torch
from transformers import AutoModelForCausalLM, Trainer

from ..ops import kd_args
from ..ops.kd_from_logits import self_evolution_kd_loss_from_logits
from ..ops.self_evolution_kd import KDStats, self_evolution_kd_loss

Tensor = torch.Tensor
IGNORE_INDEX = -100

__all__ = ["SelfEvolutionKDMixin", "SelfEvolutionKDTrainer", "final_hidden_states", "trl_generalized_jsd_loss"]


# --- running a causal LM to its final hidden states --------------------------------------------------

def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The base (decoder) model under a ``*ForCausalLM``: ``get_decoder()``, else ``.model`` / ``.base_model``."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for name in ("model", "base_model"):
        if decoder is None or decoder is model:
            decoder = getattr(model, name, None)
    if decoder is None or decoder is model:
        raise TypeError(f"cannot find the base model of {type(model).__name__}: expected a *ForCausalLM model")
    return decoder


def final_hidden_states(model: torch.nn.Module, inputs: Dict[str, Any],
                        wrapped: Optional[torch.nn.Module] = None) -> Tuple[Tensor, Any]:
    """Run a causal LM to its final (normalised) hidden states without computing its logits.

    Args:
        model: the unwrapped ``*ForCausalLM`` model (owner of ``lm_head`` and the base model).
        inputs: its keyword inputs (``input_ids (B, T)``, ``attention_mask (B, T)``, ...) without labels.
        wrapped: the module to call when ``model`` is wrapped (DDP, accelerate); defaults to ``model``.

    Returns:
        ``(hidden (B, T, H), outputs)``. When the model's ``forward`` takes ``logits_to_keep``, it is called
        (through ``wrapped``, so wrappers see the forward) with no positions to keep and the base model's
        output is caught by a forward hook; ``outputs.logits`` is then ``(B, 0, V)``. Otherwise the base model
        is called directly and ``outputs`` is its output.
    """
    decoder = _decoder(model)
    inputs = {**inputs, "use_cache": False}
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        outputs = decoder(**inputs)
        return outputs[0], outputs
    caught = []
    handle = decoder.register_forward_hook(lambda _module, _args, out: caught.append(out[0]))
    try:
        device = next(model.parameters()).device
        outputs = (wrapped or model)(**inputs, logits_to_keep=torch.empty(0, dtype=torch.long, device=device))
    finally:
        handle.remove()
    return caught[-1], outputs


def _lm_head(model: torch.nn.Module) -> Tuple[Tensor, Optional[Tensor]]:
    """``(weight (V, H), bias (V,) or None)`` of the model's output embeddings."""
    head = model.get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(model).__name__} has no output embeddings (lm_head)")
    return head.weight, getattr(head, "bias", None)


# --- Trainer -------------------------------------------------------------------------------------

class SelfEvolutionKDMixin:
    """Adds self-evolution knowledge distillation to a ``transformers.Trainer`` subclass.

    Use it first in the bases: ``class MyKDTrainer(SelfEvolutionKDMixin, MyTrainer)``. Keyword arguments
    (the rest go to the Trainer):

        teacher_model: a ``*ForCausalLM`` (or a path for ``AutoModelForCausalLM.from_pretrained``) sharing the
            student's token ids (vocabulary = their shared prefix). Frozen, eval mode, on the student's device.
        kd_mode, kd_lambda, kd_beta, kd_gamma, kd_hard_fraction, kd_temperature: ``mode``, ``lam``, ``beta``,
            ``gamma``, ``hard_fraction``, ``temperature`` of :func:`mtkernels.self_evolution_kd_loss`.
        kd_chunk_size, kd_backend: its ``chunk_size`` and ``backend``.

    Batches need ``labels (B, T)`` (``-100`` = ignored), used as for a causal LM: position ``t`` predicts
    ``labels[:, t + 1]``; a ``shift_labels (B, T)`` entry, if present, is taken as already aligned. The loss is
    a mean over the valid tokens of the whole accumulated (and, with ``average_tokens_across_devices``,
    all-process) batch, exactly like the Trainer's own causal-LM loss. The hard-token share and mean
    difficulty since the last log are added to each training log as ``kd_hard_fraction`` and
    ``kd_mean_difficulty``. Evaluation computes the KD loss only (use ``prediction_loss_only=True``):
    no logits are computed. Not supported: ``DataParallel`` (several GPUs in one process; use DDP) and
    FSDP / DeepSpeed ZeRO-3, whose lm_head weights are sharded outside the forward.
    """

    def __init__(self, *args, teacher_model=None, kd_mode: str = "self_evolution", kd_lambda: float = 0.5,
                 kd_beta: float = 0.5, kd_gamma: float = 0.4, kd_hard_fraction: float = 0.2,
                 kd_temperature: float = 1.0, kd_chunk_size: Optional[int] = None, kd_backend: str = "auto",
                 **kwargs):
        if teacher_model is None:
            raise ValueError("SelfEvolutionKDMixin: teacher_model is required")
        kd_args.check_options(kd_mode, kd_lambda, kd_beta, kd_gamma, kd_hard_fraction, kd_temperature, "mean",
                              kd_chunk_size)
        super().__init__(*args, **kwargs)
        if self.args.n_gpu > 1:
            raise ValueError("SelfEvolutionKDMixin does not support DataParallel (n_gpu > 1); launch with torchrun")
        if isinstance(teacher_model, str):
            teacher_model = AutoModelForCausalLM.from_pretrained(teacher_model)
        self.teacher_model = teacher_model.to(self.args.device).eval().requires_grad_(False)
        self.kd_options = dict(mode=kd_mode, lam=kd_lambda, beta=kd_beta, gamma=kd_gamma,
                               hard_fraction=kd_hard_fraction, temperature=kd_temperature, chunk_size=kd_chunk_size,
                               backend=kd_backend)
        # The loss below always normalises by `num_items_in_batch` when given: ask the Trainer to count it (over
        # the shifted labels) whatever the model's forward accepts. Its default `loss_is_scaled_for_ga` then
        # matches: scaled exactly when `num_items_in_batch` is not None.
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True
        self._kd_stats: Optional[Tensor] = None  # (3,) float64: valid rows, hard rows, Σ difficulty

    def _teacher_hidden(self, inputs: Dict[str, Any], device: torch.device) -> Tensor:
        """Teacher's final hidden states ``(B, T, H_t)`` on ``device``, without grad, in eval mode."""
        teacher = self.teacher_model
        if next(teacher.parameters()).device != device:
            self.teacher_model = teacher = teacher.to(device)
        teacher.eval()
        with torch.no_grad():
            hidden, _ = final_hidden_states(teacher, inputs)
        return hidden.to(device)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """The KD loss ``()`` of a batch (see the class docstring); with ``return_outputs``, also the student's
        forward outputs (without logits)."""
        inputs = dict(inputs)
        labels, shift_labels = inputs.pop("labels", None), inputs.pop("shift_labels", None)
        if labels is None and shift_labels is None:
            raise ValueError("SelfEvolutionKDMixin: batches need `labels` (B, T) for the KD loss")
        student = self.accelerator.unwrap_model(model)
        hidden_s, outputs = final_hidden_states(student, inputs, wrapped=model)
        hidden_t = self._teacher_hidden(inputs, hidden_s.device)
        if shift_labels is None:  # position t predicts token t + 1
            targets, hidden_s, hidden_t = labels[..., 1:], hidden_s[..., :-1, :], hidden_t[..., :-1, :]
        else:
            targets = shift_labels
        weight_s, bias_s = _lm_head(student)
        weight_t, bias_t = _lm_head(self.teacher_model)
        loss, stats = self_evolution_kd_loss(
            hidden_s.reshape(-1, hidden_s.shape[-1]), weight_s, hidden_t.reshape(-1, hidden_t.shape[-1]),
            weight_t.to(hidden_s.device), targets.reshape(-1).to(hidden_s.device), student_bias=bias_s,
            teacher_bias=None if bias_t is None else bias_t.to(hidden_s.device), ignore_index=IGNORE_INDEX,
            reduction="mean", num_items_in_batch=num_items_in_batch, return_stats=True, **self.kd_options)
        if model.training:
            self._record_stats(stats)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # `num_items_in_batch` counts every process's tokens while DDP averages gradients: undo the average,
            # as Trainer.compute_loss does.
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, outputs) if return_outputs else loss

    def _record_stats(self, stats: KDStats) -> None:
        """Accumulate the hard-token statistics on device (no host sync until the next log)."""
        valid = stats.num_valid.double()
        new = torch.stack([valid, stats.num_hard.double(), stats.mean_difficulty.double() * valid])
        self._kd_stats = new if self._kd_stats is None else self._kd_stats + new

    def log(self, logs: Dict[str, float], *args, **kwargs) -> None:
        """Add ``kd_hard_fraction`` and ``kd_mean_difficulty`` (all processes, since the last log) to training logs."""
        if "loss" in logs and self._kd_stats is not None:
            valid, hard, difficulty = self.accelerator.reduce(self._kd_stats, reduction="sum").tolist()
            logs["kd_hard_fraction"] = hard / max(valid, 1.0)
            logs["kd_mean_difficulty"] = difficulty / max(valid, 1.0)
            self._kd_stats = None
        super().log(logs, *args, **kwargs)


class SelfEvolutionKDTrainer(SelfEvolutionKDMixin, Trainer):
    """``transformers.Trainer`` training a causal-LM student by self-evolution KD from ``teacher_model``.

    ``SelfEvolutionKDTrainer(model=student, teacher_model=teacher, args=TrainingArguments(...),
    train_dataset=..., kd_mode="self_evolution", kd_lambda=0.5, ...)``; see :class:`SelfEvolutionKDMixin`.
    """


# --- TRL ------------------------------------------------------------------------------------------

def trl_generalized_jsd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Optional[Tensor] = None,
                             beta: float = 0.5, temperature: float = 1.0, reduction: str = "batchmean",
                             num_items_in_batch=None, *, kd_mode: str = "self_evolution", kd_lambda: float = 0.5,
                             kd_beta: float = 0.5, kd_gamma: float = 0.4, kd_hard_fraction: float = 0.2,
                             backend: str = "auto") -> Tensor:
    """Drop-in for TRL's ``GKDTrainer.generalized_jsd_loss`` computing a self-evolution KD mode instead.

    Install it as a static method, with the KD options bound by ``functools.partial`` if needed::

        GKDTrainer.generalized_jsd_loss = staticmethod(functools.partial(trl_generalized_jsd_loss, kd_mode="skew"))

    Args:
        student_logits: ``(B, T, V_s)``, already shifted (position t predicts ``labels[:, t]``).
        teacher_logits: ``(B, T, V_t)``; gets no gradient.
        labels: ``(B, T)``, ``-100`` = ignored. Required: self-evolution KD targets contain the gold token.
        beta: TRL's JSD interpolation weight; accepted for the signature and ignored (SE-KD's β is ``kd_beta``).
        temperature: divides both logits (no τ² factor, as in TRL).
        reduction: as TRL: ``batchmean`` = Σ / valid tokens, ``sum``, ``mean`` = Σ / (valid tokens × V_s)
            (TRL averages over vocabulary entries too), ``none`` = per-token losses ``(B, T)`` (TRL returns
            per-entry ones, which SE-KD does not have).
        num_items_in_batch: when given, the loss is Σ / ``num_items_in_batch`` whatever ``reduction`` (as TRL).

    Returns:
        the loss ``()`` (``(B, T)`` for ``none``).
    """
    del beta  # TRL's JSD β has no meaning here
    if labels is None:
        raise ValueError("trl_generalized_jsd_loss: self-evolution KD modes need `labels` (the gold tokens are "
                         "part of the target); GKDTrainer passes them from the batch")
    if reduction not in ("batchmean", "sum", "mean", "none"):
        raise ValueError(f"reduction must be 'batchmean', 'sum', 'mean' or 'none', got {reduction!r}")
    options = dict(mode=kd_mode, lam=kd_lambda, beta=kd_beta, gamma=kd_gamma, hard_fraction=kd_hard_fraction,
                   temperature=temperature, ignore_index=IGNORE_INDEX, backend=backend)
    labels = labels.to(student_logits.device)
    if num_items_in_batch is not None:
        return self_evolution_kd_loss_from_logits(student_logits, teacher_logits, labels, reduction="mean",
                                                  num_items_in_batch=num_items_in_batch, **options)
    ours = {"batchmean": "mean", "mean": "mean", "sum": "sum", "none": "none"}[reduction]
    loss = self_evolution_kd_loss_from_logits(student_logits, teacher_logits, labels, reduction=ours, **options)
    return loss / student_logits.shape[-1] if reduction == "mean" else loss
