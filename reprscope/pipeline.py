"""The functional core behind ``reprscope analyze``: sources → stores → analyzers → tidy table.

A source is an ``.h5`` store, a checkpoint (extracted first, cached by content hash) or a run directory
(every ``ckpt-*.pt`` in it, with the ``step`` column filled). Nothing here knows about the command line.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .analyzers import ANALYZERS, run_analyzer, run_pair
from .analyzers.base import bootstrap_intervals
from .analyzers.base import ENCODER_ONLY, LayerData
from .metrics._core import finite_mask
from .metrics._ranks import alone
from .data.base import parse_data_arg
from .errors import ReprscopeError
from .extract import Store, extract
from . import distributed as dist
from .formats import LoadOptions, load_checkpoint
from .formats.base import LoadedModel, is_model_folder
from .formats.preprocess import MODES as PREPROCESS_MODES, dataset_for_model
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
        if not p.is_dir() or is_model_folder(p):
            seen[p.resolve()] = str(s)
        if is_model_folder(p) and not (sorted(p.glob("ckpt-*.pt")) or (p / "last.pt").is_file()):
            out.append(Source(p, "checkpoint"))  # a Hugging Face model folder is one checkpoint
        elif p.is_dir():
            ckpts = sorted(p.glob("ckpt-*.pt")) or sorted(p.glob("last.pt"))
            if not ckpts:
                raise ReprscopeError(f"run directory '{p}' has no ckpt-*.pt or last.pt (and no config.json with weights, "
                                     f"as a Hugging Face model folder has); train into it with `reprscope train --out {p}`")
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


def store_base(store: Store, source: Optional[str] = None) -> Dict[str, Any]:
    """The columns every row of ``store`` carries: source, step, method and the context columns."""
    step = store.attrs.get("step")
    step = None if step is None or int(step) < 0 else int(step)
    dataset = store.attrs.get("dataset") or {}
    return {"source": source or str(store.path), "step": step, "method": store.attrs.get("method", ""),
            "data": str(dataset.get("name", "")) if isinstance(dataset, dict) else str(dataset), "n": int(store.n)}


def analyze_store(store: Store, analyzers: Sequence[str], params: Mapping[str, Mapping[str, Any]] | None = None,
                  layers: Optional[Sequence[str]] = None, source: Optional[str] = None,
                  progress: bool = False, device: str = "cpu", bootstrap: int = 0,
                  ci: float = 0.95, weights: Optional[Dict[str, Any]] = None) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Run ``analyzers`` on every (or the given) layer of ``store``; rows carry every table column and the
    context columns (:data:`~reprscope.table.CONTEXT_COLUMNS`: the store's data set and sample count).
    ``weights``: the source network's weight matrices by module path (a checkpoint's: ``esd``)."""
    params = params or {}
    base = store_base(store, source)
    names = [l["name"] for l in store.layers()]
    if layers:
        for l in layers:
            store.embeddings(l)  # raises with the list of layers
        names = [n for n in names if n in set(layers)]
    seed = int(store.attrs.get("seed", 0))
    def make(name: str) -> LayerData:
        data = store.layer_data(name, seed=seed, device=device)
        data.weights = dict(weights or {})
        return data

    return analyze_layers([(n, lambda n=n: make(n)) for n in names], analyzers,
                          params, base, progress=progress, desc=f"analyze {Path(base['source']).name}",
                          bootstrap=bootstrap, ci=ci, seed=seed)


def check_bootstrap(bootstrap: int, ci: float) -> None:
    """Raise ReprscopeError unless ``bootstrap`` is an int ≥ 0 (at most 10 000) and 0 < ``ci`` < 1."""
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or not 0 <= bootstrap <= 10_000:
        raise ReprscopeError(f"bootstrap must be a number of resamples from 0 to 10000 (e.g. 200), got {bootstrap!r}",
                             arg="bootstrap")
    if not isinstance(ci, (int, float)) or not 0 < float(ci) < 1:
        raise ReprscopeError(f"ci must be a confidence level between 0 and 1 (e.g. 0.95), got {ci!r}", arg="ci")


