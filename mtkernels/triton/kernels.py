"""The triton backend: registers the launchers of the collab primitives (mtkernels/triton/collab.py),
the self-evolution KD row kernel (mtkernels/triton/self_evolution_kd.py) and the MuMo head
cross-entropy row kernel (mtkernels/triton/mumo_head.py).

On a GPU the kernels JIT-compile on first use; on the CPU they run only under the Triton
interpreter (``TRITON_INTERPRET=1``, set before triton is imported), which the tests use.
"""

from __future__ import annotations

from ..backends import register_kernels

try:
    import triton  # noqa: F401
except ImportError as exc:
    UNAVAILABLE_REASON = f"triton is not installed ({exc}); pip install triton"
else:
    UNAVAILABLE_REASON = None
    from . import collab, mumo_head, self_evolution_kd

    register_kernels(
        "triton",
        "collab",
        topk=collab.topk,
        logits=collab.logits,
        threshold_mass=collab.threshold_mass,
        gumbel_argmax=collab.gumbel_argmax,
    )
    register_kernels("triton", "kd", rows=self_evolution_kd.rows)
    register_kernels("triton", "mumo_head", ce_rows=mumo_head.ce_rows)
