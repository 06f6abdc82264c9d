"""Hugging Face integrations of the self-evolution KD loss (docs/kd.md).

* :class:`SelfEvolutionKDTrainer` / :class:`SelfEvolutionKDMixin`: a ``transformers.Trainer`` whose loss is
  :func:`mtkernels.self_evolution_kd_loss` between the student being trained and a frozen teacher. Both models
  run only to their final hidden states; the lm_head GEMMs happen chunk by chunk inside the fused loss, so no
  ``tokens × vocabulary`` logits tensor is ever allocated.
* :func:`trl_generalized_jsd_loss`: a drop-in for TRL's ``GKDTrainer.generalized_jsd_loss`` that computes a
  self-evolution KD mode from the logits TRL already holds.

Requires ``transformers`` (and ``accelerate``, which its Trainer needs).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import warnings
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from accelerate.utils import extract_model_from_parallel
from transformers import AutoModelForCausalLM, Trainer

from ..ops.kd_options import KDOptions
from ..ops.kd_from_logits import self_evolution_kd_loss_from_logits
from ..ops.self_evolution_kd import KDStats, self_evolution_kd_loss

Tensor = torch.Tensor
IGNORE_INDEX = -100

__all__ = ["SelfEvolutionKDMixin", "SelfEvolutionKDTrainer", "final_hidden_states", "output_head",
           "trl_generalized_jsd_loss"]


# --- unwrapping: DDP, torch.compile, PEFT ---------------------------------------------------------

def _peft():
    """The ``peft`` module if it has been imported, else ``None``: a model can only hold PEFT layers once it
    is, so this never imports it."""
    return sys.modules.get("peft")


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The ``*ForCausalLM`` under the wrappers the Trainer may hand over: DDP / DataParallel / DeepSpeed,
    ``torch.compile`` and PEFT (``PeftModel`` and its tuner model)."""
    peft = _peft()
    while True:
        unwrapped = extract_model_from_parallel(model, keep_torch_compile=False)
        if peft is not None and isinstance(unwrapped, (peft.PeftModel, peft.PeftMixedModel)):
            if isinstance(unwrapped, peft.PeftModel) and unwrapped.active_peft_config.is_prompt_learning:
                # Virtual tokens change the sequence length: hidden states no longer line up with the labels.
                raise NotImplementedError("PEFT prompt learning (prompt / prefix / p-tuning) is not supported")
            unwrapped = unwrapped.base_model
        if peft is not None and isinstance(unwrapped, peft.tuners.tuners_utils.BaseTuner):
            unwrapped = unwrapped.model
        if unwrapped is model:
            return model
        model = unwrapped


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The base (decoder) model under a ``*ForCausalLM``: ``get_decoder()``, else ``.model`` / ``.base_model``."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for name in ("model", "base_model"):
        if decoder is None or decoder is model:
            decoder = getattr(model, name, None)
    if decoder is None or decoder is model:
        raise TypeError(f"cannot find the base model of {type(model).__name__}: expected a *ForCausalLM model")
    return decoder


# --- running a causal LM to its final hidden states --------------------------------------------------

def _call_catching_hidden(call: Callable[..., Any], decoder: torch.nn.Module, inputs: Dict[str, Any]
                          ) -> Tuple[Tensor, Any]:
    """``call(**inputs)``, with the output of ``decoder`` (somewhere inside it) caught by a forward hook."""
    caught = []
    handle = decoder.register_forward_hook(lambda _module, _args, out: caught.append(out[0]))
    try:
        outputs = call(**inputs)
    finally:
        handle.remove()
    if not caught:
        raise RuntimeError(f"{getattr(call, '__qualname__', type(call).__name__)} did not run its base model "
                           f"{type(decoder).__name__}")
    return caught[-1], outputs