def pairwise_names(analyzers: Sequence[str]) -> List[str]:
    """The analyzers among ``analyzers`` that compare two layers (``similarity``)."""
    return [a for a in analyzers if ANALYZERS.get(a).pairwise]


def analyze_layers(layers: Sequence[Tuple[str, Callable[[], LayerData]]], analyzers: Sequence[str],
                   params: Mapping[str, Mapping[str, Any]] | None, base: Mapping[str, Any], progress: bool = False,
                   desc: str = "analyze", bootstrap: int = 0, ci: float = 0.95,
                   seed: int = 0) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Run ``analyzers`` on every layer (name, a function giving its LayerData), one layer in memory at a time;
    every row carries ``base`` (the source, step, method and context columns) and its layer. A pairwise
    analyzer runs on every pair of layers instead (the upper triangle of the layer × layer matrix, in the
    order given), its rows with the second layer in ``layer_b`` and ``source_b`` empty. ``bootstrap`` > 0 adds
    percentile intervals at level ``ci`` (:func:`~reprscope.analyzers.base.bootstrap_intervals`, seeded by
    ``seed``)."""
    params = params or {}
    names = [n for n, _ in layers]
    pairwise = pairwise_names(analyzers)
    single = [a for a in analyzers if a not in pairwise]
    rows: List[Dict[str, Any]] = []
    notes: List[str] = []
    encoder_only: Dict[str, List[str]] = {}  # analyzer → its skip notes on the non-encoder layers
    di = dist.work_info()
    if di.enabled and di.is_main:
        solo = [a for a in analyzers if not ANALYZERS.get(a).split]
        if solo:
            notes.append(f"{', '.join(solo)} ran on rank 0 alone (not split over the processes of the torchrun job)")
    for layer, make in tqdm(layers, desc=desc, disable=not progress or not single or not di.is_main, leave=False):
        if not single:
            break
        data = make()
        if di.enabled:  # every rank scans its share for NaN/Inf samples; rank 0's solo analyzers find it cached
            finite_mask(data)
        # A torchrun job: every rank runs the split analyzers (each reads its share of the samples, the partial
        # results are reduced), first, so that the statistics they cache on the layer are the shared ones; then
        # rank 0 alone runs the others, keeps the rows and computes the intervals.
        split = [a for a in single if ANALYZERS.get(a).split]
        results = {a: run_analyzer(a, data, params.get(a)) for a in split}
        if not di.is_main:
            continue
        with alone():
            results.update((a, run_analyzer(a, data, params.get(a))) for a in single if a not in results)
        for a in single:
            res = results[a]
            for note in res.notes:
                (encoder_only.setdefault(a, []) if note.endswith(ENCODER_ONLY) else notes).append(note)
            if bootstrap:
                with alone():
                    notes.extend(bootstrap_intervals(a, data, params.get(a), res.rows, bootstrap, ci, seed))
            rows.extend({**base, "layer": layer, **r} for r in res.rows)
        data.cache.pop("bootstrap_full", None)
    # an encoder-only analyzer is silent on the other layers when it ran on the encoder layer; when it ran on
    # no layer at all (layers without the encoder, a source without one) its skips say why there is nothing
    ran = {r["analyzer"] for r in rows}
    for a, skipped in encoder_only.items():
        if a not in ran and len(skipped) == len(names):
            notes.extend(skipped)
    if pairwise and len(layers) > 1:
        pairs = [(layers[i], layers[j]) for i in range(len(layers)) for j in range(i + 1, len(layers))]
        r, n = compare_layers(pairs, pairwise, params, base, source_b="", progress=progress,
                              desc=f"{desc} (layer pairs)")
        rows.extend(r)
        notes.extend(n)
    return rows, notes


LayerMaker = Tuple[str, Callable[[], LayerData]]


def compare_layers(pairs: Sequence[Tuple[LayerMaker, LayerMaker]], analyzers: Sequence[str],
                   params: Mapping[str, Mapping[str, Any]] | None, base: Mapping[str, Any], source_b: str,
                   progress: bool = False, desc: str = "compare") -> Tuple[List[Dict[str, Any]], List[str]]:
    """Run the pairwise ``analyzers`` on every pair ((layer, make), (layer_b, make_b)); rows carry ``base``,
    ``layer``, ``layer_b`` and ``source_b``."""
    params = params or {}
    rows: List[Dict[str, Any]] = []
    notes: List[str] = []
    di = dist.work_info()
    for (la, make_a), (lb, make_b) in tqdm(pairs, desc=desc, disable=not progress or not di.is_main, leave=False):
        x, y = make_a(), make_b()
        for a in analyzers:
            # in a torchrun job every rank runs a split analyzer (similarity) and rank 0 keeps the rows
            split = ANALYZERS.get(a).split
            if not di.is_main and not split:
                continue
            with nullcontext() if split else alone():
                res = run_pair(a, x, y, params.get(a))
            if di.is_main:
                notes.extend(res.notes)
                rows.extend({**base, "layer": la, **r, "source_b": source_b, "layer_b": lb} for r in res.rows)
    return rows, notes


def comparable(store_a: Store, store_b: Store) -> Optional[str]:
    """Why two stores do not hold embeddings of the same inputs, or None when they do: the same data set (with
    its parameters), the same sample indices in the same order and — when a store has no ``clean`` view, so
    that the comparison reads an augmented one — the same augmentation draws."""
    da, db = store_a.attrs.get("dataset") or {}, store_b.attrs.get("dataset") or {}
    if da != db:
        return f"they were extracted on different data ({_data_name(da)} and {_data_name(db)})"
    if int(store_a.n) != int(store_b.n):
        return f"they hold different numbers of samples ({store_a.n} and {store_b.n})"
    if not np.array_equal(np.asarray(store_a.f["index"]), np.asarray(store_b.f["index"])):
        return "they hold different samples of the data set (their /index differs: another --limit or seed)"
    if "clean" not in store_a.views or "clean" not in store_b.views:
        if store_a.attrs.get("augmentation") != store_b.attrs.get("augmentation"):
            return ("they have no clean view and their augmented views were drawn differently (another seed or "
                    "sampler); extract both with the clean view")
    return None


def _data_name(spec: Any) -> str:
    return str(spec.get("name", "?")) if isinstance(spec, dict) else str(spec or "?")


def compare_stores(store_a: Store, store_b: Store, analyzers: Sequence[str],
                   params: Mapping[str, Mapping[str, Any]] | None, base: Mapping[str, Any], source_b: str,
                   layers: Optional[Sequence[str]] = None, same_layer: bool = False, progress: bool = False,
                   device: str = "cpu") -> Tuple[List[Dict[str, Any]], List[str]]:
    """The pairwise analyzers on the layers of two stores of the same inputs: every layer of ``store_a``
    against every layer of ``store_b`` (a model × model matrix), or only against the layer of the same name
    (``same_layer``: a checkpoint against the run's last one)."""
    def makers(st: Store) -> List[LayerMaker]:
        names = [l["name"] for l in st.layers()]
        if layers:
            names = [n for n in names if n in set(layers)]
        seed = int(st.attrs.get("seed", 0))
        return [(n, lambda n=n, st=st: st.layer_data(n, seed=seed, device=device)) for n in names]

    la, lb = makers(store_a), makers(store_b)
    if same_layer:
        other = dict(lb)
        pairs = [((n, m), (n, other[n])) for n, m in la if n in other]
    else:
        pairs = [(a, b) for a in la for b in lb]
    return compare_layers(pairs, analyzers, params, base, source_b, progress=progress,
                          desc=f"compare {Path(str(base.get('source', ''))).name} ~ {Path(source_b).name}")


def store_for_checkpoint(path: Path, data: Optional[str], set_data: Optional[Dict[str, Any]] = None, views: int = 2,
                         limit: Optional[int] = None, batch_size: int = 1024, device: str = "cpu", seed: int = 0,
                         progress: bool = True, cache: bool = True, fmt: Optional[str] = None,
                         options: Optional[LoadOptions] = None, preprocess: str = "source",
                         notes: Optional[List[str]] = None, random_init: bool = False,
                         model: Optional[LoadedModel] = None) -> Path:
    """Extract ``path`` (cached by checkpoint hash and extraction settings) and return the store's path;
    ``random_init``: the same architecture at initialisation (:func:`~reprscope.formats.base.random_init`);
    ``model``: ``path`` already loaded (it is not read again).

    Args:
        options: ``--branch`` / ``--arch`` for the loader; ``preprocess``: ``source`` or ``data``
            (:mod:`reprscope.formats.preprocess`); ``notes`` collects what the preprocessing did.
    """
    model = model if model is not None else load_checkpoint(path, fmt, options)
    if random_init:
        from .formats.base import random_init as reinit

        model = reinit(model, seed)
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
                      "format": model.format, "branch": model.branch, "arch": model.options.arch,
                      "pool": model.options.pool}, sort_keys=True)
    name = f"{model.sha256[:16]}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.h5"
    target = cache_dir() / "extract" / name
    hit = bool(cache and target.is_file())
    if dist.work_info().enabled:  # the ranks of a torchrun job decide together (rank 0's view)
        hit = bool(dist.broadcast_object(hit))
    if not hit:
        writable_cache(target.parent)
    if hit:
        try:
            os.utime(target)  # used now: the last to be evicted
        except OSError:
            pass
        return target
    out = extract(model, dataset, target, views=views, limit=limit, batch_size=batch_size, device=device, seed=seed,
                  progress=progress)
    if dist.work_info().is_main:
        prune_cache(keep=out)
    return out


