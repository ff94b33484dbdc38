"""The functional core behind ``reprscope analyze``: sources → stores → analyzers → tidy table.

A source is an ``.h5`` store, a checkpoint (extracted first, cached by content hash) or a run directory
(every ``ckpt-*.pt`` in it, with the ``step`` column filled). Nothing here knows about the command line.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import pandas as pd
from tqdm.auto import tqdm

from .analyzers import ANALYZERS, run_analyzer
from .analyzers.base import ENCODER_ONLY, LayerData
from .data.base import parse_data_arg
from .errors import ReprscopeError
from .extract import Store, extract
from .formats import LoadOptions, load_checkpoint
from .formats.preprocess import MODES as PREPROCESS_MODES, dataset_for_model
from .io_utils import sha256_file
from .params import resolve_params
from .table import make_table



@dataclass
class Source:
    """One thing to analyze: an .h5 store or a checkpoint file."""

    path: Path
    kind: str  # "h5" | "checkpoint"


@dataclass
class AnalysisResult:
    table: pd.DataFrame
    notes: List[str] = field(default_factory=list)
    stores: List[Path] = field(default_factory=list)


def cache_dir() -> Path:
    """``$REPRSCOPE_CACHE``, or ``~/.cache/reprscope`` when it is unset or empty (never the current folder)."""
    value = os.environ.get("REPRSCOPE_CACHE", "").strip()
    return Path(value) if value else Path.home() / ".cache" / "reprscope"


def writable_cache(folder: Path) -> Path:
    """``folder`` created if needed; a cache that is a file or cannot be written is one clear error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReprscopeError(f"the cache folder '{folder}' cannot be created ({exc.strerror or exc}); set "
                             "REPRSCOPE_CACHE to a writable folder") from None
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ReprscopeError(f"the cache folder '{folder}' is not a writable folder; set REPRSCOPE_CACHE to one")
    return folder


def resolve_sources(sources: Sequence[str | os.PathLike]) -> List[Source]:
    """Expand run directories and classify files; a missing or unsupported path is a ReprscopeError."""
    if not sources:
        raise ReprscopeError("give at least one SOURCE: a checkpoint, an .h5 store or a run directory")
    out: List[Source] = []
    seen: Dict[Path, str] = {}
    for s in sources:
        p = Path(s)
        if not p.exists():
            raise ReprscopeError(f"source '{p}' does not exist")
        if p.resolve() in seen:
            raise ReprscopeError(f"source '{p}' is given twice (also as '{seen[p.resolve()]}'); give each source once")
        if not p.is_dir():
            seen[p.resolve()] = str(s)
        if p.is_dir():
            ckpts = sorted(p.glob("ckpt-*.pt")) or sorted(p.glob("last.pt"))
            if not ckpts:
                raise ReprscopeError(f"run directory '{p}' has no ckpt-*.pt or last.pt; train into it with `reprscope train --out {p}`")
            for c in ckpts:
                if c.resolve() in seen:
                    raise ReprscopeError(f"checkpoint '{c}' is given twice (as '{seen[c.resolve()]}' and in run "
                                         f"directory '{p}'); give each source once")
                seen[c.resolve()] = f"{p}/"
            out.extend(Source(c, "checkpoint") for c in ckpts)
        elif p.suffix.lower() in (".h5", ".hdf5"):
            out.append(Source(p, "h5"))
        else:
            out.append(Source(p, "checkpoint"))
    return out


def parse_params(items: Iterable[Tuple[List[str], str]], selected: Sequence[str]) -> Dict[str, Dict[str, str]]:
    """``--param ANALYZER.KEY=VALUE`` pairs → ``{analyzer: {key: value}}`` (validated later by each analyzer)."""
    out: Dict[str, Dict[str, str]] = {}
    for path, value in items:
        if len(path) != 2:
            raise ReprscopeError(f"--param expects ANALYZER.KEY=VALUE (e.g. spectrum.tau=0.01); got '{'.'.join(path)}={value}'")
        name, key = path
        ANALYZERS.get(name)
        if name not in selected:
            raise ReprscopeError(f"--param {name}.{key}: analyzer '{name}' is not selected (--analyzers {','.join(selected)})")
        out.setdefault(name, {})[key] = value
    return out