def final_hidden_states(model: torch.nn.Module, inputs: Dict[str, Any],
                        wrapped: Optional[torch.nn.Module] = None, *, bypass_hooks: bool = False
                        ) -> Tuple[Tensor, Any]:
    """Run a causal LM to its final (normalised) hidden states without computing its logits.

    Args:
        model: a ``*ForCausalLM`` model, possibly wrapped (DDP, accelerate, ``torch.compile``, PEFT).
        inputs: its keyword inputs (``input_ids (B, T)``, ``attention_mask (B, T)``, ...) without labels.
        wrapped: the module to call, if not ``model`` itself.

    Returns:
        ``(hidden (B, T, H), outputs)``. The forward always goes through the module called (so DDP
        synchronises gradients, PEFT applies its adapters and a compiled module runs compiled); the base
        model's output is caught by a forward hook. When the innermost ``*ForCausalLM`` takes
        ``logits_to_keep``, no position is kept and ``outputs.logits`` is ``(B, 0, V)``; otherwise the full
        logits are computed (and a warning says so), unless nothing wraps the model, whose base model is then
        called directly and ``outputs`` is its output. ``bypass_hooks=True`` calls ``forward`` itself, without
        the module's own hooks (used inside an FSDP2 forward method of that module, whose hooks already ran).
    """
    call = model if wrapped is None else wrapped
    causal_lm = _causal_lm(call)
    decoder = _decoder(causal_lm)
    inputs = {**inputs, "use_cache": False}
    run = call.forward if bypass_hooks else call
    if "logits_to_keep" in inspect.signature(causal_lm.forward).parameters:
        keep_none = torch.empty(0, dtype=torch.long, device=next(causal_lm.parameters()).device)
        return _call_catching_hidden(run, decoder, {**inputs, "logits_to_keep": keep_none})
    if call is causal_lm:
        outputs = decoder(**inputs)
        return outputs[0], outputs
    warnings.warn(f"{type(causal_lm).__name__}.forward takes no `logits_to_keep`: the wrapped forward computes "
                  "its full (B, T, V) logits, which the KD loss does not use", stacklevel=2)
    return _call_catching_hidden(run, decoder, inputs)


# --- the output head (lm_head) as the forward applies it ---------------------------------------------

def _lora_output_head(head: torch.nn.Module) -> Tuple[Tensor, Optional[Tensor]]:
    """Effective ``(weight (V, H), bias (V,) or None)`` of a PEFT LoRA ``Linear``: the base layer's plus
    ``scaling · B · A`` (and ``scaling · b_B``) of each active adapter, differentiable in A and B. Computed in
    the base weight's dtype, as PEFT's ``merge`` does."""
    base = head.get_base_layer()
    weight, bias = base.weight, getattr(base, "bias", None)
    if head.disable_adapters or head.merged:  # merged adapters are already part of the base weight
        return weight, bias
    for adapter in head.active_adapters:
        if adapter not in head.lora_A:
            continue
        if adapter in getattr(head, "lora_variant", {}):
            raise NotImplementedError(f"lm_head adapter {adapter!r}: LoRA variants (DoRA, ...) on lm_head are not "
                                      "supported; use plain LoRA or leave lm_head out of target_modules")
        dropout = head.lora_dropout[adapter]
        if dropout.training and getattr(dropout, "p", 0.0) > 0:
            # Dropout acts on the lm_head input, row by row: it cannot be folded into one effective weight.
            raise ValueError(f"lm_head adapter {adapter!r}: lora_dropout={dropout.p} on lm_head cannot be fused "
                             "into the KD loss; use lora_dropout=0 or leave lm_head out of target_modules")
        weight = weight + head.get_delta_weight(adapter).to(weight.dtype)
        lora_bias = head.lora_B[adapter].bias
        if lora_bias is not None:
            scaled = (lora_bias * head.scaling[adapter]).to(weight.dtype)
            bias = scaled if bias is None else bias + scaled
    return weight, bias


def _output_embeddings(model: torch.nn.Module) -> torch.nn.Module:
    """The lm_head module of a (possibly wrapped) causal LM."""
    causal_lm = _causal_lm(model)
    head = causal_lm.get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(causal_lm).__name__} has no output embeddings (lm_head)")
    return head


def output_head(model: torch.nn.Module) -> Tuple[Tensor, Optional[Tensor]]:
    """``(weight (V, H), bias (V,) or None)`` of a causal LM's lm_head as its forward applies it.

    ``model`` may be wrapped (DDP, accelerate, ``torch.compile``, PEFT). A PEFT LoRA lm_head gives its
    effective weight ``W + Σ scaling · B · A`` over the active adapters (a new tensor, so gradients reach A and
    B through autograd; LoRA dropout on lm_head raises in training mode, since it cannot be fused); a
    ``modules_to_save`` copy gives the copy's weight. Other PEFT layers on lm_head raise
    ``NotImplementedError``.
    """
    head = _output_embeddings(model)
    peft = _peft()
    if peft is not None:
        if isinstance(head, peft.tuners.lora.Linear):
            return _lora_output_head(head)
        modules_to_save = peft.utils.other.ModulesToSaveWrapper
        wrappers = (peft.tuners.tuners_utils.BaseTunerLayer,
                    getattr(peft.utils.other, "AuxiliaryTrainingWrapper", modules_to_save))  # older PEFT: none
        # A modules_to_save wrapper forwards `.weight` to the copy being trained; others would give the base.
        if isinstance(head, wrappers) and not isinstance(head, modules_to_save):
            raise NotImplementedError(f"lm_head is a PEFT {type(head).__name__}: only LoRA and modules_to_save "
                                      "are supported on lm_head")
    return head.weight, getattr(head, "bias", None)


# --- engines that shard the lm_head weight outside the forward: FSDP2, DeepSpeed ZeRO-3 ----------------

_FSDP_METHOD = "_mtkernels_kd_forward"


