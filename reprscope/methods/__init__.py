"""Training methods: each a registered unit (loss + default heads + hooks)."""
from .base import METHODS, Method, build_method
from . import simclr  # noqa: F401  (registers)

__all__ = ["METHODS", "Method", "build_method"]
