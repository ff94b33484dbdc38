"""Recipes: the papers' findings as declarative experiments (issue 6).

A recipe is a registered class that says, for a scale (``tiny`` for the tests, ``cpu`` for a laptop in under
ten minutes, ``long`` for at most 30 minutes on two CPU cores — the cpu setting trained longer, to separate
what scale alone was missing from what the recipe or the code gets wrong —, ``gpu`` for the papers' own
setting):

* ``runs(scale)`` — the training runs (:class:`RunSpec`: method, data, ``--set`` settings, seeds, which
  checkpoints to analyze, with which analyzers and parameters);
* ``extra(scale, ctx)`` — optional rows that are not an analyzer of a checkpoint (e.g. the loss of the true
  inverse g⁻¹ in Rusak et al. 2022's Table 1), in the same tidy schema;
* ``findings(table, scale)`` — the claims, each computed from the table: the numbers and whether it held;
* ``figures(table, out)`` — the paper's plots, redrawn from the table.

The runner (``reproduce.runner``) trains, analyzes, writes ``table.csv``, ``figures/`` and ``summary.md``;
nothing in a summary is written by hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence

import pandas as pd

from ..errors import ReprscopeError
from ..registry import Registry

RECIPES: Registry = Registry("recipe")
SCALES = ("tiny", "cpu", "long", "gpu")
_CPU = object()


@dataclass
class RunSpec:
    """One training configuration of a recipe, trained once per seed.

    Attributes:
        name: label of the run in the table (column ``run``).
        method, data, backbone: as ``reprscope train METHOD --data … --backbone …``.
        sets: ``--set`` assignments (``"section.key": value``); applied in order, head kinds first.
        seeds: training seeds (column ``seed``).
        checkpoints: ``"last"`` or ``"all"`` (a trajectory over the saved checkpoints, column ``step``).
        analyzers / params / layers / views: what ``reprscope analyze`` runs on each checkpoint.
        tags: extra constant columns (e.g. ``{"space": "box", "d_c": 5}``) that findings group by.
    """

    name: str
    method: str
    data: Dict[str, Any]
    sets: Dict[str, Any] = field(default_factory=dict)
    backbone: str = "mlp"
    seeds: Sequence[int] = (0,)
    checkpoints: str = "last"
    analyzers: Sequence[str] = ("center", "spectrum")
    params: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    layers: Optional[Sequence[str]] = None
    views: int = 2
    tags: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Finding:
    """A claim of a paper, checked on the table: ``numbers`` are what shows it, ``held`` whether it held."""

    claim: str
    source: str
    numbers: Dict[str, Any]
    held: Optional[bool]
    detail: str = ""


@dataclass
class Context:
    """What ``extra`` gets: the output directory, the trained runs (name → seed → run dir) and a device."""

    out: Path
    run_dirs: Dict[str, Dict[int, Path]]
    device: str = "cpu"


class Recipe:
    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    data_root: Optional[str] = None  # where the gpu scale finds CIFAR / ImageNet-100 (set by the runner)

    def runs(self, scale: str) -> List[RunSpec]:  # pragma: no cover - every recipe overrides it
        raise ReprscopeError(f"recipe {self.name} defines no runs")

    def extra(self, scale: str, ctx: Context) -> List[Dict[str, Any]]:
        return []

    def findings(self, table: pd.DataFrame, scale: str) -> List[Finding]:
        return []

    def figures(self, table: pd.DataFrame, out: Path) -> List[Path]:
        return []


def register_recipe(cls):
    RECIPES.register(cls.name, summary=cls.summary, paper=cls.paper)(cls)
    return cls


def pick(scale: str, tiny: Any, cpu: Any, gpu: Any, long: Any = _CPU) -> Any:
    """The value for ``scale``; ``long`` takes the cpu value unless it is given."""
    return {"tiny": tiny, "cpu": cpu, "gpu": gpu, "long": cpu if long is _CPU else long}[scale]


# -- helpers for findings ----------------------------------------------------------------------------------


def rows(table: pd.DataFrame, analyzer: str, metric: str | Sequence[str], **eq: Any) -> pd.DataFrame:
    """Rows of ``analyzer`` with ``metric`` (one name or several) and columns equal to ``eq``."""
    metrics = [metric] if isinstance(metric, str) else list(metric)
    sel = (table["analyzer"] == analyzer) & table["metric"].isin(metrics)
    for k, v in eq.items():
        sel &= table[k] == v
    return table[sel]


def value(table: pd.DataFrame, analyzer: str, metric: str, agg: Callable = pd.Series.mean, **eq: Any) -> float:
    """One number: ``agg`` (default mean over seeds/rows) of the matching rows; NaN when there are none."""
    r = rows(table, analyzer, metric, **eq)
    if r.empty:
        return float("nan")
    return float(agg(pd.to_numeric(r["value"], errors="coerce")))


def last_step(table: pd.DataFrame) -> pd.DataFrame:
    """For every run and seed, only the rows of its last analyzed step."""
    if table.empty or "step" not in table:
        return table
    steps = pd.to_numeric(table["step"], errors="coerce").fillna(-1)
    key = [c for c in ("run", "seed") if c in table]
    last = steps.groupby([table[c] for c in key]).transform("max") if key else steps.max()
    return table[steps == last]


def spread(values: Sequence[float]) -> str:
    """"mean ± std (n)" of a few seeds."""
    s = pd.Series(list(values), dtype=float).dropna()
    if s.empty:
        return "n/a"
    if len(s) == 1:
        return f"{s.iloc[0]:.3g}"
    return f"{s.mean():.3g} ± {s.std(ddof=1):.2g} (n={len(s)})"
