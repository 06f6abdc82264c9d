"""mtkernels: fused PyTorch kernels for LLM machine translation.

    import mtkernels
    out = mtkernels.fused_collab_softmax([large_logits, small_logits], [1.0, 0.5], top_k=50)
    ids = mtkernels.fused_collab_sample([large, expert, anti_expert], [1.0, 1.0, -1.0], top_p=0.9)
"""

from .backends import available_backends, backend_report
from .ops.collab import CollabSoftmaxOutput, collab_logits, fused_collab_sample, fused_collab_softmax

__version__ = "0.1.0"

__all__ = [
    "CollabSoftmaxOutput",
    "available_backends",
    "backend_report",
    "collab_logits",
    "fused_collab_sample",
    "fused_collab_softmax",
]
