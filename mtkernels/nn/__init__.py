"""torch.nn modules over the fused ops."""

from .self_evolution_kd import SelfEvolutionKDLoss

__all__ = ["SelfEvolutionKDLoss"]