def select_analyzers(names: Optional[Sequence[str]]) -> List[str]:
    """The analyzers to run: the given names (validated), or every registered analyzer."""
    chosen = list(names) if names else ANALYZERS.names()
    for n in chosen:
        ANALYZERS.get(n)
    return chosen


def analyze_store(store: Store, analyzers: Sequence[str], params: Mapping[str, Mapping[str, Any]] | None = None,
                  layers: Optional[Sequence[str]] = None, source: Optional[str] = None,
                  progress: bool = False, device: str = "cpu") -> Tuple[List[Dict[str, Any]], List[str]]:
    """Run ``analyzers`` on every (or the given) layer of ``store``; rows carry every table column and the
    context columns (:data:`~reprscope.table.CONTEXT_COLUMNS`: the store's data set and sample count)."""
    params = params or {}
    step = store.attrs.get("step")
    step = None if step is None or int(step) < 0 else int(step)
    dataset = store.attrs.get("dataset") or {}
    base = {"source": source or str(store.path), "step": step, "method": store.attrs.get("method", ""),
            "data": str(dataset.get("name", "")) if isinstance(dataset, dict) else str(dataset), "n": int(store.n)}
    names = [l["name"] for l in store.layers()]
    if layers:
        for l in layers:
            store.embeddings(l)  # raises with the list of layers
        names = [n for n in names if n in set(layers)]
    seed = int(store.attrs.get("seed", 0))
    return analyze_layers([(n, lambda n=n: store.layer_data(n, seed=seed, device=device)) for n in names], analyzers,
                          params, base, progress=progress, desc=f"analyze {Path(base['source']).name}")


def analyze_layers(layers: Sequence[Tuple[str, Callable[[], LayerData]]], analyzers: Sequence[str],
                   params: Mapping[str, Mapping[str, Any]] | None, base: Mapping[str, Any], progress: bool = False,
                   desc: str = "analyze") -> Tuple[List[Dict[str, Any]], List[str]]:
    """Run ``analyzers`` on every layer (name, a function giving its LayerData), one layer in memory at a time;
    every row carries ``base`` (the source, step, method and context columns) and its layer."""
    params = params or {}
    names = [n for n, _ in layers]
    rows: List[Dict[str, Any]] = []
    notes: List[str] = []
    encoder_only: Dict[str, List[str]] = {}  # analyzer → its skip notes on the non-encoder layers
    for layer, make in tqdm(layers, desc=desc, disable=not progress, leave=False):
        data = make()
        for a in analyzers:
            res = run_analyzer(a, data, params.get(a))
            for note in res.notes:
                (encoder_only.setdefault(a, []) if note.endswith(ENCODER_ONLY) else notes).append(note)
            rows.extend({**base, "layer": layer, **r} for r in res.rows)
    # an encoder-only analyzer is silent on the other layers when it ran on the encoder layer; when it ran on
    # no layer at all (layers without the encoder, a source without one) its skips say why there is nothing
    ran = {r["analyzer"] for r in rows}
    for a, skipped in encoder_only.items():
        if a not in ran and len(skipped) == len(names):
            notes.extend(skipped)
    return rows, notes


