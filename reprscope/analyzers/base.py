"""The analyzer contract: pure functions on arrays that return tidy rows.

An analyzer is a function ``fn(data: LayerData, **params) -> Result`` registered with what it needs (views,
labels, latents, a stored projector …) and its declared parameters. :func:`run_analyzer` is the one entry
point: it checks the needs (a source that lacks them is *skipped with a stated reason*), validates the
parameters, removes samples with non-finite embeddings (reported as a note) and stamps the parameter values
on every row. Analyzers never see file handles, CLI arguments or table columns other than their own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np


from ..metrics._core import HeadModule, LayerData, Result, finite_mask
from ..params import Param, resolve_params
from ..registry import Registry

__all__ = ["ANALYZERS", "AnalyzerSpec", "HeadModule", "LayerData", "NEEDS", "Result", "finite_mask", "missing_need",
           "register_analyzer", "register_declared", "run_analyzer", "run_pair"]

ANALYZERS: Registry = Registry("analyzer")

#: Needs an analyzer may declare, with the sentence used when a source lacks them.
#: The skip reason of an analyzer that reads only the encoder layer (the projector's input); the pipeline drops
#: it on the other layers of a source whose encoder layer it analysed, and keeps it when it analysed none.
ENCODER_ONLY = "reports on the encoder layer only (the projector's input; store attribute space = 'encoder')"

NEEDS = {
    "two_views": "needs at least two augmented views (extract with views=2 or more; --views on the command line)",
    "latents": "needs ground-truth latents (/latents), which this source does not have",
    "labels": "needs labels (/labels), which this source does not have",
    "labels_coarse": "needs coarse labels (/labels_coarse), which this source does not have",
    "projector": "needs the projector's weights (/modules/projector), which this source does not have",
    "encoder_layer": ENCODER_ONLY,
}


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
    reads_embeddings: bool = True
    pairwise: bool = False
    no_bootstrap: str = ""
    headline: Sequence[str] = ()
    split: bool = False


def register_analyzer(name: str, *, params: Sequence[Param] = (), needs: Sequence[str] = (), summary: str = "",
                      paper: str = "", min_samples: int = 2, reads_embeddings: bool = True,
                      pairwise: bool = False, no_bootstrap: str = "", headline: Sequence[str] = (),
                      split: bool = False) -> Callable:
    """Decorator registering ``fn(data, **params) -> Result`` as analyzer ``name``.

    ``reads_embeddings=False`` declares an analyzer that never looks at the embeddings (``weights``: it
    describes the stored heads); :func:`run_analyzer` then skips the scan for NaN/Inf samples, which cannot
    affect its result. ``pairwise=True`` registers ``fn(x, y, **params)`` of two layers on the same samples,
    run by :func:`run_pair`.
    """
    for need in needs:
        if need not in NEEDS:  # pragma: no cover - programming error caught by the contract tests
            raise ValueError(f"unknown need {need!r}")

    def deco(fn: Callable[..., Result]) -> Callable[..., Result]:
        summary_line = summary or (fn.__doc__ or "").strip().splitlines()[0]
        ANALYZERS.register(name)(AnalyzerSpec(name, fn, tuple(params), tuple(needs), summary_line, paper, min_samples,
                                              reads_embeddings, pairwise, no_bootstrap, tuple(headline),
                                              split))
        return fn

    return deco


def register_declared(fn: Callable[..., Result]) -> Callable[..., Result]:
    """Register a computation of :mod:`reprscope.metrics` under its :func:`~reprscope.metrics._core.declare`
    declaration (name, parameters, needs)."""
    d = fn.declaration
    return register_analyzer(d.name, params=d.params, needs=d.needs, summary=d.summary, paper=d.paper,
                             min_samples=d.min_samples, reads_embeddings=d.reads_embeddings, pairwise=d.pairwise,
                             no_bootstrap=d.no_bootstrap, headline=d.headline, split=d.split)(fn)


def missing_need(spec: AnalyzerSpec, data: LayerData) -> Optional[str]:
    """The reason ``data`` cannot be analysed by ``spec``, or None."""
    for need in spec.needs:
        ok = {
            "two_views": len(data.aug_view_ids()) >= 2,
            "latents": data.latents is not None,
            "labels": data.labels is not None,
            "labels_coarse": data.labels_coarse is not None,
            "projector": "projector" in data.modules,
            "encoder_layer": data.space == "encoder",
        }[need]
        if not ok:
            return NEEDS[need]
    return None


def run_analyzer(name: str, data: LayerData, params: Optional[Mapping[str, Any]] = None) -> Result:
    """Run one registered analyzer on one layer: needs, parameters, non-finite samples, parameter stamping.

    Samples with a NaN/Inf embedding in any view are left out (with a note) for every analyzer that reads the
    embeddings; one declared with ``reads_embeddings=False`` runs on the layer as it is.

    Returns:
        A Result whose rows carry ``analyzer`` and one column per parameter; when the analyzer cannot run,
        no rows and a note saying why.
    """
    spec: AnalyzerSpec = ANALYZERS.get(name)
    if spec.pairwise:  # pragma: no cover - programming error: the pipeline sends pairs to run_pair
        raise TypeError(f"analyzer {name} compares two layers; run it with run_pair")
    values = resolve_params(f"analyzer {name}", spec.params, dict(params or {}))
    res = Result()
    why = missing_need(spec, data)
    if why:
        res.notes.append(f"{name} skipped on {data.layer}: {why}")
        return res
    keep = finite_mask(data) if spec.reads_embeddings else None
    if keep is not None and not keep.all():
        res.notes.append(f"{name} on {data.layer}: {int((~keep).sum())} of {data.n} samples have NaN/Inf embeddings and were left out")
        if "finite_data" not in data.cache:  # one restricted copy per layer, so its statistics are shared too
            data.cache["finite_data"] = data.take(keep)
        data = data.cache["finite_data"]
    if spec.reads_embeddings and data.n < spec.min_samples:
        res.notes.append(f"{name} skipped on {data.layer}: needs at least {spec.min_samples} samples with finite embeddings, has {data.n}")
        return res
    out = spec.fn(data, **values)
    res.notes.extend(f"{name} on {data.layer}: {n}" for n in out.notes)
    stamp = _stamp(values)
    for r in out.rows:
        res.rows.append({**r, "analyzer": name, **stamp})
    return res


def _stamp(values: Mapping[str, Any]) -> dict:
    return {k: (v if not isinstance(v, (list, tuple)) else ",".join(map(str, v))) for k, v in values.items()}


def run_pair(name: str, x: LayerData, y: LayerData, params: Optional[Mapping[str, Any]] = None) -> Result:
    """Run one pairwise analyzer on two layers of the same samples (``x``'s rows pair with ``y``'s).

    Samples with a NaN/Inf embedding in either layer are left out of both (with a note); layers of different
    sample counts are not comparable (a note, no rows).
    """
    spec: AnalyzerSpec = ANALYZERS.get(name)
    if not spec.pairwise:  # pragma: no cover - programming error
        raise TypeError(f"analyzer {name} analyses one layer; run it with run_analyzer")
    values = resolve_params(f"analyzer {name}", spec.params, dict(params or {}))
    res = Result()
    where = f"{x.layer} ~ {y.layer}"
    if x.n != y.n:
        res.notes.append(f"{name} skipped on {where}: the layers hold different numbers of samples ({x.n} and {y.n}); "
                         "a comparison needs the same inputs in both")
        return res
    keep = finite_mask(x) & finite_mask(y)
    if not keep.all():
        res.notes.append(f"{name} on {where}: {int((~keep).sum())} of {x.n} samples have NaN/Inf embeddings in one of "
                         "the layers and were left out of both")
        x, y = x.take(keep), y.take(keep)
    if x.n < spec.min_samples:
        res.notes.append(f"{name} skipped on {where}: needs at least {spec.min_samples} samples with finite "
                         f"embeddings, has {x.n}")
        return res
    out = spec.fn(x, y, **values)
    res.notes.extend(f"{name} on {where}: {n}" for n in out.notes)
    for r in out.rows:
        res.rows.append({**r, "analyzer": name, **_stamp(values)})
    return res


#: Bytes a bootstrap may hold in memory for one layer: the layer's samples once, plus one resample of them.
BOOTSTRAP_MEMORY = 3 * 2**30

#: Metrics with more entries than this (spectra) get no interval: the bands are for scalars and short vectors.
BOOTSTRAP_MAX_ENTRIES = 4


def _row_key(r: Mapping[str, Any]) -> tuple:
    return (r.get("view"), r.get("metric"), str(r.get("index", "")), r.get("form"), r.get("k"))


def bootstrap_intervals(name: str, data: LayerData, params: Optional[Mapping[str, Any]], rows: list,
                        replicates: int, level: float = 0.95, seed: int = 0) -> list:
    """Percentile bootstrap intervals for the rows ``run_analyzer(name, data, params)`` gave: ``value_lo``,
    ``value_hi`` (the (1 − level)/2 and (1 + level)/2 quantiles over ``replicates`` resamples of the samples
    with replacement, seeded) and ``bootstrap`` (the replicates that gave the metric) are added to every row of
    a scalar metric (or a vector of at most BOOTSTRAP_MAX_ENTRIES entries). Returns the notes.

    Each replicate runs the analyzer on an in-memory resample (the analyzer's cost × ``replicates``; the
    layer is read once). Analyzers whose estimate a resample with copies of samples would bias declare why
    (``no_bootstrap``) and get no interval; neither does a layer whose resample would not fit in
    BOOTSTRAP_MEMORY.
    """
    spec: AnalyzerSpec = ANALYZERS.get(name)
    notes: list = []
    if replicates <= 0 or not rows:
        return notes
    if spec.no_bootstrap or not spec.reads_embeddings:
        if spec.reads_embeddings:
            notes.append(f"{name} on {data.layer}: no bootstrap interval: {spec.no_bootstrap}")
        return notes
    values = resolve_params(f"analyzer {name}", spec.params, dict(params or {}))
    keep = finite_mask(data)
    base = data if keep.all() else data.cache.get("finite_data") or data.take(keep)
    n, v, d = base.n, len(base.views), base.dim
    need = 2 * v * n * d * np.dtype(base.dtype).itemsize
    if need > BOOTSTRAP_MEMORY:
        notes.append(f"{name} on {data.layer}: no bootstrap interval: a resample of {v}×{n}×{d} needs "
                     f"{need / 2**30:.1f} GiB (more than {BOOTSTRAP_MEMORY / 2**30:.0f}); analyze fewer samples (limit)")
        return notes
    if "bootstrap_full" not in data.cache:
        data.cache["bootstrap_full"] = np.stack([base.view(i, dtype=base.dtype) for i in range(v)])
    full = data.cache["bootstrap_full"]
    counts: dict = {}
    for r in rows:
        counts.setdefault(r["metric"], set()).add(str(r.get("index", "")))
    wanted = {_row_key(r) for r in rows if len(counts[r["metric"]]) <= BOOTSTRAP_MAX_ENTRIES}
    got: dict = {k: [] for k in wanted}
    rng = np.random.default_rng(seed)
    cut = lambda a, i: None if a is None else np.asarray(a)[i]  # noqa: E731
    for _ in range(int(replicates)):
        idx = rng.integers(0, n, size=n)
        rep = LayerData(layer=base.layer, space=base.space, views=list(base.views), embeddings=full[:, idx],
                        latents=cut(base.latents, idx), latent_names=list(base.latent_names),
                        content_mask=base.content_mask, labels=cut(base.labels, idx),
                        labels_coarse=cut(base.labels_coarse, idx), modules=base.modules, seed=base.seed,
                        device=base.device, chunk_size=base.chunk_size)
        try:
            rep_rows = spec.fn(rep, **values).rows
        except (ValueError, ArithmeticError, RuntimeError, np.linalg.LinAlgError):  # a degenerate resample
            continue  # its metrics count as undefined in this replicate
        for r in rep_rows:
            k = _row_key(r)
            if k in got:
                got[k].append(float(r["value"]))
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    short = 0
    for r in rows:
        vals = got.get(_row_key(r))
        if vals is None:
            continue
        if len(vals) < max(2, replicates // 2):
            short += 1
            continue
        r["value_lo"], r["value_hi"] = (float(q) for q in np.quantile(vals, [lo_q, hi_q]))
        r["bootstrap"] = len(vals)
    if short:
        notes.append(f"{name} on {data.layer}: {short} metrics were undefined in more than half of the resamples; "
                     "no interval for them")
    return notes
