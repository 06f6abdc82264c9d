"""``train_head``: train a MuMo head beside a frozen base model (the paper's recipe).

Each step takes ``batch_size`` texts, tokenises them with the base tokenizer, runs the base model's
decoder under ``no_grad`` (its last hidden states are what the base ``lm_head`` reads), builds the
forward-maximum-matching targets (``MonoVocab.training_targets``) and minimises
``mumo_head_cross_entropy`` over the concatenated vocabulary on the positions that have a target.
Only the head's parameters (the SwiGLU block and W_mono) are in the optimiser: AdamW with linear
warm-up over ``warmup_ratio`` of the steps, then cosine decay (the paper: 150 of 1,500 steps).
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import List, Sequence

import torch

from .head import MuMoHead, base_head_bias, base_head_weight


@dataclasses.dataclass
class TrainResult:
    """Per step: the mean loss over the batch's targets and the learning rate used."""

    losses: List[float]
    learning_rates: List[float]


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """The learning-rate factor at ``step`` (0-based): linear warm-up to 1, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _batches(texts: Sequence[str], batch_size: int, seed: int):
    rng = random.Random(seed)
    order: List[int] = []
    while True:
        if len(order) < batch_size:
            more = list(range(len(texts)))
            rng.shuffle(more)
            order.extend(more)
        yield [texts[i] for i in order[:batch_size]]
        del order[:batch_size]


def train_head(base_model, head: MuMoHead, tokenizer, texts: Sequence[str], *, steps: int, batch_size: int,
               lr: float = 1e-3, weight_decay: float = 0.01, warmup_ratio: float = 0.1, max_length: int = 256,
               seed: int = 0, progress: bool = True, log_every: int = 50, logger=None) -> TrainResult:
    """Train ``head`` for ``steps`` optimiser steps on ``texts``; the base model is not changed.

    Args:
        base_model: the Hugging Face causal LM the head was built for (frozen here).
        head: a :class:`MuMoHead` (trained in place).
        tokenizer: the base tokenizer.
        texts: target-language training texts (sampled without replacement, reshuffled per pass).
        steps, batch_size: optimiser steps and texts per step.
        lr, weight_decay, warmup_ratio: AdamW and its warm-up/cosine schedule.
        max_length: texts are cut to this many base tokens.
        progress: a tqdm bar with the running loss; ``logger`` (e.g. ``print``) gets a line every
            ``log_every`` steps.
    """
    import mtkernels

    if not texts:
        raise ValueError("texts: expected at least one training text")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio: expected a value in [0, 1), got {warmup_ratio!r}")
    weight, bias = base_head_weight(base_model), base_head_bias(base_model)
    decoder = base_model.get_decoder()
    device = weight.device
    v_multi = weight.shape[0]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = max(1, round(warmup_ratio * steps)) if warmup_ratio > 0 else 0
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, warmup))
    was_training = base_model.training
    base_model.eval()
    head.train()
    result = TrainResult([], [])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="mumo head", unit="step")
    batches = _batches(list(texts), batch_size, seed)
    try:
        for step in range(steps):
            ids = [tokenizer.encode(t, add_special_tokens=False)[:max_length] for t in next(batches)]
            width = max(1, max(len(i) for i in ids))
            input_ids = torch.full((len(ids), width), pad, dtype=torch.int64)
            mask = torch.zeros((len(ids), width), dtype=torch.int64)
            for b, row in enumerate(ids):
                input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.int64)
                mask[b, : len(row)] = 1
            targets = head.vocab.training_targets(input_ids, mask, num_base_tokens=v_multi).reshape(-1)
            rows = (targets != -100).nonzero().squeeze(1)
            lr_now = optimizer.param_groups[0]["lr"]
            if rows.numel() == 0:  # nothing to predict in this batch: keep the schedule in step
                loss_value = float("nan")
            else:
                with torch.no_grad():
                    hidden = decoder(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
                hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows.to(device))
                loss = mtkernels.mumo_head_cross_entropy(hidden, weight, head.features(hidden), head.mono_weight,
                                                         targets[rows].to(device), multi_bias=bias)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_value = float(loss.detach())
            schedule.step()
            result.losses.append(loss_value)
            result.learning_rates.append(lr_now)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")
            if logger is not None and (step % log_every == 0 or step == steps - 1):
                logger(f"step {step + 1}/{steps}  loss {loss_value:.4f}  lr {lr_now:.2e}")
    finally:
        if bar is not None:
            bar.close()
        head.eval()
        base_model.train(was_training)
    return result
