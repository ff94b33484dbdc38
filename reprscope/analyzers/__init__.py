"""The analyzer registry: the computations of :mod:`reprscope.metrics`, each run on every layer of a source.

An analyzer is a row-producing computation ``fn(data: LayerData, **params) -> Result`` of the functional core
(:mod:`reprscope.metrics`) registered under its declaration: its parameters (validated and stamped on every
row), what it needs (two views, labels, latents, a stored projector …: a source without them is skipped with
a stated reason) and a one-line summary. The public array functions of :mod:`reprscope.metrics` and these
analyzers call the same code, so every number has one implementation.
"""
from ..metrics import (align_uniform, center, esd, identifiability, knn, label_free, linear_discriminant, linear_probe,
                       matrix_information,
                       similarity, spectrum, tangent, vicreg, weights)
from .base import ANALYZERS, AnalyzerSpec, HeadModule, LayerData, Result, register_analyzer, register_declared, run_analyzer, run_pair

for _fn in (center.center, identifiability.identifiability, spectrum.spectrum, vicreg.vicreg, align_uniform.uniformity,
            knn.knn, linear_probe.linear_probe, weights.weights, tangent.tangent,
            matrix_information.matrix_information, label_free.label_free, similarity.similarity,
            linear_discriminant.lidar, esd.esd):
    register_declared(_fn)
del _fn

__all__ = ["ANALYZERS", "AnalyzerSpec", "HeadModule", "LayerData", "Result", "register_analyzer", "register_declared",
           "run_analyzer", "run_pair"]
