"""The analyzer contract: pure functions on arrays that return tidy rows.

An analyzer is a function ``fn(data: LayerData, **params) -> Result`` registered with what it needs (views,
labels, latents, a stored projector …) and its declared parameters. :func:`run_analyzer` is the one entry
point: it checks the needs (a source that lacks them is *skipped with a stated reason*), validates the
parameters, removes samples with non-finite embeddings (reported as a note) and stamps the parameter values
on every row. Analyzers never see file handles, CLI arguments or table columns other than their own.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..params import Param, resolve_params
from ..registry import Registry

ANALYZERS: Registry = Registry("analyzer")

#: Needs an analyzer may declare, with the sentence used when a source lacks them.
NEEDS = {
    "two_views": "needs at least two augmented views (extract with --views 2 or more)",
    "latents": "needs ground-truth latents (/latents), which this source does not have",
    "labels": "needs labels (/labels), which this source does not have",
    "labels_coarse": "needs coarse labels (/labels_coarse), which this source does not have",
    "projector": "needs the projector's weights (/modules/projector), which this source does not have",
}


@dataclass
class HeadModule:
    """A stored head: its layer-spec list and parameters by ``nn.Sequential`` name (SPEC §4 ``/modules``)."""

    spec: List[Dict[str, Any]]
    params: Dict[str, np.ndarray]


@dataclass
class LayerData:
    """Everything an analyzer sees for one layer of one source.

    Attributes:
        layer: dotted layer name; ``space``: encoder | intermediate | projector | predictor.
        views: view names, e.g. ``["clean", "aug1", "aug2"]``; ``embeddings``: (V, n, d) array.
        latents: (n, k) ground truth or None, with ``latent_names`` and ``content_mask`` (k,) bool.
        labels, labels_coarse: (n,) int arrays or None.
        modules: stored heads by part name.
        seed: seed for anything random (splits, subsampling).
    """

    layer: str
    space: str
    views: List[str]
    embeddings: np.ndarray
    latents: Optional[np.ndarray] = None
    latent_names: List[str] = field(default_factory=list)
    content_mask: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    labels_coarse: Optional[np.ndarray] = None
    modules: Dict[str, HeadModule] = field(default_factory=dict)
    seed: int = 0

    @property
    def n(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[2])

    def aug_view_ids(self) -> List[int]:
        """Indices of the augmented views (every view except ``clean``)."""
        return [i for i, v in enumerate(self.views) if v != "clean"]

    def reference_view_id(self) -> int:
        """The view whose inputs the latents/labels describe: ``clean`` when stored, else view 0."""
        return self.views.index("clean") if "clean" in self.views else 0

    def take(self, keep: np.ndarray) -> "LayerData":
        """The same data restricted to the samples ``keep`` (bool mask or indices)."""
        cut = lambda a: None if a is None else a[keep]  # noqa: E731
        return replace(self, embeddings=self.embeddings[:, keep], latents=cut(self.latents),
                       labels=cut(self.labels), labels_coarse=cut(self.labels_coarse))


@dataclass
class Result:
    """Rows ``{view, metric, index, value}`` plus notes (skips, degenerate cases) for the summary."""

    rows: List[Dict[str, Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def add(self, metric: str, value: float, view: str = "all", index: Any = "") -> None:
        """Add one finite value; a non-finite one is turned into a note instead of a table row."""
        v = float(value)
        if not np.isfinite(v):
            self.notes.append(f"{metric}{'[' + str(index) + ']' if index != '' else ''} ({view}) is undefined here ({v})")
            return
        self.rows.append({"view": view, "metric": metric, "index": "" if index is None else str(index), "value": v})

    def add_vector(self, metric: str, values: Sequence[float], view: str = "all", index: Optional[Sequence[Any]] = None) -> None:
        for i, v in enumerate(values):
            self.add(metric, v, view=view, index=i if index is None else index[i])

    def extend(self, other: "Result") -> None:
        self.rows.extend(other.rows)
        self.notes.extend(other.notes)


@dataclass(frozen=True)
class AnalyzerSpec:
    """A registered analyzer: its function, declared parameters and needs, and a one-line summary."""

    name: str
    fn: Callable[..., Result]
    params: Sequence[Param]
    needs: Sequence[str]
    summary: str
    paper: str = ""
    min_samples: int = 2


def register_analyzer(name: str, *, params: Sequence[Param] = (), needs: Sequence[str] = (), summary: str = "",
                      paper: str = "", min_samples: int = 2) -> Callable:
    """Decorator registering ``fn(data, **params) -> Result`` as analyzer ``name``."""
    for need in needs:
        if need not in NEEDS:  # pragma: no cover - programming error caught by the contract tests
            raise ValueError(f"unknown need {need!r}")

    def deco(fn: Callable[..., Result]) -> Callable[..., Result]:
        ANALYZERS.register(name)(AnalyzerSpec(name, fn, tuple(params), tuple(needs), summary or (fn.__doc__ or "").strip().splitlines()[0], paper, min_samples))
        return fn

    return deco


def missing_need(spec: AnalyzerSpec, data: LayerData) -> Optional[str]:
    """The reason ``data`` cannot be analysed by ``spec``, or None."""
    for need in spec.needs:
        ok = {
            "two_views": len(data.aug_view_ids()) >= 2,
            "latents": data.latents is not None,
            "labels": data.labels is not None,
            "labels_coarse": data.labels_coarse is not None,
            "projector": "projector" in data.modules,
        }[need]
        if not ok:
            return NEEDS[need]
    return None


def finite_mask(emb: np.ndarray) -> np.ndarray:
    """(n,) bool: samples whose embeddings are finite in every view; computed in chunks to bound memory."""
    n = emb.shape[1]
    keep = np.ones(n, dtype=bool)
    step = max(1, (1 << 24) // max(1, emb.shape[0] * emb.shape[2]))
    for s in range(0, n, step):
        keep[s : s + step] = np.isfinite(np.asarray(emb[:, s : s + step])).all(axis=(0, 2))
    return keep


def run_analyzer(name: str, data: LayerData, params: Optional[Mapping[str, Any]] = None) -> Result:
    """Run one registered analyzer on one layer: needs, parameters, non-finite samples, parameter stamping.

    Returns:
        A Result whose rows carry ``analyzer`` and one column per parameter; when the analyzer cannot run,
        no rows and a note saying why.
    """
    spec: AnalyzerSpec = ANALYZERS.get(name)
    values = resolve_params(f"analyzer {name}", spec.params, dict(params or {}))
    res = Result()
    why = missing_need(spec, data)
    if why:
        res.notes.append(f"{name} skipped on {data.layer}: {why}")
        return res
    keep = finite_mask(data.embeddings)
    if not keep.all():
        res.notes.append(f"{name} on {data.layer}: {int((~keep).sum())} of {data.n} samples have NaN/Inf embeddings and were left out")
        data = data.take(keep)
    if data.n < spec.min_samples:
        res.notes.append(f"{name} skipped on {data.layer}: needs at least {spec.min_samples} samples with finite embeddings, has {data.n}")
        return res
    out = spec.fn(data, **values)
    res.notes.extend(f"{name} on {data.layer}: {n}" for n in out.notes)
    stamp = {k: (v if not isinstance(v, (list, tuple)) else ",".join(map(str, v))) for k, v in values.items()}
    for r in out.rows:
        res.rows.append({**r, "analyzer": name, **stamp})
    return res
