"""Integrations of mtkernels losses with training frameworks.

``mtkernels.integrations.hf`` (needs ``transformers`` and ``accelerate``):

    from mtkernels.integrations.hf import SelfEvolutionKDTrainer, SelfEvolutionKDMixin, trl_generalized_jsd_loss

The submodule is not imported here, so ``import mtkernels.integrations`` works without transformers.
"""

__all__ = ["hf"]