def store_for_checkpoint(path: Path, data: Optional[str], set_data: Optional[Dict[str, Any]] = None, views: int = 2,
                         limit: Optional[int] = None, batch_size: int = 1024, device: str = "cpu", seed: int = 0,
                         progress: bool = True, cache: bool = True, fmt: Optional[str] = None,
                         options: Optional[LoadOptions] = None, preprocess: str = "source",
                         notes: Optional[List[str]] = None) -> Path:
    """Extract ``path`` (cached by checkpoint hash and extraction settings) and return the store's path.

    Args:
        options: ``--branch`` / ``--arch`` for the loader; ``preprocess``: ``source`` or ``data``
            (:mod:`reprscope.formats.preprocess`); ``notes`` collects what the preprocessing did.
    """
    model = load_checkpoint(path, fmt, options)
    spec = dict(model.dataset or {}) if not data else parse_data_arg(data)
    if data and model.dataset and spec["name"] == model.dataset.get("name"):
        spec = {**model.dataset, **spec}  # same data set as in training: keep its parameters (seed, mixing …)
    if set_data:
        spec.update(set_data)
    if not spec:
        raise ReprscopeError(f"'{path}' does not say which data it was trained on; give data=NAME", arg="data")
    dataset, applied = dataset_for_model(model, spec, preprocess, set_data or {})
    if notes is not None:
        notes.extend(applied)
    key = json.dumps({"data": dataset.spec(), "views": views, "limit": limit, "seed": seed, "bs": batch_size,
                      "format": model.format, "branch": model.branch, "arch": model.options.arch}, sort_keys=True)
    name = f"{model.sha256[:16]}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.h5"
    target = cache_dir() / "extract" / name
    if not (cache and target.is_file()):
        writable_cache(target.parent)
    if cache and target.is_file():
        return target
    return extract(model, dataset, target, views=views, limit=limit, batch_size=batch_size, device=device, seed=seed,
                   progress=progress)


def extract_checkpoint(path: Path, data: Optional[str], out: Path, *, layers: Optional[Sequence[str]] = None,
                       device: str = "cpu", views: int = 2, clean: bool = True, limit: Optional[int] = None,
                       batch_size: int = 1024, seed: int = 0, progress: bool = True, fmt: Optional[str] = None,
                       branch: Optional[str] = None, arch: Optional[str] = None, preprocess: str = "source",
                       set_data: Optional[Mapping[str, Any]] = None, notes: Optional[List[str]] = None) -> Path:
    """Extract a checkpoint into the store ``out`` (the core of ``reprscope extract``): ``data`` a data set name
    (default: the one it was trained on; its parameters kept when the name is the same), ``set_data`` data set
    parameters; ``notes`` collects what the preprocessing did."""
    model = load_checkpoint(path, fmt, LoadOptions(branch=branch, arch=arch))
    spec = dict(model.dataset or {})
    if data:
        given = parse_data_arg(data)
        spec = {**spec, **given} if spec.get("name") == given["name"] else given
    spec.update(dict(set_data or {}))
    if not spec:
        raise ReprscopeError(f"'{path}' does not say which data it was trained on; give data=NAME", arg="data")
    dataset, applied = dataset_for_model(model, spec, preprocess, dict(set_data or {}))
    if notes is not None:
        notes.extend(applied)
    return extract(model, dataset, out, views=views, clean=clean, layers=layers, limit=limit, batch_size=batch_size,
                   device=device, seed=seed, progress=progress)


