"""mtkernels: fused PyTorch kernels for LLM machine translation.

    import mtkernels
    out = mtkernels.fused_collab_softmax([large_logits, small_logits], [1.0, 0.5], top_k=50)
    ids = mtkernels.fused_collab_sample([large, expert, anti_expert], [1.0, 1.0, -1.0], top_p=0.9)
    loss = mtkernels.self_evolution_kd_loss(h_student, lm_head_s, h_teacher, lm_head_t, labels)
    sigma = mtkernels.mumo_verify_scores_fused(hidden, lm_head.weight, candidate_ids, lengths)
    probs, ids, lse = mtkernels.mumo_head_topk(h, lm_head.weight, features, w_mono, k=10)

Workflows: ``mtkernels.generation`` (collaborative decoding with Hugging Face models) and
``mtkernels.mumo`` (MuMo heads), imported on first access.
"""

from . import backends
from .backends import available_backends, backend_report
from . import nn
from .ops.collab import CollabSoftmaxOutput, collab_logits, fused_collab_sample, fused_collab_softmax
from .ops.kd_from_logits import self_evolution_kd_loss_from_logits
from .ops.mumo_head import mumo_head_cross_entropy, mumo_head_topk
from .ops.mumo_verify import mumo_verify_scores, mumo_verify_scores_fused
from .ops.self_evolution_kd import KDStats, self_evolution_kd_loss

__version__ = "0.3.0"

backends.load_all()  # resolved at import: a traced call must never import a backend module


def __getattr__(name):
    # the workflow subpackages (transformers, tokenizers) are imported on first use, not with the package
    if name in ("generation", "mumo"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CollabSoftmaxOutput",
    "KDStats",
    "available_backends",
    "backend_report",
    "collab_logits",
    "fused_collab_sample",
    "fused_collab_softmax",
    "generation",
    "mumo",
    "mumo_head_cross_entropy",
    "mumo_head_topk",
    "mumo_verify_scores",
    "mumo_verify_scores_fused",
    "nn",
    "self_evolution_kd_loss",
    "self_evolution_kd_loss_from_logits",
]
