"""reprscope: post-hoc representation analysis for self-supervised learning.

From Python::

    import reprscope
    reprscope.metrics.rankme(z)                                   # any (n, d) array or tensor
    table = reprscope.analyze(model, loader, layers={"encoder": "backbone", "projector": "head"})
    table = reprscope.analyze("run/last.pt")                     # checkpoint, .h5 store or run directory
    monitor = reprscope.Monitor(model, probe_batch, analyzers=["spectrum", "center"])

Everything here is a thin layer over the functional core (:mod:`reprscope.metrics`) and the analyzer registry
(:mod:`reprscope.analyzers`) that the command line uses too.
"""
from __future__ import annotations

from typing import Any, List, Sequence

__version__ = "0.1.0"

from . import metrics  # noqa: E402
from .analyzers import ANALYZERS  # noqa: E402
from .api import analyze, extract  # noqa: E402
from .check import CheckResult, check  # noqa: E402
from .correlate import correlate  # noqa: E402
from .errors import ReprscopeError  # noqa: E402
from .metrics import ReprscopeWarning  # noqa: E402
from .monitor import Monitor  # noqa: E402
from .report import make_report as _make_report  # noqa: E402  (before `report` below takes the name)


def report(tables: Sequence[Any], out: Any, *, formats: Sequence[str] = ("png", "pdf")) -> List[Any]:
    """Write the figures the tables support (spectra, R² per latent across layers, per-layer profiles,
    trajectories over steps, similarity heat maps, which metric predicts accuracy) into the folder ``out``; returns the paths written, with ``.notes`` (figures
    skipped and why). ``tables``: paths of tables written by :func:`analyze` (``table.to_csv``) or the CLI."""
    return _make_report([str(t) for t in tables], out, formats=list(formats), echo=None)


__all__ = ["ANALYZERS", "CheckResult", "Monitor", "ReprscopeError", "ReprscopeWarning", "__version__", "analyze",
           "check", "correlate", "extract", "metrics", "report"]
