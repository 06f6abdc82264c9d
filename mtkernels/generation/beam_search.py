"""Beam search over the combined distribution ``softmax(Σ_m w_m·logits_m)``.

Follows Hugging Face's beam search (transformers 5, ``GenerationMixin._beam_search``):

* Each step, every running beam's continuations are scored ``beam score + log p(token)``; per
  input the best ``K = max(2, 1 + #eos ids) · num_beams`` continuations over all its beams are kept.
  A beam contributes at most K of them, so ``fused_collab_softmax(top_k=K)`` (one pass over the M
  logits, never the combined (rows, V) tensor) gives everything needed: ``log p = log probs``.
* A continuation that ends (EOS, stop string, or the token budget) and ranks among the first
  ``num_beams`` becomes a finished hypothesis with score ``sum of log-probs / (length **
  length_penalty)``, ``length`` = number of generated tokens, EOS included; each input keeps its
  ``num_beams`` best.
* The best ``num_beams`` continuations that did not end run on (ended ones are penalised by -1e9,
  as in HF, should fewer than ``num_beams`` remain).
* ``early_stopping``: ``True`` stops an input once it has ``num_beams`` finished hypotheses;
  ``False`` and ``"never"`` stop it once the best running beam cannot beat the worst finished one,
  judged at the current length (``False``, or ``"never"`` with ``length_penalty <= 0``) or at the
  maximum length (``"never"`` with ``length_penalty > 0``). ``True`` applies that test too.

Inputs that are done leave the batch, with their rows of every model's cache; the caches of the
others are reordered to their new beams each step (``ModelSet.keep``; rows may repeat). The first
step runs one beam per input (HF's other initial beams score -1e9 and never win), so the prompt is
prefilled once per input, not once per beam.

Scores are accumulated in float64 from the op's float32 probabilities.
"""

from __future__ import annotations

from typing import List, Tuple, Union

import torch

from ..ops.collab import fused_collab_softmax
from .model_set import ModelSet
from .row_params import RowParams
from .stopping import StopCriteria

Tensor = torch.Tensor
PENALTY = 1.0e9  # HF's score penalty for ended continuations and empty hypothesis slots


def check_early_stopping(early_stopping) -> Union[bool, str]:
    if early_stopping is True or early_stopping is False or early_stopping == "never":
        return early_stopping
    raise ValueError(f"early_stopping: expected True, False or 'never', got {early_stopping!r}")


def _best_first(scores: List[float]) -> List[int]:
    """Indices by score, descending; equal scores keep their order."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def beam_search(model_set: ModelSet, logits: List[Tensor], params: RowParams, *, num_beams: int,
                max_new_tokens: int, stop: StopCriteria, length_penalty: float = 1.0,
                early_stopping: Union[bool, str] = False, backend: str = "auto") -> List[List[int]]:
    """Beam search for B inputs.

    Args:
        model_set: prefilled with the B prompts (one row per input).
        logits: M tensors ``(B, V_m)``, the prefill's last logits.
        params: the B inputs' weights (``params.weights``: M floats or ``(B, M)``); the sampling
            fields are not used.
        num_beams, length_penalty, early_stopping: as in Hugging Face's ``generate``.
        max_new_tokens: the longest hypothesis; stop: end-of-sequence ids and stop strings.

    Returns:
        B lists of generated ids: each input's best finished hypothesis (EOS included when it
        ended with one).
    """
    early_stopping = check_early_stopping(early_stopping)
    nb = num_beams
    batch = logits[0].shape[0]
    vocab = min(x.shape[1] for x in logits)
    if not 1 <= nb <= vocab:
        raise ValueError(f"num_beams: must be in [1, vocab size {vocab}], got {nb}")
    keep = max(2, 1 + len(stop.eos_token_ids)) * nb  # HF's beams_to_keep
    per_beam = min(keep, vocab)
    device = logits[0].device

    items = list(range(batch))  # original input of each live item
    running: List[List[List[int]]] = [[[]] for _ in range(batch)]  # [item][beam] -> generated ids
    running_scores = torch.zeros((batch, 1), dtype=torch.float64)
    finished: List[List[Tuple[float, List[int]]]] = [[] for _ in range(batch)]  # best first, <= nb
    improvable = [True] * batch  # HF's is_early_stop_heuristic_unsatisfied
    width = 1  # beams per live item: 1 at the first step, then nb

    for step in range(max_new_tokens):
        live = len(items)
        out = fused_collab_softmax(logits, params.weights, top_k=per_beam, backend=backend)
        logp = torch.log(out.probs.to(torch.float64)).cpu().view(live, width * per_beam)
        ids = out.ids.cpu().view(live, width * per_beam)
        candidates = (running_scores.repeat_interleave(per_beam, dim=1) + logp)
        order = torch.sort(candidates, dim=1, descending=True, stable=True).indices[:, :keep]
        top_scores = candidates.gather(1, order).tolist()
        top_beams = (order // per_beam).tolist()
        top_ids = ids.gather(1, order).tolist()
        length = step + 1

        next_items, next_running, next_scores, rows, tokens = [], [], [], [], []
        for a, item in enumerate(items):
            seqs = [running[a][b] + [t] for b, t in zip(top_beams[a], top_ids[a])]
            ended = [stop.finished(s, max_new_tokens) for s in seqs]
            hyps = finished[item]
            if improvable[item] and not (early_stopping is True and len(hyps) == nb):
                new = [(top_scores[a][r] / (length ** length_penalty), seqs[r])
                       for r in range(min(nb, len(seqs))) if ended[r]]
                if new:
                    merged = hyps + new
                    hyps = finished[item] = [merged[i] for i in _best_first([s for s, _ in merged])][:nb]
            penalised = [s - PENALTY if e else s for s, e in zip(top_scores[a], ended)]
            pick = _best_first(penalised)[:nb]
            best_len = max_new_tokens if (early_stopping == "never" and length_penalty > 0) else length
            best_possible = penalised[pick[0]] / (best_len ** length_penalty)
            worst = min(s for s, _ in hyps) if len(hyps) == nb else -PENALTY
            improvable[item] = improvable[item] and best_possible > worst
            done = (not improvable[item] or (early_stopping is True and len(hyps) == nb) or all(ended)
                    or length >= max_new_tokens)
            if done:
                if not hyps:  # nothing ended among the ranked beams: the best running one stands
                    finished[item] = [(penalised[pick[0]], seqs[pick[0]])]
                continue
            next_items.append(item)
            next_running.append([seqs[r] for r in pick])
            next_scores.append([penalised[r] for r in pick])
            rows.extend(a * width + top_beams[a][r] for r in pick)
            tokens.extend(top_ids[a][r] for r in pick)
        if not next_items:
            break
        items, running = next_items, next_running
        running_scores = torch.tensor(next_scores, dtype=torch.float64)
        width = nb
        rows_t = torch.tensor(rows, dtype=torch.int64)
        model_set.keep(rows_t)
        params = params.select(rows_t.to(device))
        logits = model_set.step(torch.tensor(tokens, dtype=torch.int64, device=device))
    return [finished[i][0][1] for i in range(batch)]
