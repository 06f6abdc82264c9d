"""Greedy decoding and sampling with the fused collab op, one token per row per step.

Each step runs every model once on the live rows, and ``fused_collab_sample`` turns the M logit
tensors into tokens (no combined logits are formed outside it). Row b's key at step t is
``keys.step_keys(seed, sentence_ids[b], t)``, so its tokens depend only on its own logits, seed and
sentence index. Rows that finish leave the batch: their rows are dropped from every model's
cache, so they cost no more model work.
"""

from __future__ import annotations

from typing import List

import torch

from ..ops.collab import fused_collab_sample
from .keys import step_keys
from .model_set import ModelSet
from .row_params import RowParams
from .stopping import StopCriteria

Tensor = torch.Tensor


def sample_loop(model_set: ModelSet, logits: List[Tensor], params: RowParams, *, greedy: bool, seed: int,
                sentence_ids: Tensor, max_new_tokens: int, stop: StopCriteria, backend: str = "auto"
                ) -> List[List[int]]:
    """Decode until every row stops.

    Args:
        model_set: prefilled with the B prompts.
        logits: M tensors ``(B, V_m)``, the prefill's last logits.
        params: the op's parameters for the B rows.
        greedy: argmax (lowest id on ties) instead of sampling.
        seed, sentence_ids: ``(B,)`` int64 (CPU): the keys' inputs.
        max_new_tokens: at most this many tokens per row.
        stop: end-of-sequence ids and stop strings.

    Returns:
        B lists of generated token ids, each ending at its stopping token (included).
    """
    batch = logits[0].shape[0]
    generated: List[List[int]] = [[] for _ in range(batch)]
    live = list(range(batch))  # original row of each current row
    sentence_ids = sentence_ids.to(torch.int64).cpu()
    device = logits[0].device
    for step in range(max_new_tokens):
        keys = step_keys(seed, sentence_ids, step)  # (R,), on the CPU: checked there, copied over
        if greedy:
            tokens = fused_collab_sample(logits, params.weights, greedy=True, keys=keys, backend=backend)
        else:
            tokens = fused_collab_sample(logits, params.weights, temperature=params.temperature, top_k=params.top_k,
                                         top_p=params.top_p, min_p=params.min_p, keys=keys, backend=backend)
        stay = []
        for r, token in enumerate(tokens.tolist()):
            seq = generated[live[r]]
            seq.append(token)
            if not stop.finished(seq, max_new_tokens):
                stay.append(r)
        if not stay:
            break
        if len(stay) < len(live):
            rows = torch.tensor(stay, dtype=torch.int64)
            model_set.keep(rows)
            params = params.select(rows.to(device))
            sentence_ids = sentence_ids.index_select(0, rows)
            live = [live[r] for r in stay]
            tokens = tokens.index_select(0, rows.to(tokens.device))
        logits = model_set.step(tokens)
    return generated
