"""Plain-PyTorch references: the spec (``../shared/SPEC.md``) in executable, readable form."""

from . import collab

__all__ = ["collab"]
