"""Plain-PyTorch references: the math of docs/collab.md and docs/kd.md in executable, readable form."""

from . import collab

__all__ = ["collab"]