#: Default bound of the extraction cache, bytes (``REPRSCOPE_CACHE_MAX`` overrides, e.g. ``10G``, ``500M``).
CACHE_MAX = 4 * 2**30


def cache_limit() -> int:
    """The cache bound: ``$REPRSCOPE_CACHE_MAX`` (bytes, or with a K/M/G suffix), else CACHE_MAX."""
    value = os.environ.get("REPRSCOPE_CACHE_MAX", "").strip()
    if not value:
        return CACHE_MAX
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    try:
        if value[-1].upper() in units:
            return int(float(value[:-1]) * units[value[-1].upper()])
        return int(float(value))
    except ValueError:
        raise ReprscopeError(f"REPRSCOPE_CACHE_MAX must be a size such as 4G or 500M, got '{value}'") from None


def cache_entries() -> List[Path]:
    """The stores of the extraction cache (regular ``.h5`` files directly in ``<cache>/extract``, no links
    followed), least recently used first."""
    folder = cache_dir() / "extract"
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.suffix == ".h5" and p.is_file() and not p.is_symlink()]
    return sorted(files, key=lambda p: p.stat().st_mtime)


def prune_cache(keep: Optional[Path] = None, limit: Optional[int] = None) -> List[Path]:
    """Remove the least recently used stores until the cache fits ``limit`` (default :func:`cache_limit`);
    ``keep`` (the store just written) is never removed. Returns the removed paths."""
    limit = cache_limit() if limit is None else int(limit)
    entries = cache_entries()
    total = sum(p.stat().st_size for p in entries)
    removed: List[Path] = []
    for p in entries:
        if total <= limit:
            break
        if keep is not None and p.resolve() == Path(keep).resolve():
            continue
        size = p.stat().st_size
        try:
            p.unlink()
        except OSError:
            continue
        total -= size
        removed.append(p)
    return removed