def analyze(sources: Sequence[str | os.PathLike], *, data: Optional[str] = None, analyzers: Optional[Sequence[str]] = None,
            params: Optional[Mapping[str, Mapping[str, Any]]] = None, layers: Optional[Sequence[str]] = None,
            views: int = 2, limit: Optional[int] = None, batch_size: int = 1024, device: str = "cpu",
            seed: int = 0, progress: bool = True, set_data: Optional[Dict[str, Any]] = None,
            fmt: Optional[str] = None, branch: Optional[str] = None, arch: Optional[str] = None,
            preprocess: str = "source") -> AnalysisResult:
    """Analyze every source and return one tidy table (``branch``/``arch``/``preprocess``: see
    :func:`store_for_checkpoint`)."""
    options = LoadOptions(branch=branch, arch=arch)
    if preprocess not in PREPROCESS_MODES:
        raise ReprscopeError(f"preprocess must be one of {', '.join(PREPROCESS_MODES)}; got '{preprocess}'", arg="preprocess")
    chosen = select_analyzers(analyzers)
    for a in chosen:  # bad --param values fail before any extraction or progress output
        resolve_params(f"analyzer {a}", ANALYZERS.get(a).params, dict((params or {}).get(a) or {}))
    items = resolve_sources(sources)
    rows: List[Dict[str, Any]] = []
    notes: List[str] = []
    stores: List[Path] = []
    for item in items:
        path = item.path
        if item.kind == "checkpoint":
            path = store_for_checkpoint(item.path, data, set_data, views, limit, batch_size, device, seed, progress,
                                        fmt=fmt, options=options, preprocess=preprocess, notes=notes)
        elif data or set_data:
            notes.append(f"--data/--set (data=/set_data= in Python) do not apply to the store {item.path.name}: its embeddings were extracted "
                         "already (on the data set its attributes name)")
        with Store(path) as st:
            r, n = analyze_store(st, chosen, params, layers, source=str(item.path), progress=progress, device=device)
        rows.extend(r)
        notes.extend(f"{item.path.name}: {x}" if len(items) > 1 else x for x in n)
        stores.append(path)
    return AnalysisResult(make_table(rows), list(dict.fromkeys(notes)), stores)


_NOTE = re.compile(r"^(?P<pre>.*?) on (?P<layer>[\w.]+): (?P<msg>.*)$")


def condense_notes(notes: Sequence[str]) -> List[str]:
    """Merge notes that differ only in the layer ("knn skipped on encoder.layer1: …" for every layer → one line)."""
    groups: Dict[Tuple[str, str], List[str]] = {}
    other: List[str] = []
    for n in notes:
        m = _NOTE.match(n)
        if m:
            groups.setdefault((m["pre"], m["msg"]), []).append(m["layer"])
        else:
            other.append(n)
    out = []
    for (pre, msg), layers in groups.items():
        where = layers[0] if len(layers) == 1 else f"{len(layers)} layers ({', '.join(layers[:3])}{', …' if len(layers) > 3 else ''})"
        out.append(f"{pre} on {where}: {msg}")
    return out + other


#: Entries up to which a vector metric is shown in the summary as one column per entry.
SUMMARY_MAX_INDEX = 4


def summarize(df: pd.DataFrame, max_metrics: int = 6) -> str:
    """A readable per-analyzer summary: scalar metrics by layer (first view of each), in depth order. A metric
    with at most SUMMARY_MAX_INDEX entries (k-NN's k, a head's parts) counts as scalars ``metric[index]``."""
    if df.empty:
        return "(no results)"
    parts = []
    counts = df.groupby(["analyzer", "metric"])["index"].nunique()
    short = df[[counts[(a, m)] <= SUMMARY_MAX_INDEX for a, m in zip(df["analyzer"], df["metric"])]]
    scal = short.assign(metric=[m if i == "" else f"{m}[{i}]" for m, i in zip(short["metric"], short["index"])])
    layer_order = list(dict.fromkeys(df["layer"]))
    for analyzer, g in scal.groupby("analyzer", sort=False):
        g = g.groupby(["source", "layer", "metric"], sort=False).first().reset_index()
        metrics = list(dict.fromkeys(g["metric"]))[:max_metrics]
        piv = g[g["metric"].isin(metrics)].pivot_table(index=["source", "layer"], columns="metric", values="value", sort=False)
        piv = piv.reindex(columns=metrics)
        if piv.index.get_level_values("source").nunique() == 1:
            piv = piv.droplevel("source").reindex([l for l in layer_order if l in piv.index.get_level_values(-1)])
        parts.append(f"[{analyzer}]\n" + piv.to_string(float_format=lambda v: f"{v:.3f}"))
    return "\n\n".join(parts)
