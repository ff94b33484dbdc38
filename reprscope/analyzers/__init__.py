"""Analyzers: pure functions on embedding arrays, registered with what they need (SPEC §6)."""
from .base import ANALYZERS, AnalyzerSpec, HeadModule, LayerData, Result, register_analyzer, run_analyzer
from . import center, identifiability, spectrum  # noqa: F401  (registers)

__all__ = ["ANALYZERS", "AnalyzerSpec", "HeadModule", "LayerData", "Result", "register_analyzer", "run_analyzer"]