def in_torchrun_job(fn: Callable) -> Callable:
    """Run ``fn`` (``extract_checkpoint``, ``analyze``) in the process group torchrun describes (WORLD_SIZE > 1:
    gloo on the CPU, nccl on CUDA, each process on its local GPU), leaving it afterwards; a no-op otherwise.
    Extraction then shards the batches over the processes, and analysis the passes over the samples of the
    analyzers declared ``split`` (:func:`analyze_layers`). When the process group already exists (a user's DDP script calling
    ``reprscope.analyze``, perhaps on rank 0 alone), the call stays a single-process call: nothing waits for
    the other ranks."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kind = torch.device(str(kwargs.get("device") or "cpu")).type
        started = not dist.is_distributed()
        di = dist.init_from_env(kind)
        started = started and di.enabled
        if di.enabled and kind == "cuda":
            kwargs["device"] = f"cuda:{di.local_rank}"
        try:
            if started:  # a job of its own (reprscope under torchrun); a group someone else set up is theirs
                with dist.shared_call():
                    out = fn(*args, **kwargs)
            else:
                out = fn(*args, **kwargs)
        except BaseException:
            dist.cleanup(started, wait_for_peers=False)
            raise
        dist.cleanup(started)
        return out

    return wrapper


@in_torchrun_job
def extract_checkpoint(path: Path, data: Optional[str], out: Path, *, layers: Optional[Sequence[str]] = None,
                       device: str = "cpu", views: int = 2, clean: bool = True, limit: Optional[int] = None,
                       batch_size: int = 1024, seed: int = 0, progress: bool = True, fmt: Optional[str] = None,
                       branch: Optional[str] = None, arch: Optional[str] = None, preprocess: str = "source",
                       set_data: Optional[Mapping[str, Any]] = None, notes: Optional[List[str]] = None,
                       pool: Optional[str] = None, storage: str = "float32") -> Path:
    """Extract a checkpoint into the store ``out`` (the core of ``reprscope extract``): ``data`` a data set name
    (default: the one it was trained on; its parameters kept when the name is the same), ``set_data`` data set
    parameters; ``notes`` collects what the preprocessing did; ``pool``: a ViT's ``cls`` or ``mean`` pooling;
    ``storage``: ``float32`` or ``float16`` on disk."""
    model = load_checkpoint(path, fmt, LoadOptions(branch=branch, arch=arch, pool=pool))
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
                   device=device, seed=seed, progress=progress, storage=storage)


@in_torchrun_job
def analyze(sources: Sequence[str | os.PathLike], *, data: Optional[str] = None, analyzers: Optional[Sequence[str]] = None,
            params: Optional[Mapping[str, Mapping[str, Any]]] = None, layers: Optional[Sequence[str]] = None,
            views: int = 2, limit: Optional[int] = None, batch_size: int = 1024, device: str = "cpu",
            seed: int = 0, progress: bool = True, set_data: Optional[Dict[str, Any]] = None,
            fmt: Optional[str] = None, branch: Optional[str] = None, arch: Optional[str] = None,
            preprocess: str = "source", compare: Optional[str | os.PathLike] = None, bootstrap: int = 0,
            ci: float = 0.95, random_init: bool = False, pool: Optional[str] = None) -> AnalysisResult:
    """Analyze every source and return one tidy table (``branch``/``arch``/``preprocess``: see
    :func:`store_for_checkpoint`).

    The pairwise analyzers (``similarity``) compare every pair of layers of each source; with ``compare`` (a
    checkpoint or store of the same inputs) also every layer of each source with every layer of it; and, with
    several sources and no ``compare`` (a run directory), every layer of each source with the same layer of the
    last one (how fast each layer settles during training).

    ``bootstrap`` = B > 0 gives the rows of scalar metrics a percentile interval at level ``ci`` over B resamples
    of the samples (columns ``value_lo``, ``value_hi``, ``bootstrap``).

    ``pool`` chooses a ViT's pooling (``cls``: class token, ``mean``: patch tokens; default the source's own).

    ``random_init`` adds the rows of the same architecture at initialisation (source ``<checkpoint>#random_init``,
    no step): once for a run directory (its last checkpoint's architecture), once per other checkpoint; an
    ``.h5`` store holds no weights and gets a note.
    """
    options = LoadOptions(branch=branch, arch=arch, pool=pool)
    if preprocess not in PREPROCESS_MODES:
        raise ReprscopeError(f"preprocess must be one of {', '.join(PREPROCESS_MODES)}; got '{preprocess}'", arg="preprocess")
    chosen = select_analyzers(analyzers)
    check_bootstrap(bootstrap, ci)
    for a in chosen:  # bad --param values fail before any extraction or progress output
        resolve_params(f"analyzer {a}", ANALYZERS.get(a).params, dict((params or {}).get(a) or {}))
    items = resolve_sources(sources)
    pairwise = pairwise_names(chosen)
    against: Optional[Source] = None
    if compare is not None:
        if not pairwise:
            raise ReprscopeError("compare needs a pairwise analyzer among the analyzers (similarity)", arg="compare")
        cmp = Path(compare)
        if not cmp.exists():
            raise ReprscopeError(f"compare '{cmp}' does not exist", arg="compare")
        if cmp.is_dir() and not is_model_folder(cmp):
            raise ReprscopeError(f"compare '{cmp}' is a folder; give one checkpoint or .h5 store", arg="compare")
        against = resolve_sources([cmp])[0]
        if any(against.path.resolve() == i.path.resolve() for i in items):
            raise ReprscopeError(f"compare '{cmp}' is also a source; compare a source with another one", arg="compare")
    rows: List[Dict[str, Any]] = []
    notes: List[str] = []
    stores: List[Path] = []
    # several sources (a run directory): one labelled bar for them all instead of a bar per extraction and layer
    many = len(items) > 1
    label = Path(str(sources[0])).name if len(sources) == 1 else f"{len(items)} sources"
    outer = tqdm(items, desc=f"analyze {label}", unit="source", disable=not progress or not many)
    inner = progress and not many
    for item in outer:
        path = item.path
        weights = None
        if item.kind == "checkpoint":
            loaded = load_checkpoint(item.path, fmt, options)
            if "esd" in chosen:  # every weight of the network, not only the heads a store keeps
                from .metrics.esd import module_weights

                weights = module_weights(loaded.bundle)
            path = store_for_checkpoint(item.path, data, set_data, views, limit, batch_size, device, seed, inner,
                                        fmt=fmt, options=options, preprocess=preprocess, notes=notes, model=loaded)
            del loaded
        elif data or set_data:
            notes.append(f"--data/--set (data=/set_data= in Python) do not apply to the store {item.path.name}: its embeddings were extracted "
                         "already (on the data set its attributes name)")
        with Store(path) as st:
            r, n = analyze_store(st, chosen, params, layers, source=str(item.path), progress=inner, device=device,
                                 bootstrap=bootstrap, ci=ci, weights=weights)
        rows.extend(r)
        notes.extend(f"{item.path.name}: {x}" if len(items) > 1 else x for x in n)
        stores.append(path)
    if random_init:
        r, n = _random_init_rows(sources, items, chosen, params, layers, data, set_data, views, limit, batch_size,
                                 device, seed, progress, fmt, options, preprocess)
        rows.extend(r)
        notes.extend(n)
    if pairwise and against is not None:
        cpath = against.path
        if against.kind == "checkpoint":
            cpath = store_for_checkpoint(against.path, data, set_data, views, limit, batch_size, device, seed,
                                         progress, fmt=fmt, options=options, preprocess=preprocess, notes=notes)
        with Store(cpath) as other:
            for item, path in zip(items, stores):
                with Store(path) as st:
                    why = comparable(st, other)
                    if why:
                        raise ReprscopeError(f"cannot compare '{item.path}' with '{against.path}': {why}",
                                             arg="compare")
                    r, n = compare_stores(st, other, pairwise, params, store_base(st, str(item.path)),
                                          str(against.path), layers=layers, progress=inner, device=device)
                rows.extend(r)
                notes.extend(n)
    elif pairwise and len(items) > 1:
        last, last_path = items[-1], stores[-1]
        with Store(last_path) as other:
            for item, path in zip(items[:-1], stores[:-1]):
                with Store(path) as st:
                    why = comparable(st, other)
                    if why:
                        notes.append(f"{item.path.name} is not compared with {last.path.name}: {why}")
                        continue
                    r, n = compare_stores(st, other, pairwise, params, store_base(st, str(item.path)),
                                          str(last.path), layers=layers, same_layer=True, progress=inner,
                                          device=device)
                rows.extend(r)
                notes.extend(n)
    return AnalysisResult(make_table(rows), list(dict.fromkeys(notes)), stores)


def _random_init_rows(sources: Sequence[str | os.PathLike], items: Sequence[Source], chosen: Sequence[str],
                      params: Optional[Mapping[str, Mapping[str, Any]]], layers: Optional[Sequence[str]],
                      data: Optional[str], set_data: Optional[Dict[str, Any]], views: int, limit: Optional[int],
                      batch_size: int, device: str, seed: int, progress: bool, fmt: Optional[str],
                      options: LoadOptions, preprocess: str) -> Tuple[List[Dict[str, Any]], List[str]]:
    """The rows of each given checkpoint's architecture at initialisation (a run directory: its last one)."""
    rows: List[Dict[str, Any]] = []
    notes: List[str] = []
    chosen_ckpts: List[Path] = []
    for s in sources:
        p = Path(s)
        in_dir = [i.path for i in items if i.kind == "checkpoint" and i.path.parent == p] if p.is_dir() else []
        if is_model_folder(p) and not in_dir:
            chosen_ckpts.append(p)
        elif p.is_dir() and in_dir:
            chosen_ckpts.append(in_dir[-1])
        elif p.suffix.lower() in (".h5", ".hdf5"):
            notes.append(f"{p.name} is a store: it holds no weights, so it has no random_init baseline")
        elif not p.is_dir():
            chosen_ckpts.append(p)
    single = [a for a in chosen if not ANALYZERS.get(a).pairwise]
    for ckpt in chosen_ckpts:
        path = store_for_checkpoint(ckpt, data, set_data, views, limit, batch_size, device, seed, progress, fmt=fmt,
                                    options=options, preprocess=preprocess, random_init=True)
        with Store(path) as st:
            r, n = analyze_store(st, single, params, layers, source=f"{ckpt}#random_init", progress=progress,
                                 device=device)
        for row in r:
            row["step"] = None
        rows.extend(r)
        notes.extend(f"{ckpt.name}#random_init: {x}" for x in n)
    return rows, notes


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


#: Bookkeeping metrics left out of the console summary (they describe the computation).
SUMMARY_SKIP = ("n_batches", "alpha_req_fit_start", "alpha_req_fit_end")


def _number(v: float) -> str:
    """A summary cell: whole numbers (counts, ranks) as integers, others with three decimals."""
    return f"{v:.0f}" if float(v).is_integer() and abs(v) < 1e15 else f"{v:.3f}"


#: Entries up to which a vector metric is shown in the summary as one column per entry.
SUMMARY_MAX_INDEX = 4


def summarize(df: pd.DataFrame, max_metrics: int = 6) -> str:
    """A readable per-analyzer summary: scalar metrics by layer (first view of each), in depth order. A metric
    with at most SUMMARY_MAX_INDEX entries (k-NN's k, a head's parts) counts as scalars ``metric[index]``."""
    if df.empty:
        return "(no results)"
    if "layer_b" in df.columns and (df["layer_b"] != "").any():  # a pair's row reads "layer ~ other layer"
        other = [(f"{Path(sb).name}:" if sb else "") + lb for sb, lb in zip(df.get("source_b", [""] * len(df)), df["layer_b"])]
        df = df.assign(layer=[f"{l} ~ {o}" if o else l for l, o in zip(df["layer"], other)])
    parts = []
    counts = df.groupby(["analyzer", "metric"])["index"].nunique()
    short = df[[counts[(a, m)] <= SUMMARY_MAX_INDEX for a, m in zip(df["analyzer"], df["metric"])]]
    scal = short.assign(metric=[m if i == "" else f"{m}[{i}]" for m, i in zip(short["metric"], short["index"])])
    layer_order = list(dict.fromkeys(df["layer"]))
    for analyzer, g in scal.groupby("analyzer", sort=False):
        g = g.groupby(["source", "layer", "metric"], sort=False).first().reset_index()
        present = [m for m in dict.fromkeys(g["metric"]) if m.split("[")[0] not in SUMMARY_SKIP]
        head = ANALYZERS.get(analyzer).headline if analyzer in ANALYZERS.names() else ()
        first = [m for h in head for m in present if m.split("[")[0] == h]  # the analyzer's headline metrics first
        metrics = list(dict.fromkeys(first + present))[:max_metrics]
        piv = g[g["metric"].isin(metrics)].pivot_table(index=["source", "layer"], columns="metric", values="value", sort=False)
        piv = piv.reindex(columns=metrics)
        if piv.index.get_level_values("source").nunique() == 1:
            piv = piv.droplevel("source").reindex([l for l in layer_order if l in piv.index.get_level_values(-1)])
        parts.append(f"[{analyzer}]\n" + piv.to_string(float_format=_number))
    return "\n\n".join(parts)
