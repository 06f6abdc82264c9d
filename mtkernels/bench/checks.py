"""Correctness checks that run before a case is timed: a fast wrong kernel must not be reported.

Fused results are checked against the eager chain (baseline a); the eager chain itself is checked
once per shape against the reference backend (the executable spec). Each check raises
``CheckFailed`` on a mismatch and otherwise returns a small summary for the results file.
"""

from __future__ import annotations

from typing import Dict

import torch

from .baselines import eager_combined_logits, hf_filtered_logits, hf_warpers
from .problems import Problem

Tensor = torch.Tensor
PROB_RTOL = 1e-4
PROB_ATOL = 1e-7
# Slack on top_p when deciding which tokens a sampler may return: a token whose cumulative mass
# sits within this of the threshold is legal either way (fp32 sums in a different order).
TOP_P_SLACK = 1e-3


class CheckFailed(AssertionError):
    """A benchmarked kernel disagrees with the eager chain."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


def _max_abs_diff(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _require_close(name: str, actual: Tensor, expected: Tensor) -> None:
    close = torch.allclose(actual.double(), expected.double(), rtol=PROB_RTOL, atol=PROB_ATOL)
    _require(close, f"{name}: max |diff| = {_max_abs_diff(actual, expected):.3g} "
                    f"(rtol {PROB_RTOL}, atol {PROB_ATOL})")


def check_softmax_topk(probs: Tensor, ids: Tensor, problem: Problem, k: int, against: str) -> Dict:
    """Check ``probs (B, k)`` / ``ids (B, k)`` against the eager chain's top-k of ``softmax(z)``.

    The ids must equal the eager ones wherever probabilities are not tied: the probabilities match
    the eager top-k, each id carries the probability reported for it, and no id repeats in a row.
    Together these say the ids are the k most probable tokens, whatever order ties come in.
    """
    z = eager_combined_logits(problem.logits, problem.weights, problem.temperature)
    full = torch.softmax(z, dim=-1)
    expected_probs, expected_ids = torch.topk(full, k, dim=-1)
    _require(tuple(probs.shape) == tuple(expected_probs.shape) and tuple(ids.shape) == tuple(expected_ids.shape),
             f"shapes {tuple(probs.shape)}, {tuple(ids.shape)}; expected {tuple(expected_probs.shape)}")
    _require_close("top-k probabilities vs eager", probs, expected_probs)
    _require_close("probability of each returned id vs eager", full.gather(1, ids.long()), probs)
    _require(bool((ids.sort(dim=1).values.diff(dim=1) != 0).all()), "an id repeats within a row")
    return {"against": against, "max_abs_prob_diff": _max_abs_diff(probs, expected_probs),
            "ids_identical_fraction": float((ids.long() == expected_ids).float().mean()), "passed": True}


def check_sample(sampled: Tensor, greedy: Tensor, problem: Problem, top_k: int, top_p: float) -> Dict:
    """Check a sampler's draws ``(B,)`` and its greedy tokens ``(B,)`` against the eager chain.

    Greedy must be the arg-max of the eager ``z`` (up to fp32 rounding); every sampled token must
    survive Hugging Face's top-k → top-p filter of the eager ``z`` (with ``TOP_P_SLACK``).
    """
    z = eager_combined_logits(problem.logits, problem.weights, problem.temperature)
    best = z.max(dim=-1).values
    greedy_z = z.gather(1, greedy.long().unsqueeze(1)).squeeze(1)
    _require(bool((greedy_z >= best - 1e-5 * best.abs().clamp_min(1.0)).all()),
             "greedy token is not the arg-max of the eager combined logits")
    kept = hf_filtered_logits(z, hf_warpers(top_k, min(1.0, top_p + TOP_P_SLACK))) > float("-inf")
    sampled_kept = kept.gather(1, sampled.long().unsqueeze(1)).squeeze(1)
    _require(bool(sampled_kept.all()), f"{int((~sampled_kept).sum())} sampled tokens lie outside the "
                                       f"top-k/top-p support of the eager chain")
    return {"against": "eager arg-max and Hugging Face top-k/top-p support", "kept_tokens_mean":
            float(kept.sum(dim=1).float().mean()), "passed": True}

