"""Analyzers: pure functions on embedding arrays, registered with what they need (SPEC §6)."""
from .base import ANALYZERS, AnalyzerSpec, HeadModule, LayerData, Result, register_analyzer, run_analyzer
from . import center, identifiability, spectrum  # noqa: F401  (registers)
from . import vicreg, uniformity, knn, linear_probe  # noqa: F401
from . import weights, tangent  # noqa: F401
from . import matrix_information  # noqa: F401

__all__ = ["ANALYZERS", "AnalyzerSpec", "HeadModule", "LayerData", "Result", "register_analyzer", "run_analyzer"]