def _fsdp2_root(model: torch.nn.Module) -> Optional[torch.nn.Module]:
    """The ``fully_shard`` (FSDP2) module the Trainer hands over (possibly under ``torch.compile``), else None."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return None
    for candidate in (model, extract_model_from_parallel(model, keep_torch_compile=False)):
        if isinstance(candidate, FSDPModule):
            return candidate
    return None


def _call(fn: Callable[[], Any]) -> Any:
    return fn()


def _in_fsdp_forward(root: torch.nn.Module, fn: Callable[[], Tuple[Tensor, ...]]) -> Tuple[Tensor, ...]:
    """``fn()`` inside a forward method of the FSDP2 ``root``: its parameters (lm_head with them) are all-gathered
    once for the call, and the output's backward reaches FSDP's reduce-scatter. ``fn`` returns tensors."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    if _FSDP_METHOD not in root.__dict__:
        setattr(root, _FSDP_METHOD, _call)  # an instance attribute: called as _call(fn), whatever the class
        register_fsdp_forward_method(root, _FSDP_METHOD)
    return getattr(root, _FSDP_METHOD)(fn)


def _zero3(module: torch.nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions ``module``'s parameters (they carry a ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def _as_module_forward(module: torch.nn.Module, fn: Callable[[], Tuple[Tensor, ...]]) -> Tuple[Tensor, ...]:
    """``fn()`` run as ``module``'s forward, for ZeRO-3: its hooks gather the module's parameters (all of them:
    the module is flagged a ZeRO-3 leaf, so a LoRA head's base layer and adapters come too) before ``fn`` and,
    through the output's backward hook, again before the gradient reaches them, where the engine reduces it."""
    module._z3_leaf = True
    module.forward = lambda: fn()  # instance attribute: shadows the class's forward for this call
    try:
        return module()
    finally:
        del module.forward


def _gathered(*modules: torch.nn.Module):
    """A context in which ZeRO-3-partitioned parameters of ``modules`` (the frozen teacher's lm_head: only read
    in the forward, since the loss's gradients are complete when it ends) are whole; otherwise nothing."""
    params = [p for m in modules for p in m.parameters() if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


# --- Trainer -------------------------------------------------------------------------------------

def _warn_if_vocabularies_differ(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    vocab_s, vocab_t = (_output_embeddings(m).weight.shape[0] for m in (student, teacher))
    if vocab_s != vocab_t:
        warnings.warn(f"student vocabulary ({vocab_s}) and teacher vocabulary ({vocab_t}) differ in size: the KD "
                      f"loss uses their shared prefix, the first {min(vocab_s, vocab_t)} token ids, which must mean "
                      "the same tokens in both", stacklevel=3)


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
    ``kd_mean_difficulty``.

    ``kd_mode="self_evolution_topk"`` picks its ``kd_hard_fraction`` hardest tokens within each call of the
    loss, that is per micro-batch and per process: which tokens are hard (and so the loss) depends on
    ``per_device_train_batch_size``, ``gradient_accumulation_steps`` and the number of processes, unlike the
    threshold modes (``self_evolution``), whose hard tokens are fixed token by token.

    If the student's and the teacher's vocabularies differ in size, the loss runs on their shared prefix
    (the first ``min(V_s, V_t)`` ids) and a warning names both sizes. ``label_smoothing_factor`` is
    rejected (the KD loss has no label smoothing).

    Evaluation computes the KD loss only: no logits are computed, so use ``prediction_loss_only=True``.
    Where the Trainer asks for predictions anyway (``compute_metrics`` given, ``predict()``), a warning says
    that they are empty ``(B, 0, V)`` logits.

    The student's forward goes through the module the Trainer prepared (DDP, ``torch.compile``, PEFT), and its
    lm_head is applied as that forward would apply it, LoRA adapters included (see :func:`output_head`).
    Engines: DDP as is. FSDP2 (``fully_shard``, e.g. accelerate's FSDP2 plugin): the student's forward and the
    loss run in one forward method registered on the root FSDP module (``register_fsdp_forward_method``), so
    the lm_head weight, which must belong to the root's FSDP unit (as with a transformer-layer wrap policy), is
    all-gathered once per step and its gradient is reduce-scattered. DeepSpeed ZeRO-3: the loss runs as the
    student lm_head's forward, so the engine gathers its weights and reduces their gradient; the teacher's
    lm_head is gathered for the loss with ``deepspeed.zero.GatheredParameters``. Not supported:
    ``DataParallel`` (several GPUs in one process; use DDP) and FSDP1.
    """

    def __init__(self, *args, teacher_model=None, kd_mode: str = "self_evolution", kd_lambda: float = 0.5,
                 kd_beta: float = 0.5, kd_gamma: float = 0.4, kd_hard_fraction: float = 0.2,
                 kd_temperature: float = 1.0, kd_chunk_size: Optional[int] = None, kd_backend: str = "auto",
                 **kwargs):
        if teacher_model is None:
            raise ValueError("SelfEvolutionKDMixin: teacher_model is required")
        KDOptions(mode=kd_mode, lam=kd_lambda, beta=kd_beta, gamma=kd_gamma, hard_fraction=kd_hard_fraction,
                  temperature=kd_temperature, chunk_size=kd_chunk_size)  # raises on a bad option, before training
        super().__init__(*args, **kwargs)
        if self.args.n_gpu > 1:
            raise ValueError("SelfEvolutionKDMixin does not support DataParallel (n_gpu > 1); launch with torchrun")
        if self.args.label_smoothing_factor != 0:
            raise ValueError(f"SelfEvolutionKDMixin: label_smoothing_factor={self.args.label_smoothing_factor} is "
                             "not supported (the KD loss has no label smoothing); set it to 0")
        if isinstance(teacher_model, str):
            teacher_model = AutoModelForCausalLM.from_pretrained(teacher_model)
        self.teacher_model = teacher_model.to(self.args.device).eval().requires_grad_(False)
        _warn_if_vocabularies_differ(self.model, self.teacher_model)
        self._warned_empty_predictions = False
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
        caught = []

        root = _fsdp2_root(model)

        def student_loss():
            # Inside the FSDP2 forward method the root's own hooks have run: a nested root forward would reshard
            # lm_head (accelerate's reshard_after_forward) before the loss reads it, so call forward itself.
            loss, stats, outputs = self._student_kd_loss(root or model, inputs, labels, shift_labels,
                                                         num_items_in_batch, bypass_hooks=root is not None)
            caught.append(outputs)
            return (loss, *stats)

        # FSDP2: the student's forward and the loss in one forward method of the root, where lm_head is whole.
        loss, *stats = student_loss() if root is None else _in_fsdp_forward(root, student_loss)
        if model.training:
            self._record_stats(KDStats(*stats))
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # `num_items_in_batch` counts every process's tokens while DDP / FSDP average gradients: undo the
            # average, as Trainer.compute_loss does.
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, caught[-1]) if return_outputs else loss

    def _student_kd_loss(self, model, inputs, labels, shift_labels, num_items_in_batch, bypass_hooks=False):
        """``(loss (), KDStats, student outputs)``: the student's forward, the teacher's, and the fused loss."""
        # `model` is what the Trainer prepared (DDP, compiled, PEFT): calling it keeps their forward semantics.
        hidden_s, outputs = final_hidden_states(model, inputs, bypass_hooks=bypass_hooks)
        hidden_t = self._teacher_hidden(inputs, hidden_s.device)
        if shift_labels is None:  # position t predicts token t + 1
            targets, hidden_s, hidden_t = labels[..., 1:], hidden_s[..., :-1, :], hidden_t[..., :-1, :]
        else:
            targets = shift_labels
        device = hidden_s.device

        def fused_loss():
            weight_s, bias_s = output_head(model)
            weight_t, bias_t = output_head(self.teacher_model)
            for name, weight in (("student", weight_s), ("teacher", weight_t)):
                if weight.numel() == 0:
                    raise RuntimeError(f"the {name}'s lm_head weight is empty (a ZeRO-3 partition read outside its "
                                       "gathering): the KD loss needs it whole")
            loss, stats = self_evolution_kd_loss(
                hidden_s.reshape(-1, hidden_s.shape[-1]), weight_s, hidden_t.reshape(-1, hidden_t.shape[-1]),
                weight_t.to(device), targets.reshape(-1).to(device), student_bias=bias_s,
                teacher_bias=None if bias_t is None else bias_t.to(device), ignore_index=IGNORE_INDEX,
                reduction="mean", num_items_in_batch=num_items_in_batch, return_stats=True, **self.kd_options)
            return (loss, *stats)

        student_head = _output_embeddings(model)
        with _gathered(_output_embeddings(self.teacher_model)):
            # ZeRO-3: the loss is the student lm_head's forward, so the engine gathers its weights and reduces
            # their gradient; the teacher's lm_head is gathered for the forward (its only use).
            loss, *stats = _as_module_forward(student_head, fused_loss) if _zero3(student_head) else fused_loss()
        return loss, KDStats(*stats), outputs

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        """The Trainer's evaluation step, warning (once) when it is asked for predictions, which are empty."""
        if not prediction_loss_only and not self._warned_empty_predictions:
            warnings.warn("SelfEvolutionKDMixin computes no logits: evaluation predictions (what compute_metrics "
                          "and predict() get) are empty (B, 0, V) logits; set TrainingArguments("
                          "prediction_loss_only=True) to evaluate the KD loss only", stacklevel=2)
            self._warned_empty_predictions = True
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

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
