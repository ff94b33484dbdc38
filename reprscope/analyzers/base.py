"""The analyzer contract: pure functions on arrays that return tidy rows.

An analyzer is a function ``fn(data: LayerData, **params) -> Result`` registered with what it needs (views,
labels, latents, a stored projector …) and its declared parameters. :func:`run_analyzer` is the one entry
point: it checks the needs (a source that lacks them is *skipped with a stated reason*), validates the
parameters, removes samples with non-finite embeddings (reported as a note) and stamps the parameter values
on every row. Analyzers never see file handles, CLI arguments or table columns other than their own.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from ..params import Param, resolve_params
from ..registry import Registry

ANALYZERS: Registry = Registry("analyzer")

#: Needs an analyzer may declare, with the sentence used when a source lacks them.
#: The skip reason of an analyzer that reads only the encoder layer (the projector's input); the pipeline drops
#: it on the other layers of a source whose encoder layer it analysed, and keeps it when it analysed none.
ENCODER_ONLY = "reports on the encoder layer only (the projector's input; store attribute space = 'encoder')"

NEEDS = {
    "two_views": "needs at least two augmented views (extract with --views 2 or more)",
    "latents": "needs ground-truth latents (/latents), which this source does not have",
    "labels": "needs labels (/labels), which this source does not have",
    "labels_coarse": "needs coarse labels (/labels_coarse), which this source does not have",
    "projector": "needs the projector's weights (/modules/projector), which this source does not have",
    "encoder_layer": ENCODER_ONLY,
}


@dataclass
class HeadModule:
    """A stored head: its layer-spec list and parameters by ``nn.Sequential`` name (SPEC §4 ``/modules``)."""

    spec: List[Dict[str, Any]]
    params: Dict[str, np.ndarray]


@dataclass
class LayerData:
    """Everything an analyzer sees for one layer of one source.

    The embeddings may live on disk (an ``h5py.Dataset``): analyzers read them through :meth:`chunks` (bounded
    memory, the streaming path) or :meth:`view` (one whole view in memory), never by indexing
    ``embeddings`` directly, so that the sample mask and the chunking apply everywhere. Statistics shared by
    several analyzers (per-view moments, the finite mask) are computed once per layer and kept in ``cache``.

    Attributes:
        layer: dotted layer name; ``space``: encoder | intermediate | projector | predictor.
        views: view names, e.g. ``["clean", "aug1", "aug2"]``; ``embeddings``: (V, n_stored, d) array or dataset.
        latents: (n, k) ground truth or None, with ``latent_names`` and ``content_mask`` (k,) bool.
        labels, labels_coarse: (n,) int arrays or None (already restricted to the kept samples).
        modules: stored heads by part name.
        seed: seed for anything random (splits, subsampling).
        mask: (n_stored,) bool, the samples kept (None: all).
        device: torch device for the heavy linear algebra (``cpu``, ``cuda``…).
        chunk_size: samples per chunk on the streaming path.
    """

    layer: str
    space: str
    views: List[str]
    embeddings: Any
    latents: Optional[np.ndarray] = None
    latent_names: List[str] = field(default_factory=list)
    content_mask: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    labels_coarse: Optional[np.ndarray] = None
    modules: Dict[str, HeadModule] = field(default_factory=dict)
    seed: int = 0
    mask: Optional[np.ndarray] = None
    device: str = "cpu"
    chunk_size: int = 8192
    cache: Dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else int(self.embeddings.shape[1])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[2])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.embeddings.dtype)

    def aug_view_ids(self) -> List[int]:
        """Indices of the augmented views (every view except ``clean``)."""
        return [i for i, v in enumerate(self.views) if v != "clean"]

    def reference_view_id(self) -> int:
        """The view whose inputs the latents/labels describe: ``clean`` when stored, else view 0."""
        return self.views.index("clean") if "clean" in self.views else 0

    def chunks(self, views: Optional[Sequence[int]] = None, dtype: Any = np.float64,
               size: Optional[int] = None) -> Iterator[np.ndarray]:
        """Yield (len(views), b, d) arrays of the kept samples in order, ``size`` (default ``chunk_size``)
        stored samples at a time.

        Each chunk is read in one indexing operation (a slice when the views are consecutive, else one sorted
        index list). For in-memory embeddings of the requested dtype without a sample mask the chunk is a
        *view* of ``embeddings``, not a copy: callers must never modify a chunk in place.
        """
        ids = list(range(len(self.views))) if views is None else [int(v) for v in views]
        step = int(size or self.chunk_size)
        total = int(self.embeddings.shape[1])
        if not ids:
            return
        consecutive = ids == list(range(ids[0], ids[0] + len(ids)))
        order = sorted(set(ids))
        for s in range(0, total, step):
            e = min(total, s + step)
            if consecutive:
                block = np.asarray(self.embeddings[ids[0]:ids[-1] + 1, s:e])
            else:  # h5py takes one increasing index list per read
                got = np.asarray(self.embeddings[order, s:e])
                block = got[[order.index(v) for v in ids]] if order != ids else got
            block = block.astype(dtype, copy=False)
            if self.mask is not None:
                block = block[:, self.mask[s:e]]
            if block.shape[1]:
                yield block

    def batches(self, views: Sequence[int], size: int, dtype: Any = np.float64) -> Iterator[np.ndarray]:
        """(len(views), b, d) batches of exactly ``size`` kept samples in order, then the remainder.

        :meth:`chunks` counts stored samples, so with a sample mask its chunks can be short; re-buffering keeps
        the batches independent of which samples were masked out (streaming equals whole).
        """
        total = int(self.embeddings.shape[1])
        buf: List[np.ndarray] = []
        have = 0
        for c in self.chunks(views=views, dtype=dtype, size=max(1, min(size, total))):
            buf.append(c)
            have += c.shape[1]
            while have >= size:
                cat = np.concatenate(buf, axis=1) if len(buf) > 1 else buf[0]
                yield cat[:, :size]
                rest = cat[:, size:]
                buf, have = ([rest] if rest.shape[1] else []), rest.shape[1]
        if have:
            yield np.concatenate(buf, axis=1) if len(buf) > 1 else buf[0]

    def sample_range(self, views: Sequence[int], start: int, stop: int, dtype: Any = np.float64) -> np.ndarray:
        """(len(views), stop − start, d) array of the kept samples ``start`` … ``stop − 1`` (in kept order),
        read at once: a few batches of a large store without reading the rest of it."""
        ids = [int(v) for v in views]
        sel = None
        if self.mask is None:
            lo, hi = int(start), int(stop)
        else:
            kept = np.flatnonzero(self.mask)[start:stop]
            if not kept.size:
                return np.zeros((len(ids), 0, self.dim), dtype=dtype)
            lo, hi = int(kept[0]), int(kept[-1]) + 1
            sel = kept - lo
        order = sorted(set(ids))
        if ids == list(range(ids[0], ids[0] + len(ids))):
            block = np.asarray(self.embeddings[ids[0]:ids[-1] + 1, lo:hi])
        else:  # h5py takes one increasing index list per read
            got = np.asarray(self.embeddings[order, lo:hi])
            block = got[[order.index(v) for v in ids]] if order != ids else got
        if sel is not None:
            block = block[:, sel]
        return block.astype(dtype, copy=False)

    def view(self, i: int, dtype: Any = np.float64) -> np.ndarray:
        """One whole view of the kept samples, (n, d), in memory (filled chunk by chunk, no second copy)."""
        out = np.empty((self.n, self.dim), dtype=dtype)
        pos = 0
        for c in self.chunks([i], dtype=dtype):
            out[pos : pos + c.shape[1]] = c[0]
            pos += c.shape[1]
        return out

    def take(self, keep: np.ndarray) -> "LayerData":
        """The same data restricted to the samples ``keep``: a bool mask over the current samples, or their
        indices (the original order is kept)."""
        keep = np.asarray(keep)
        if keep.dtype != bool:
            idx = keep.astype(np.int64)
            keep = np.zeros(self.n, dtype=bool)
            keep[idx] = True
        full = np.ones(int(self.embeddings.shape[1]), dtype=bool) if self.mask is None else self.mask.copy()
        full[np.flatnonzero(full)[~keep]] = False
        cut = lambda a: None if a is None else np.asarray(a)[keep]  # noqa: E731
        return replace(self, mask=full, latents=cut(self.latents), labels=cut(self.labels),
                       labels_coarse=cut(self.labels_coarse), cache={})


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
    reads_embeddings: bool = True


def register_analyzer(name: str, *, params: Sequence[Param] = (), needs: Sequence[str] = (), summary: str = "",
                      paper: str = "", min_samples: int = 2, reads_embeddings: bool = True) -> Callable:
    """Decorator registering ``fn(data, **params) -> Result`` as analyzer ``name``.

    ``reads_embeddings=False`` declares an analyzer that never looks at the embeddings (``weights``: it
    describes the stored heads); :func:`run_analyzer` then skips the scan for NaN/Inf samples, which cannot
    affect its result.
    """
    for need in needs:
        if need not in NEEDS:  # pragma: no cover - programming error caught by the contract tests
            raise ValueError(f"unknown need {need!r}")

    def deco(fn: Callable[..., Result]) -> Callable[..., Result]:
        summary_line = summary or (fn.__doc__ or "").strip().splitlines()[0]
        ANALYZERS.register(name)(AnalyzerSpec(name, fn, tuple(params), tuple(needs), summary_line, paper, min_samples,
                                              reads_embeddings))
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
            "encoder_layer": data.space == "encoder",
        }[need]
        if not ok:
            return NEEDS[need]
    return None


def _finite_rows(c: np.ndarray) -> np.ndarray:
    """(b,) bool: sample j of the (V, b, d) chunk ``c`` is finite in every view.

    A row sum is finite only when every entry is (NaN and ±Inf propagate), so one reduction settles almost
    every sample without a (V, b, d) boolean temporary; the few rows whose sum is not finite (a non-finite
    entry, or finite entries whose sum overflows) are checked entry by entry.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        ok = np.isfinite(np.add.reduce(c, axis=2)).all(axis=0)
    bad = np.flatnonzero(~ok)
    if bad.size:
        ok[bad] = np.isfinite(c[:, bad]).all(axis=(0, 2))
    return ok


def finite_mask(data: LayerData) -> np.ndarray:
    """(n,) bool over the current samples: finite in every view. Computed once per layer (cached)."""
    if "finite" not in data.cache:
        parts = [_finite_rows(c) for c in data.chunks(dtype=data.dtype)]
        data.cache["finite"] = np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
    return data.cache["finite"]


def run_analyzer(name: str, data: LayerData, params: Optional[Mapping[str, Any]] = None) -> Result:
    """Run one registered analyzer on one layer: needs, parameters, non-finite samples, parameter stamping.

    Samples with a NaN/Inf embedding in any view are left out (with a note) for every analyzer that reads the
    embeddings; one declared with ``reads_embeddings=False`` runs on the layer as it is.

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
    stamp = {k: (v if not isinstance(v, (list, tuple)) else ",".join(map(str, v))) for k, v in values.items()}
    for r in out.rows:
        res.rows.append({**r, "analyzer": name, **stamp})
    return res
